"""Prompts and token ids exactly as the upstream Video-3D-LLM code builds them.

Upstream (LaVi-Lab/Video-3D-LLM) turns a raw task input into a *human turn* with a fixed per-dataset
template (``scripts/3d/preprocessing/process_*.py``), then turns that into ``input_ids`` in one of
two different ways:

* evaluation (``llava/eval/model_*.py:preprocess_qwen``) tokenises the chat pieces *separately* and
  writes the image placeholder as ``IMAGE_TOKEN_INDEX`` (-200) followed by an extra ``"\\n"`` token;
  :func:`build_input_ids` reproduces that (and the labels the grounding scripts pass to the model,
  through which the ``<ground>`` token is located);
* training (``llava/train/train_3d.py:preprocess_qwen``) renders each turn with a small chat template,
  tokenises it in one go (``<image>`` becomes its special-token id, then -200; no extra newline) and
  masks the labels; :func:`build_training_ids` reproduces that.

The ids therefore differ between the two paths for the same human turn; both are kept because a
model trained upstream was evaluated with the first and trained with the second. Token-level
bookkeeping (image placeholder, ``<coord>`` and ``<ground>`` positions, positions after the image
block is spliced in) lives in :class:`PromptIds` so the model, the engine and the training code do
not recompute it differently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from video3dllm_core.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "IGNORE_INDEX",
    "DEFAULT_SYSTEM_MESSAGE",
    "IMAGE_TOKEN",
    "GROUND_TOKEN",
    "COORD_TOKEN",
    "IM_START_TOKEN",
    "IM_END_TOKEN",
    "Task",
    "TASK_ALIASES",
    "TASK_TEXT_FIELDS",
    "parse_task",
    "human_turn",
    "SpecialTokenIds",
    "load_tokenizer",
    "special_token_ids",
    "ensure_special_tokens",
    "check_token_ids_against_config",
    "PromptSegment",
    "PromptIds",
    "GROUNDING_INSTRUCTION",
    "MULTI3DREFER_NOTE",
    "build_input_ids",
    "build_training_ids",
]

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
IMAGE_TOKEN = "<image>"
GROUND_TOKEN = "<ground>"
COORD_TOKEN = "<coord>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
#: The first line of ScanRefer / Multi3DRefer questions (upstream's wording); the description follows it.
GROUNDING_INSTRUCTION = "Identify the object according to the following description."
#: The line Multi3DRefer questions end with (upstream's wording).
MULTI3DREFER_NOTE = "There may be no corresponding object, or there may be one or more objects."

# Upstream training hard-codes 198 (Qwen2's "\n") as a token whose label is never masked.
_UPSTREAM_UNMASKED_NEWLINE_ID = 198

# The chat template upstream training installs on its tokenizer copy (no default system message).
_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


class Task(str, Enum):
    """The five benchmark tasks; the value is the upstream dataset name (lower case)."""

    SCANQA = "scanqa"
    SQA3D = "sqa3d"
    SCAN2CAP = "scan2cap"
    SCANREFER = "scanrefer"
    MULTI3DREFER = "multi3drefer"

    @property
    def is_grounding(self) -> bool:
        """True for the tasks answered by the ``<ground>`` token and the grounding head."""
        return self in (Task.SCANREFER, Task.MULTI3DREFER)


TASK_ALIASES: Mapping[str, Task] = {
    "qa": Task.SCANQA,
    "ground": Task.SCANREFER,
    "ground_multi": Task.MULTI3DREFER,
    "caption": Task.SCAN2CAP,
}
"""Engine-level task names and the benchmark task whose prompt they use."""

TASK_TEXT_FIELDS: Mapping[Task, tuple[str, ...]] = {
    Task.SCANQA: ("question",),
    Task.SQA3D: ("situation", "question"),
    Task.SCAN2CAP: (),
    Task.SCANREFER: ("description",),
    Task.MULTI3DREFER: ("description",),
}
"""The keyword arguments of :func:`human_turn` each task needs (and accepts)."""


def _valid_task_names() -> str:
    names = [t.value for t in Task] + [f"{alias} (= {t.value})" for alias, t in TASK_ALIASES.items()]
    return ", ".join(names)


def parse_task(task: str | Task) -> Task:
    """Resolve a task name, an engine alias (qa, ground, ground_multi, caption) or a :class:`Task`.

    Names are case-insensitive (upstream's metadata spells ScanQA ``scanQA``).
    """
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, got {type(task).__name__}; valid tasks: {_valid_task_names()}")
    key = task.strip().lower()
    if key in TASK_ALIASES:
        return TASK_ALIASES[key]
    try:
        return Task(key)
    except ValueError:
        raise ValueError(f"unknown task {task!r}; valid tasks: {_valid_task_names()}") from None


def human_turn(
    task: str | Task,
    *,
    question: str | None = None,
    situation: str | None = None,
    description: str | None = None,
) -> str:
    """The human turn of the conversation, with upstream's per-dataset template.

    ScanQA: ``"<image> {question} Answer the question simply."``; SQA3D:
    ``"<image> {situation} {question} Answer the question using a single word or phrase."``;
    Scan2Cap: a fixed sentence with the ``<coord>`` token (the location is given to the model as a
    box centre, not as text); ScanRefer / Multi3DRefer: an instruction line followed by
    ``description.capitalize()`` (which lower-cases everything after the first character, as
    upstream does), Multi3DRefer with one more sentence. The text is used verbatim otherwise.

    Raises:
        ValueError: unknown task, a needed argument missing or empty, or an argument the task does
            not use (so that e.g. a situation is never silently dropped).
    """
    t = parse_task(task)
    given = {"question": question, "situation": situation, "description": description}
    needed = TASK_TEXT_FIELDS[t]
    for name in needed:
        value = given[name]
        if value is None:
            raise ValueError(f"task {t.value!r} needs the argument {name!r} (got none)")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"task {t.value!r}: argument {name!r} must be a non-empty string, got {value!r}")
    unused = [name for name, value in given.items() if value is not None and name not in needed]
    if unused:
        needs = ", ".join(needed) if needed else "no text argument"
        raise ValueError(f"task {t.value!r} does not use the argument(s) {', '.join(unused)} (it takes: {needs})")

    if t is Task.SCANQA:
        return f"<image> {question} Answer the question simply."
    if t is Task.SQA3D:
        return f"<image> {situation} {question} Answer the question using a single word or phrase."
    if t is Task.SCAN2CAP:
        return "<image> Given an object located at <coord> , describe the object in detail."
    assert description is not None
    desc = description.capitalize()
    if t is Task.SCANREFER:
        return f"<image>{GROUNDING_INSTRUCTION}\n{desc}"
    return f"<image>{GROUNDING_INSTRUCTION}\n{desc}\n{MULTI3DREFER_NOTE}"


# --------------------------------------------------------------------------------------------------
# Tokenizer and special tokens


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the tokens the prompts rely on.

    Attributes:
        image: ``<image>`` (special added token; only the training path tokenises it).
        ground: ``<ground>`` (normal added token; ``config.ground_token_ids == [ground]``).
        coord: ``<coord>`` (normal added token; ``config.coord_token_ids == [coord]``).
        im_start, im_end: the Qwen2 chat delimiters ``<|im_start|>`` / ``<|im_end|>``.
        added: tokens that :func:`ensure_special_tokens` had to add (empty when the tokenizer
            already had them); a non-empty value means the embedding matrix must grow.
    """

    image: int
    ground: int
    coord: int
    im_start: int
    im_end: int
    added: tuple[str, ...] = ()


def load_tokenizer(checkpoint_dir: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer from local files only (no hub, no remote code).

    The tokenizer class comes from ``tokenizer_config.json``. The checkpoint's ``config.json``
    (model_type ``llava_qwen``, unknown to transformers) is deliberately not consulted: a neutral
    config is passed so transformers does not try, warn and fall back.

    Raises:
        FileNotFoundError: the folder or its tokenizer files are missing.
    """
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint_dir {str(path)!r} does not exist or is not a directory")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"checkpoint_dir {str(path)!r} holds no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)}); "
            "point it at the folder the checkpoint's tokenizer was saved to"
        )
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, config=PreTrainedConfig()
    )
    return tokenizer


def _single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """Id of ``token`` if it is an added token that tokenises to exactly itself, else None."""
    added = tokenizer.get_added_vocab()
    if token not in added:
        return None
    ids = tokenizer.encode(token, add_special_tokens=False)
    if list(ids) != [added[token]]:
        return None
    return int(added[token])


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """Look up the special token ids without changing the tokenizer.

    ``<|im_start|>`` / ``<|im_end|>`` are looked up by name (upstream unpacks
    ``tokenizer.additional_special_tokens_ids``, which is exactly these two for Qwen2 tokenizers;
    transformers 5 renamed that attribute).

    Raises:
        ValueError: a token is missing or does not tokenise to a single id; the message names it.
    """
    found: dict[str, int] = {}
    for token in (IMAGE_TOKEN, GROUND_TOKEN, COORD_TOKEN, IM_START_TOKEN, IM_END_TOKEN):
        tid = _single_token_id(tokenizer, token)
        if tid is None:
            hint = (
                "call ensure_special_tokens(tokenizer) first"
                if token in (IMAGE_TOKEN, GROUND_TOKEN, COORD_TOKEN)
                else "this is not a Qwen2 chat tokenizer"
            )
            raise ValueError(f"tokenizer has no single-id added token {token!r}; {hint}")
        found[token] = tid
    return SpecialTokenIds(
        image=found[IMAGE_TOKEN],
        ground=found[GROUND_TOKEN],
        coord=found[COORD_TOKEN],
        im_start=found[IM_START_TOKEN],
        im_end=found[IM_END_TOKEN],
    )


def _config_as_mapping(config: Any) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return result
    raise ValueError(f"config must be a mapping (the checkpoint's config.json) or have to_dict(), got {type(config).__name__}")


def check_token_ids_against_config(ids: SpecialTokenIds, config: Mapping[str, Any] | Any) -> None:
    """Check the tokenizer's ids against the checkpoint config (``ground_token_ids``, ``coord_token_ids``,
    ``vocab_size``).

    A key the config does not have is not checked (upstream simply skips the feature then).

    Raises:
        ValueError: a mismatch; the message names the config field, both values and the fix.
    """
    cfg = _config_as_mapping(config)
    for field, token, tid in (("ground_token_ids", GROUND_TOKEN, ids.ground), ("coord_token_ids", COORD_TOKEN, ids.coord)):
        if field not in cfg or cfg[field] is None:
            continue
        expected = cfg[field]
        if not isinstance(expected, Sequence) or isinstance(expected, str) or [int(v) for v in expected] != [tid]:
            raise ValueError(
                f"config {field} = {expected!r} but the tokenizer encodes {token!r} as [{tid}]; "
                "the tokenizer does not belong to this checkpoint (load both from the same folder, "
                "and add missing tokens in upstream order: <image>, <ground>, <coord>)"
            )
    vocab_size = cfg.get("vocab_size")
    if vocab_size is not None:
        biggest = max(ids.image, ids.ground, ids.coord, ids.im_start, ids.im_end)
        if biggest >= int(vocab_size):
            raise ValueError(
                f"config vocab_size = {vocab_size} but the tokenizer uses token id {biggest}; "
                "the model's embedding matrix cannot hold it (resize the embeddings or use the matching config)"
            )


def ensure_special_tokens(
    tokenizer: PreTrainedTokenizerBase, config: Mapping[str, Any] | Any | None = None
) -> SpecialTokenIds:
    """Add ``<image>`` (special), ``<ground>`` and ``<coord>`` (normal added tokens) if missing.

    This is what upstream does: ``<image>`` via ``add_tokens([...], special_tokens=True)``, then
    ``<ground>`` and ``<coord>`` via plain ``add_tokens`` (in that order), the config's
    ``ground_token_ids`` / ``coord_token_ids`` being ``tokenizer.encode(token)``. A released
    tokenizer already has all three (7B: 151646, 151647, 151648), and then nothing changes.
    When ``config`` (the checkpoint's config dict) is given the ids are checked against it.

    Returns:
        The ids; ``added`` lists the tokens added here (the embeddings must then be resized).
    """
    added: list[str] = []
    for token, special in ((IMAGE_TOKEN, True), (GROUND_TOKEN, False), (COORD_TOKEN, False)):
        if token not in tokenizer.get_added_vocab():
            tokenizer.add_tokens([token], special_tokens=special)
            added.append(token)
    base = special_token_ids(tokenizer)
    ids = SpecialTokenIds(
        image=base.image, ground=base.ground, coord=base.coord, im_start=base.im_start, im_end=base.im_end, added=tuple(added)
    )
    if config is not None:
        check_token_ids_against_config(ids, config)
    return ids


# --------------------------------------------------------------------------------------------------
# Token ids


@dataclass(frozen=True)
class PromptSegment:
    """One piece of the prompt and the ids it became (IMAGE_TOKEN_INDEX for the image placeholder)."""

    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class PromptIds:
    """Token ids of one prompt plus the bookkeeping every consumer needs.

    Attributes:
        task: the task.
        human_value: the human turn the ids were built from.
        input_ids: token ids with exactly one IMAGE_TOKEN_INDEX (-200) where the image block goes.
        labels: per-position labels as upstream builds them (IGNORE_INDEX where masked), or None for
            evaluation prompts of text tasks (upstream passes no labels there).
        segments: the pieces in order; ``prompt_string`` is their texts joined.
        prompt_string: the equivalent text (its tokenisation is NOT ``input_ids`` on the eval path).
        image_pos: index of IMAGE_TOKEN_INDEX in ``input_ids``.
        coord_positions: indices of ``<coord>`` in ``input_ids`` (the rows that get the box PE).
        ground_pos: index of the ``<ground>`` token, located through ``labels`` as upstream does
            (``ground_token_ids[0] <= label <= ground_token_ids[-1]``); None without labels or
            for text tasks.
        last_prompt_pos: eval prompts: the position whose logits predict the answer (the one before
            ``<ground>`` for grounding, the last one otherwise); None for training ids.
    """

    task: Task
    human_value: str
    input_ids: list[int]
    labels: list[int] | None
    segments: tuple[PromptSegment, ...]
    prompt_string: str
    image_pos: int
    coord_positions: tuple[int, ...]
    ground_pos: int | None
    last_prompt_pos: int | None

    def merged_position(self, pos: int, num_image_tokens: int) -> int:
        """Position of ``input_ids[pos]`` after the image placeholder is replaced by ``num_image_tokens`` rows."""
        _check_num_image_tokens(num_image_tokens)
        if not 0 <= pos < len(self.input_ids):
            raise ValueError(f"pos {pos} is outside input_ids (length {len(self.input_ids)})")
        if pos == self.image_pos:
            raise ValueError(f"pos {pos} is the image placeholder itself; it becomes the image block")
        return pos if pos < self.image_pos else pos + num_image_tokens - 1

    def merged_len(self, num_image_tokens: int) -> int:
        """Length of the sequence fed to the LLM once the image block is spliced in."""
        _check_num_image_tokens(num_image_tokens)
        return len(self.input_ids) - 1 + num_image_tokens

    def merged_labels(self, num_image_tokens: int) -> list[int] | None:
        """Labels aligned with the merged sequence (the image block is IGNORE_INDEX), or None."""
        _check_num_image_tokens(num_image_tokens)
        if self.labels is None:
            return None
        p = self.image_pos
        return self.labels[:p] + [IGNORE_INDEX] * num_image_tokens + self.labels[p + 1 :]


def _check_num_image_tokens(num_image_tokens: int) -> None:
    if int(num_image_tokens) != num_image_tokens or num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be a positive integer, got {num_image_tokens!r}")


def _tok(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    # Upstream calls tokenizer(text).input_ids (default add_special_tokens; Qwen2 adds none).
    return tuple(int(i) for i in tokenizer(text).input_ids)


def _check_human_value(human_value: str) -> None:
    if not isinstance(human_value, str):
        raise ValueError(f"human_value must be a string, got {type(human_value).__name__}")
    n = human_value.count(IMAGE_TOKEN)
    if n != 1:
        raise ValueError(
            f"human_value must contain exactly one {IMAGE_TOKEN} (the video), found {n}: {human_value!r}; "
            "build it with human_turn()"
        )


def _bookkeeping(
    task: Task,
    input_ids: list[int],
    labels: list[int] | None,
    ids: SpecialTokenIds,
    *,
    eval_prompt: bool,
) -> tuple[int, tuple[int, ...], int | None, int | None]:
    """image_pos, coord_positions, ground_pos, last_prompt_pos (with the task-level checks)."""
    image_positions = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_INDEX]
    if len(image_positions) != 1:
        raise ValueError(f"expected one image placeholder in input_ids, found {len(image_positions)}")
    coord_positions = tuple(i for i, t in enumerate(input_ids) if t == ids.coord)
    if task is Task.SCAN2CAP and not coord_positions:
        raise ValueError(f"a scan2cap prompt must contain {COORD_TOKEN} (the object location enters there)")
    if task is not Task.SCAN2CAP and coord_positions:
        raise ValueError(
            f"{COORD_TOKEN} appears in a {task.value} prompt; only scan2cap supplies the location it stands for"
        )
    ground_pos: int | None = None
    if labels is not None:
        # Upstream: (labels >= ground_token_ids[0]) & (labels <= ground_token_ids[-1]); one id here.
        ground = [i for i, t in enumerate(labels) if t == ids.ground]
        if task.is_grounding and len(ground) != 1:
            raise ValueError(f"a {task.value} prompt needs exactly one {GROUND_TOKEN} in its labels, found {len(ground)}")
        if not task.is_grounding and ground:
            raise ValueError(f"{GROUND_TOKEN} appears in the labels of a {task.value} prompt (not a grounding task)")
        ground_pos = ground[0] if ground else None
    last_prompt_pos: int | None = None
    if eval_prompt:
        last_prompt_pos = ground_pos - 1 if ground_pos is not None else len(input_ids) - 1
    return image_positions[0], coord_positions, ground_pos, last_prompt_pos


def build_input_ids(
    tokenizer: PreTrainedTokenizerBase,
    task: str | Task,
    human_value: str,
    system: str = DEFAULT_SYSTEM_MESSAGE,
    newline_after_image: bool = True,
) -> PromptIds:
    """Evaluation-time ids, exactly as upstream's eval ``preprocess_qwen``.

    ``newline_after_image=False`` (ours) leaves out the ``"\n"`` after the placeholder, which upstream's eval
    inserts and its training does not: the prompt then has the layout the model was trained with
    (docs/prompts.md, "The eval newline, measured").

    ``[im_start] + tok("system") + tok("\\n") + tok(system) + [im_end] + tok("\\n")``, then
    ``tok("<|im_start|>user") + tok("\\n")``, the human value split at ``<image>`` with
    ``[-200] + tok("\\n")`` between the pieces, ``[im_end] + tok("\\n")``, then
    ``tok("<|im_start|>assistant") + tok("\\n")``; grounding tasks carry the answer turn too
    (``tok("<ground>") + [im_end] + tok("\\n")``) and labels through which ``<ground>`` is found.
    Each piece is tokenised on its own, so the ids are not the tokenisation of ``prompt_string``.

    Raises:
        ValueError: unknown task; the human value without exactly one ``<image>``; missing special
            tokens (call :func:`ensure_special_tokens`); ``<coord>`` missing from a scan2cap prompt
            or present in another task's.
    """
    t = parse_task(task)
    _check_human_value(human_value)
    ids = special_token_ids(tokenizer)
    im_start, im_end = ids.im_start, ids.im_end
    nl = _tok(tokenizer, "\n")
    segments: list[PromptSegment] = []

    def add(text: str, piece: Sequence[int]) -> tuple[int, ...]:
        seg = PromptSegment(text, tuple(piece))
        segments.append(seg)
        return seg.ids

    # System turn.
    system_ids = (
        add(IM_START_TOKEN, [im_start])
        + add("system", _tok(tokenizer, "system"))
        + add("\n", nl)
        + add(system, _tok(tokenizer, system))
        + add(IM_END_TOKEN, [im_end])
        + add("\n", nl)
    )
    target: list[int] = [im_start] + [IGNORE_INDEX] * (len(system_ids) - 3) + [im_end] + list(nl)

    # User turn: pieces around <image>, each tokenised alone, the placeholder followed by "\n".
    user_role = f"{IM_START_TOKEN}user"
    user_ids = add(user_role, _tok(tokenizer, user_role)) + add("\n", nl)
    pieces = human_value.split(IMAGE_TOKEN)
    for i, piece in enumerate(pieces):
        user_ids += add(piece, _tok(tokenizer, piece))
        if i < len(pieces) - 1:
            user_ids += add(IMAGE_TOKEN, [IMAGE_TOKEN_INDEX]) + (add("\n", nl) if newline_after_image else ())
    user_ids += add(IM_END_TOKEN, [im_end]) + add("\n", nl)
    target += [im_start] + [IGNORE_INDEX] * (len(user_ids) - 3) + [im_end] + list(nl)

    # Assistant turn: open for text tasks; the answer "<ground>" for grounding tasks.
    asst_role = f"{IM_START_TOKEN}assistant"
    role_ids = _tok(tokenizer, asst_role)
    asst_ids = add(asst_role, role_ids) + add("\n", nl)
    labels: list[int] | None = None
    if t.is_grounding:
        asst_ids += add(GROUND_TOKEN, _tok(tokenizer, GROUND_TOKEN)) + add(IM_END_TOKEN, [im_end]) + add("\n", nl)
        target += [im_start] + [IGNORE_INDEX] * len(role_ids) + list(asst_ids[len(role_ids) + 1 : -2]) + [im_end] + list(nl)
        labels = target
    # Text tasks: upstream builds mismatched-length targets there and never uses them.

    input_ids = [int(i) for i in system_ids + user_ids + asst_ids]
    if labels is not None and len(labels) != len(input_ids):
        raise ValueError(
            f"labels ({len(labels)}) and input_ids ({len(input_ids)}) differ in length: the tokenizer's "
            "'\\n' or role tokens are not Qwen2-like"
        )
    image_pos, coord_positions, ground_pos, last_prompt_pos = _bookkeeping(t, input_ids, labels, ids, eval_prompt=True)
    return PromptIds(
        task=t,
        human_value=human_value,
        input_ids=input_ids,
        labels=labels,
        segments=tuple(segments),
        prompt_string="".join(s.text for s in segments),
        image_pos=image_pos,
        coord_positions=coord_positions,
        ground_pos=ground_pos,
        last_prompt_pos=last_prompt_pos,
    )


def _llava_preprocess_multimodal(value: str) -> str:
    """Upstream training's ``preprocess_multimodal`` for one sentence (mm_use_im_start_end false):
    a single ``<image>`` not at the start is moved there, followed by a newline."""
    if value.count(IMAGE_TOKEN) == 1 and not value.startswith(IMAGE_TOKEN):
        value = value.replace(IMAGE_TOKEN, "").strip()
        value = (IMAGE_TOKEN + "\n" + value).strip()
    return value


def _newline_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id upstream training never masks: 198, Qwen2's byte-level newline token "\u010a"; a tokenizer with a
    different vocabulary (the embedded default's, trained on benchmark text) has that token elsewhere."""
    vocab = tokenizer.get_vocab()
    return int(vocab.get("\u010a", _UPSTREAM_UNMASKED_NEWLINE_ID))


def build_training_ids(
    tokenizer: PreTrainedTokenizerBase,
    task: str | Task,
    human_value: str,
    answer: str | None = None,
    system: str = DEFAULT_SYSTEM_MESSAGE,
) -> PromptIds:
    """Training-time ids and labels, exactly as upstream's training ``preprocess_qwen``.

    Each turn (system, user, assistant) is rendered with the chat template
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` and tokenised in one piece; the ``<image>``
    token id becomes -200 (no newline token after it, unlike :func:`build_input_ids`). Labels:
    system and user turns masked, the whole assistant turn (including ``<|im_start|>assistant\\n``)
    kept, and every ``\\n`` (id 198 in Qwen2's vocabulary), ``<|im_start|>`` and ``<|im_end|>`` unmasked wherever it is.

    Args:
        answer: the assistant turn: required for text tasks (ScanQA/SQA3D answer, Scan2Cap
            caption); for grounding tasks it is ``<ground>`` (the default).

    Raises:
        ValueError: as :func:`build_input_ids`, plus a missing/empty ``answer`` for a text task or a
            grounding answer other than ``<ground>``.
    """
    t = parse_task(task)
    if t.is_grounding:
        if answer is None:
            answer = GROUND_TOKEN
        elif answer != GROUND_TOKEN:
            raise ValueError(f"the answer of a {t.value} sample is {GROUND_TOKEN!r} (the box comes from box labels), got {answer!r}")
    elif answer is None or not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"task {t.value!r} needs a non-empty 'answer' for training, got {answer!r}")
    _check_human_value(human_value)
    value = _llava_preprocess_multimodal(human_value)
    ids = special_token_ids(tokenizer)
    unmasked = (_newline_id(tokenizer), ids.im_start, ids.im_end)

    segments: list[PromptSegment] = []
    input_ids: list[int] = []
    labels: list[int] = []
    for role, content in (("system", system), ("user", value), ("assistant", answer)):
        text = tokenizer.apply_chat_template(
            [{"role": role, "content": content}], chat_template=_TRAINING_CHAT_TEMPLATE, tokenize=False
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
        encoded = [int(i) for i in tokenizer(text, add_special_tokens=False).input_ids]
        input_ids += encoded
        labels += encoded if role == "assistant" else [IGNORE_INDEX] * len(encoded)
        segments.append(PromptSegment(text, tuple(IMAGE_TOKEN_INDEX if i == ids.image else i for i in encoded)))
    for idx, token_id in enumerate(input_ids):
        if token_id in unmasked:
            labels[idx] = token_id
        if token_id == ids.image:
            input_ids[idx] = IMAGE_TOKEN_INDEX

    image_pos, coord_positions, ground_pos, _ = _bookkeeping(t, input_ids, labels, ids, eval_prompt=False)
    return PromptIds(
        task=t,
        human_value=value,
        input_ids=input_ids,
        labels=labels,
        segments=tuple(segments),
        prompt_string="".join(s.text for s in segments),
        image_pos=image_pos,
        coord_positions=coord_positions,
        ground_pos=ground_pos,
        last_prompt_pos=None,
    )
