"""Caption decoding steered by the model's own grounding head: a speaker-listener beam search.

Why: a caption should say what the object at ``<coord>`` looks like. The decoder (the *speaker*)
writes fluent captions, but a small decoder may not read the video at all (the embedded default
model's does not: docs/training.md, "The decoder does not read the video"), while the same model's
grounding head (the *listener*) compares a description with each candidate box's own features and
picks the right object for most attribute descriptions. This search lets the listener choose among
the speaker's plausible words, so the caption names what the listener sees at the target.

It is the pragmatic speaker of the Rational Speech Acts model (S1 ∝ S0 · L^λ; Andreas & Klein 2016,
"Reasoning about Pragmatics with Neural Listeners and Speakers"; D3Net, Chen et al. 2022, for 3D
captioning with a grounding listener), restricted to the speaker's plausible tokens as in MAGIC
(Su et al. 2022, "Language Models Can See"). Every step, each live beam proposes its ``top_k`` next
tokens whose probability is at least ``min_relative_prob`` times its most likely one; a candidate
scores

    sum of the speaker's log-probabilities + listener_weight * listener(text so far)

where the listener's value is the target box's grounding score for the text as a description,
divided by the head's temperature (a logit, so the weight is an exponent on a probability). The
candidates are taken best first: one that ends in an end-of-answer token is finished, the others live
on until ``beams`` live. The search stops when no beam lives or when the best finished caption scores
at least as high as the best live one (a heuristic: a live caption's listener value may still rise);
it returns the best finished caption (the best live one when none finished within ``max_new_tokens``).

Upstream decodes greedily (or by plain beam search); this search is ours and opt-in per checkpoint:
a checkpoint asks for it with the ``video3dllm_caption_decoding`` key of its generation_config.json
(:func:`checkpoint_caption_decoding`), and the engine and ``video3dllm eval`` can force either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .decoding import GenerationOutput

GENERATION_CONFIG_KEY = "video3dllm_caption_decoding"


@dataclass(frozen=True)
class ListenerDecoding:
    """Settings of the speaker-listener beam search (module docstring)."""

    beams: int = 4  # live captions kept per step
    top_k: int = 20  # at most this many next tokens per beam...
    min_relative_prob: float = 0.05  # ...each at least this fraction of the beam's most likely next token
    listener_weight: float = 1.0  # exponent of the listener's probability (0: plain beam search)

    def __post_init__(self) -> None:
        for name in ("beams", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"listener decoding: {name} must be a positive integer, got {value!r}")
        if not 0.0 < float(self.min_relative_prob) <= 1.0:
            raise ValueError(f"listener decoding: min_relative_prob must be in (0, 1], got {self.min_relative_prob!r}")
        if not math.isfinite(float(self.listener_weight)) or float(self.listener_weight) < 0.0:
            raise ValueError(f"listener decoding: listener_weight must be >= 0, got {self.listener_weight!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ListenerDecoding:
        """Settings from a mapping with the field names (missing ones keep their defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"listener decoding: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_caption_decoding(generation_config: Any) -> ListenerDecoding | None:
    """The listener settings a checkpoint's generation_config asks for, or None (upstream decoding).

    The key holds ``{"mode": "listener", ...settings}`` or ``{"mode": "greedy"}``.
    """
    raw = getattr(generation_config, GENERATION_CONFIG_KEY, None) if generation_config is not None else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"generation_config {GENERATION_CONFIG_KEY} must be an object like "
                         f"{{\"mode\": \"listener\"}}, got {raw!r}")
    settings = dict(raw)
    mode = settings.pop("mode", None)
    if mode == "greedy":
        return None
    if mode != "listener":
        raise ValueError(f"generation_config {GENERATION_CONFIG_KEY}.mode must be 'listener' or 'greedy', got {mode!r}")
    return ListenerDecoding.from_dict(settings)


def resolve_caption_decoding(choice: str, generation_config: Any) -> ListenerDecoding | None:
    """The search to caption with (None: greedy) for a ``choice`` of ``EngineConfig.caption_decoding``:
    "checkpoint" (what the checkpoint asks for), "greedy", or "listener" (its settings, else the defaults)."""
    if choice == "greedy":
        return None
    if choice not in ("checkpoint", "listener"):
        raise ValueError(f"caption decoding must be 'checkpoint', 'greedy' or 'listener', got {choice!r}")
    asked = checkpoint_caption_decoding(generation_config)
    if choice == "listener":
        return asked or ListenerDecoding()
    return asked


def listener_beam_search(speaker: Callable[[list[int]], torch.Tensor],
                         listener: Callable[[list[list[int]]], list[float]], settings: ListenerDecoding,
                         max_new_tokens: int, eos_token_ids: Iterable[int]) -> GenerationOutput:
    """The speaker-listener beam search of the module docstring.

    ``speaker(tokens)``: log-probabilities [vocab] of the next token after the generated ``tokens``;
    ``listener(candidates)``: the listener's logit for the text of each candidate token list (eos ids
    included; the callable drops them), asked once per step for all of the step's candidates so that it
    can batch them. Returns the chosen tokens (with the eos id when it finished) and no step logits.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = set(int(e) for e in eos_token_ids)
    log_floor = math.log(settings.min_relative_prob)
    live: list[tuple[float, list[int], float]] = [(0.0, [], 0.0)]  # (score, tokens, summed speaker log-probability)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_new_tokens):
        proposed: list[tuple[list[int], float]] = []  # (tokens, summed speaker log-probability)
        for _, tokens, speaker_lp in live:
            logp = speaker(tokens).float()
            top = torch.topk(logp, min(settings.top_k, int(logp.shape[-1])))
            values, indices = top.values.tolist(), top.indices.tolist()
            for lp, token in zip(values, indices):
                if lp < values[0] + log_floor:
                    break
                proposed.append((tokens + [int(token)], speaker_lp + lp))
        heard = listener([tokens for tokens, _ in proposed])
        pool = [(total + settings.listener_weight * value, tokens, total) for (tokens, total), value in zip(proposed, heard)]
        pool.sort(key=lambda c: -c[0])
        live = []
        for entry in pool:  # best first, until the beams are full
            if entry[1][-1] in eos:
                finished.append((entry[0], entry[1]))
            else:
                live.append(entry)
                if len(live) == settings.beams:
                    break
        best_finished = max((score for score, _ in finished), default=-math.inf)
        if not live or best_finished >= live[0][0]:
            break
    if finished:
        return GenerationOutput(token_ids=max(finished, key=lambda f: f[0])[1], step_logits=None, stopped_at_eos=True)
    return GenerationOutput(token_ids=live[0][1] if live else [], step_logits=None, stopped_at_eos=False)
