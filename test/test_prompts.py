"""Prompts and token ids against the upstream implementation's recorded outputs (reference-parity fixture).

Every case in ``cases.json`` is rebuilt from the raw task text in ``tasks.json`` with the fixture's
real tokenizer files; the human turn, the token segments, ``input_ids``, labels, the prompt string
and all id-only bookkeeping must match what the original code recorded, exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from video3dllm_core.model.prompts import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TASK_TEXT_FIELDS,
    PromptIds,
    Task,
    build_input_ids,
    build_training_ids,
    check_token_ids_against_config,
    ensure_special_tokens,
    human_turn,
    load_tokenizer,
    parse_task,
    special_token_ids,
)

FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", Path(__file__).parent / "fixtures" / "reference_parity"))
CHECKPOINT = FIXTURE / "checkpoint"
CASES: dict[str, dict[str, Any]] = json.loads((FIXTURE / "cases.json").read_text())["cases"]
TASKS: dict[str, Any] = json.loads((FIXTURE / "tasks.json").read_text())
CONFIG: dict[str, Any] = json.loads((CHECKPOINT / "config.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = load_tokenizer(CHECKPOINT)
    ensure_special_tokens(tok, CONFIG)
    return tok


def _human_value(name: str) -> str:
    task = parse_task(CASES[name]["task"])
    return human_turn(task, **{field: TASKS[name][field] for field in TASK_TEXT_FIELDS[task]})


def _check_case(prompt: PromptIds, case: dict[str, Any]) -> None:
    assert [(s.text, list(s.ids)) for s in prompt.segments] == [(s["text"], s["ids"]) for s in case["segments"]]
    assert prompt.input_ids == case["input_ids"]
    assert prompt.prompt_string == case["prompt_string"]
    if "labels" in case:
        assert prompt.labels == case["labels"]
    else:
        assert prompt.labels is None
    book = case["bookkeeping"]
    n = book["num_image_tokens_inserted"]
    assert len(prompt.input_ids) == book["input_ids_len"]
    assert prompt.image_pos == book["image_token_index_pos"] == book["image_block_start"]
    assert prompt.image_pos + n == book["image_block_end_exclusive"]
    assert prompt.merged_len(n) == book["merged_len"]
    assert prompt.last_prompt_pos is not None
    assert prompt.merged_position(prompt.last_prompt_pos, n) == book["last_prompt_pos_merged"]
    assert [prompt.merged_position(p, n) for p in prompt.coord_positions] == book["coord_token_pos_merged"]
    if "ground_token_pos_merged" in book:
        assert prompt.ground_pos is not None
        assert [prompt.merged_position(prompt.ground_pos, n)] == book["ground_token_pos_merged"]
    else:
        assert prompt.ground_pos is None
    if "merged_labels_nonignored" in case:
        merged = prompt.merged_labels(n)
        assert merged is not None and len(merged) == book["merged_len"]
        assert [[i, t] for i, t in enumerate(merged) if t != IGNORE_INDEX] == case["merged_labels_nonignored"]


def test_fixture_has_all_five_tasks() -> None:
    assert {parse_task(c["task"]) for c in CASES.values()} == set(Task)


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_reproduced_exactly(tokenizer: Any, name: str) -> None:
    case = CASES[name]
    task = parse_task(case["task"])
    for field in TASK_TEXT_FIELDS[task]:  # tasks.json and cases.json hold the same raw text
        assert case["raw"][field] == TASKS[name][field]
    human_value = _human_value(name)
    assert human_value == case["human_value"]
    _check_case(build_input_ids(tokenizer, task, human_value), case)


def test_coord_position_before_merging(tokenizer: Any) -> None:
    prompt = build_input_ids(tokenizer, "scan2cap", _human_value("scan2cap"))
    assert prompt.coord_positions == (CASES["scan2cap"]["input_ids"].index(CONFIG["coord_token_ids"][0]),)
    assert prompt.input_ids[prompt.coord_positions[0]] == 592


def test_fixture_token_ids_and_config_agree(tokenizer: Any) -> None:
    ids = ensure_special_tokens(tokenizer, CONFIG)
    assert (ids.image, ids.ground, ids.coord, ids.im_start, ids.im_end) == (590, 591, 592, 588, 589)
    assert ids.added == ()
    assert [ids.ground] == CONFIG["ground_token_ids"] and [ids.coord] == CONFIG["coord_token_ids"]
    assert len(tokenizer) == CONFIG["vocab_size"] == 593


def test_config_mismatch_is_reported(tokenizer: Any) -> None:
    ids = special_token_ids(tokenizer)
    with pytest.raises(ValueError, match="ground_token_ids"):
        check_token_ids_against_config(ids, {**CONFIG, "ground_token_ids": [151647]})
    with pytest.raises(ValueError, match="coord_token_ids"):
        ensure_special_tokens(tokenizer, {**CONFIG, "coord_token_ids": [591]})
    with pytest.raises(ValueError, match="vocab_size"):
        check_token_ids_against_config(ids, {**CONFIG, "vocab_size": 592})


def _strip_added_tokens(dst: Path) -> None:
    """Copy the fixture tokenizer without <image>, <ground>, <coord> (a base Qwen2-like tokenizer)."""
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(CHECKPOINT / name, dst / name)
    drop = {"<image>", "<ground>", "<coord>"}
    tok_json = json.loads((dst / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["content"] not in drop]
    (dst / "tokenizer.json").write_text(json.dumps(tok_json))
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if v["content"] not in drop}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_missing_tokens_added_as_upstream_and_survive_save(tmp_path: Path) -> None:
    _strip_added_tokens(tmp_path / "base")
    tok = load_tokenizer(tmp_path / "base")
    assert len(tok) == 590
    with pytest.raises(ValueError, match="ensure_special_tokens"):
        special_token_ids(tok)
    with pytest.raises(ValueError, match="<image>"):
        build_input_ids(tok, "scanqa", _human_value("scanqa"))

    ids = ensure_special_tokens(tok, CONFIG)
    assert ids.added == ("<image>", "<ground>", "<coord>")
    assert (ids.image, ids.ground, ids.coord) == (590, 591, 592)
    decoder = tok.added_tokens_decoder
    assert decoder[590].special and not decoder[591].special and not decoder[592].special
    assert ensure_special_tokens(tok).added == ()  # idempotent
    for name, case in CASES.items():
        _check_case(build_input_ids(tok, case["task"], _human_value(name)), case)

    tok.save_pretrained(tmp_path / "saved")
    reloaded = load_tokenizer(tmp_path / "saved")
    assert ensure_special_tokens(reloaded, CONFIG) == dataclasses.replace(ids, added=())
    assert reloaded.added_tokens_decoder[590].special and not reloaded.added_tokens_decoder[591].special


def test_engine_aliases() -> None:
    assert parse_task("qa") is Task.SCANQA
    assert parse_task("ground") is Task.SCANREFER
    assert parse_task("ground_multi") is Task.MULTI3DREFER
    assert parse_task("caption") is Task.SCAN2CAP
    assert parse_task("scanQA") is Task.SCANQA  # upstream metadata spelling
    assert parse_task(Task.SQA3D) is Task.SQA3D
    assert [t for t in Task if t.is_grounding] == [Task.SCANREFER, Task.MULTI3DREFER]


def test_unknown_task_lists_valid_tasks(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="unknown task 'detect'") as err:
        parse_task("detect")
    for valid in ("scanqa", "sqa3d", "scan2cap", "scanrefer", "multi3drefer", "qa", "ground", "ground_multi", "caption"):
        assert valid in str(err.value)
    with pytest.raises(ValueError, match="valid tasks"):
        build_input_ids(tokenizer, "nr3d", "<image> hi")


def test_missing_or_unused_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'question'"):
        human_turn("scanqa")
    with pytest.raises(ValueError, match="'situation'"):
        human_turn("sqa3d", question="Which way?")
    with pytest.raises(ValueError, match="'description'"):
        human_turn("ground")
    with pytest.raises(ValueError, match="'description'"):
        human_turn("multi3drefer", description="   ")
    with pytest.raises(ValueError, match="situation"):
        human_turn("qa", question="What is it?", situation="I stand here.")
    with pytest.raises(ValueError, match="description"):
        human_turn("caption", description="a chair")


def test_templates_by_hand() -> None:
    assert human_turn("qa", question="Q?") == "<image> Q? Answer the question simply."
    assert human_turn("sqa3d", situation="S.", question="Q?") == (
        "<image> S. Q? Answer the question using a single word or phrase."
    )
    # .capitalize(): first character upper, everything after lower, as upstream.
    assert human_turn("ground", description="the TV. It is on") == (
        "<image>Identify the object according to the following description.\nThe tv. it is on"
    )
    assert human_turn("ground_multi", description="x").endswith(
        "\nX\nThere may be no corresponding object, or there may be one or more objects."
    )


def test_human_value_needs_exactly_one_image(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="exactly one <image>.*found 0"):
        build_input_ids(tokenizer, "scanqa", "What is in front of the cabinet? Answer the question simply.")
    with pytest.raises(ValueError, match="exactly one <image>.*found 2"):
        build_input_ids(tokenizer, "scanqa", "<image> <image> What?")
    with pytest.raises(ValueError, match="<image>"):
        build_training_ids(tokenizer, "scanqa", "What?", "table")


def test_coord_token_only_in_scan2cap(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="scan2cap prompt must contain <coord>"):
        build_input_ids(tokenizer, "scan2cap", "<image> Describe the object.")
    with pytest.raises(ValueError, match="<coord> appears in a scanqa prompt"):
        build_input_ids(tokenizer, "scanqa", "<image> What is at <coord> ?")


def test_merged_position_rejects_the_placeholder(tokenizer: Any) -> None:
    prompt = build_input_ids(tokenizer, "qa", _human_value("scanqa"))
    with pytest.raises(ValueError, match="image placeholder"):
        prompt.merged_position(prompt.image_pos, 840)
    with pytest.raises(ValueError, match="num_image_tokens"):
        prompt.merged_len(0)


def test_load_tokenizer_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


# --- training-time ids (upstream llava/train/train_3d.py:preprocess_qwen) ---------------------------

_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _expected_training(tokenizer: Any, human_value: str, answer: str) -> tuple[list[int], list[int]]:
    """Independent computation: tokenise each hand-written turn string and mask as upstream does."""
    ids: list[int] = []
    labels: list[int] = []
    for text, keep in (
        (_SYSTEM, False),
        (f"<|im_start|>user\n{human_value}<|im_end|>\n", False),
        (f"<|im_start|>assistant\n{answer}<|im_end|>\n", True),
    ):
        turn = tokenizer(text, add_special_tokens=False).input_ids
        ids += turn
        labels += turn if keep else [t if t in (198, 588, 589) else IGNORE_INDEX for t in turn]
    return [IMAGE_TOKEN_INDEX if t == 590 else t for t in ids], labels


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_ids(tokenizer: Any, name: str) -> None:
    task = parse_task(CASES[name]["task"])
    human_value = _human_value(name)
    answer = "<ground>" if task.is_grounding else TASKS[name].get("answer", TASKS[name].get("description"))
    prompt = build_training_ids(tokenizer, task, human_value, None if task.is_grounding else answer)
    ids, labels = _expected_training(tokenizer, human_value, answer)
    assert prompt.input_ids == ids
    assert prompt.labels == labels
    assert prompt.prompt_string == _SYSTEM + f"<|im_start|>user\n{human_value}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    # Same prefix as evaluation up to the placeholder; no "\n" token after it (eval has one).
    eval_ids = CASES[name]["input_ids"]
    assert prompt.image_pos == eval_ids.index(IMAGE_TOKEN_INDEX)
    assert prompt.input_ids[: prompt.image_pos] == eval_ids[: prompt.image_pos]
    assert eval_ids[prompt.image_pos + 1] == 198
    assert prompt.input_ids[prompt.image_pos + 1] == tokenizer(human_value.split("<image>")[1]).input_ids[0]
    if task.is_grounding:
        assert prompt.ground_pos is not None and prompt.labels[prompt.ground_pos] == 591
        assert prompt.input_ids[prompt.ground_pos] == 591
    else:
        assert prompt.ground_pos is None
    assert prompt.last_prompt_pos is None


def test_training_image_moved_to_front_as_upstream(tokenizer: Any) -> None:
    prompt = build_training_ids(tokenizer, "qa", "What is this? <image>", "a chair")
    assert prompt.human_value == "<image>\nWhat is this?"


def test_training_answer_rules(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="'answer'"):
        build_training_ids(tokenizer, "scanqa", _human_value("scanqa"))
    with pytest.raises(ValueError, match="<ground>"):
        build_training_ids(tokenizer, "scanrefer", _human_value("scanrefer"), "the table")


def test_eval_ids_without_the_newline_after_the_image_are_the_training_layout() -> None:
    """`newline_after_image=False` drops exactly the "\\n" after the placeholder; with the embedded model's own tokenizer
    the result is the training ids (text tasks: up to the answer; grounding: whole, answer `<ground>`)."""
    from video3dllm_core.default_model import DEFAULT_MODEL_DIR

    tok = load_tokenizer(DEFAULT_MODEL_DIR)
    texts = {"question": "What colour is the chair?", "situation": "I am standing at the door facing the window.",
             "description": "The chair closest to the door."}
    for task in Task:
        human = human_turn(task, **{name: texts[name] for name in TASK_TEXT_FIELDS[task]})
        upstream = build_input_ids(tok, task, human)
        ours = build_input_ids(tok, task, human, newline_after_image=False)
        at = upstream.image_pos
        assert upstream.input_ids[at] == IMAGE_TOKEN_INDEX
        assert upstream.input_ids[at + 1:at + 2] == tok("\n", add_special_tokens=False).input_ids
        assert ours.input_ids == upstream.input_ids[:at + 1] + upstream.input_ids[at + 2:]
        assert ours.image_pos == at
        training = build_training_ids(tok, task, human, None if task.is_grounding else "yellow")
        if task.is_grounding:
            assert ours.input_ids == training.input_ids
            assert ours.ground_pos == upstream.ground_pos - 1 == training.ground_pos
        else:
            assert ours.input_ids == training.input_ids[:len(ours.input_ids)]
            assert ours.last_prompt_pos == len(ours.input_ids) - 1
