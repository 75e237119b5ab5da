"""Caption decoding with the grounding head as listener (`model.listener_decoding`, `Video3DLLM.generate_with_listener`).

The search is checked against brute force on toy speakers and listeners; the model's speaker and listener
against independent full forwards; the engine's and eval's choice of decoding against the checkpoint's
generation_config.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from video3dllm_core.model.listener_decoding import (GENERATION_CONFIG_KEY, ListenerDecoding, checkpoint_caption_decoding,
                                                     listener_beam_search, resolve_caption_decoding)

EOS = 3
REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", REPO / "test" / "fixtures" / "reference_parity"))


def _toy(first: list[float], listener_values: dict[int, float]) -> tuple[Any, Any]:
    """A speaker over tokens 0..3 (3 = eos): `first` log-probabilities for the first token, then eos for sure;
    a listener that values each first token (eos ids dropped, as the model's does)."""
    first_logp = torch.log_softmax(torch.tensor(first), dim=0)
    then = torch.full((4,), -1e4)
    then[EOS] = 0.0

    def speaker(tokens: list[int]) -> torch.Tensor:
        return first_logp if not tokens else then

    def listener(candidates: list[list[int]]) -> list[float]:
        words = [[t for t in tokens if t != EOS] for tokens in candidates]
        return [listener_values[w[0]] if w else 0.0 for w in words]

    return speaker, listener


def test_weight_zero_is_the_speakers_greedy_choice() -> None:
    speaker, listener = _toy([2.0, 1.0, 0.0, -5.0], {0: 0.0, 1: 10.0, 2: 0.0})
    out = listener_beam_search(speaker, listener, ListenerDecoding(listener_weight=0.0), 5, [EOS])
    assert out.token_ids == [0, EOS] and out.stopped_at_eos


def test_listener_outweighs_a_less_likely_word() -> None:
    speaker, listener = _toy([2.0, 1.0, 0.0, -5.0], {0: 0.0, 1: 10.0, 2: 0.0})
    out = listener_beam_search(speaker, listener, ListenerDecoding(listener_weight=1.0), 5, [EOS])
    assert out.token_ids == [1, EOS]


def test_implausible_words_are_never_chosen() -> None:
    # token 1 is e^-4 = 1.8 % as likely as token 0: below min_relative_prob 0.05 however much the listener likes it
    speaker, listener = _toy([2.0, -2.0, 0.0, -5.0], {0: 0.0, 1: 1e6, 2: 0.0})
    out = listener_beam_search(speaker, listener, ListenerDecoding(listener_weight=1.0), 5, [EOS])
    assert out.token_ids[0] != 1
    out = listener_beam_search(speaker, listener, ListenerDecoding(listener_weight=1.0, min_relative_prob=0.01), 5, [EOS])
    assert out.token_ids == [1, EOS]


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_over_every_caption(seed: int) -> None:
    """Two-word captions (then eos) over 5 words, every one reachable (beams and top_k cover them all): the search's
    choice maximises sum of log-probabilities + weight * listener over all 25 captions."""
    rng = np.random.default_rng(seed)
    vocab, eos = 6, 5
    step1 = torch.log_softmax(torch.tensor(rng.normal(size=vocab)), 0)
    step1[eos] = -1e4
    step2 = {t: torch.log_softmax(torch.tensor(rng.normal(size=vocab)), 0) for t in range(vocab)}
    step3 = torch.full((vocab,), -1e4)
    step3[eos] = 0.0
    for t in range(vocab):
        step2[t][eos] = -1e4
    values = {pair: float(v) for pair, v in zip(itertools.product(range(5), repeat=2), rng.normal(scale=2.0, size=25))}

    def speaker(tokens: list[int]) -> torch.Tensor:
        if not tokens:
            return step1
        return step2[tokens[0]] if len(tokens) == 1 else step3

    def listener(candidates: list[list[int]]) -> list[float]:
        words = [tuple(t for t in tokens if t != eos) for tokens in candidates]
        return [values[w] if len(w) == 2 else 0.0 for w in words]  # one word: no opinion yet

    weight = 1.5
    want = max(values, key=lambda p: float(step1[p[0]] + step2[p[0]][p[1]]) + weight * values[p])
    settings = ListenerDecoding(beams=25, top_k=vocab, min_relative_prob=1e-9, listener_weight=weight)
    out = listener_beam_search(speaker, listener, settings, 4, [eos])
    assert tuple(out.token_ids) == (*want, eos)


def test_no_eos_within_the_budget_returns_the_best_live_caption() -> None:
    never_eos = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0, -1e4]), 0)
    out = listener_beam_search(lambda tokens: never_eos, lambda cands: [0.0] * len(cands), ListenerDecoding(), 3, [EOS])
    assert out.token_ids == [0, 0, 0] and not out.stopped_at_eos


@pytest.mark.parametrize("bad, match", [
    (dict(beams=0), "beams must be a positive integer"),
    (dict(top_k=True), "top_k must be a positive integer"),
    (dict(min_relative_prob=0.0), r"min_relative_prob must be in \(0, 1\]"),
    (dict(listener_weight=-1.0), "listener_weight must be >= 0"),
])
def test_settings_are_checked(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ListenerDecoding(**bad)


def test_checkpoint_generation_config_asks_for_the_search() -> None:
    asks = SimpleNamespace(**{GENERATION_CONFIG_KEY: {"mode": "listener", "beams": 2}})
    silent = SimpleNamespace()
    greedy = SimpleNamespace(**{GENERATION_CONFIG_KEY: {"mode": "greedy"}})
    assert checkpoint_caption_decoding(asks) == ListenerDecoding(beams=2)
    assert checkpoint_caption_decoding(silent) is None and checkpoint_caption_decoding(greedy) is None
    assert resolve_caption_decoding("checkpoint", asks) == ListenerDecoding(beams=2)
    assert resolve_caption_decoding("checkpoint", silent) is None
    assert resolve_caption_decoding("greedy", asks) is None
    assert resolve_caption_decoding("listener", silent) == ListenerDecoding()
    assert resolve_caption_decoding("listener", asks) == ListenerDecoding(beams=2)
    with pytest.raises(ValueError, match="unknown setting.*beam_width"):
        checkpoint_caption_decoding(SimpleNamespace(**{GENERATION_CONFIG_KEY: {"mode": "listener", "beam_width": 2}}))
    with pytest.raises(ValueError, match="mode must be 'listener' or 'greedy'"):
        checkpoint_caption_decoding(SimpleNamespace(**{GENERATION_CONFIG_KEY: {"mode": "sample"}}))
    with pytest.raises(ValueError, match="'checkpoint', 'greedy' or 'listener'"):
        resolve_caption_decoding("beam", silent)


# ---------------------------------------------------------------------- the model's speaker and listener
@pytest.fixture(scope="module")
def default_model() -> Any:
    from video3dllm_core.default_model import load_default_model

    return load_default_model(device="cpu")


@pytest.fixture(scope="module")
def scene(default_model: Any) -> dict[str, Any]:
    """The parity fixture's frames and boxes through the embedded model, with its caption and grounding prompts."""
    from video3dllm_core.model.prompts import Task, build_input_ids, human_turn

    with np.load(FIXTURE / "expected.npz") as data:
        crops, coords = data["crops_uint8"], data["world_coords"]
    with np.load(FIXTURE / "inputs.npz") as data:
        boxes = data["boxes"]
    model = default_model
    tok = model.tokenizer
    newline = model.config.prompt_newline_after_image
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        objects = model.object_features(visual, boxes)
    caption_ids = build_input_ids(tok, Task.SCAN2CAP, human_turn(Task.SCAN2CAP), newline_after_image=newline).input_ids

    def listener_ids(text: str) -> list[int]:
        human = human_turn(Task.SCANREFER, description=text)
        return build_input_ids(tok, Task.SCANREFER, human, newline_after_image=newline).input_ids

    return dict(visual=visual, objects=objects, boxes=boxes, caption_ids=caption_ids, listener_ids=listener_ids,
                prefix=model.prefill_prefix(visual, caption_ids))


def test_one_beam_without_listener_is_greedy_decoding(default_model: Any, scene: dict[str, Any]) -> None:
    model = default_model
    for target in range(len(scene["boxes"])):
        merged = model.build_inputs_embeds(scene["caption_ids"], scene["visual"], coord_xyz=scene["boxes"][target][:3])
        greedy = model.generate(merged, max_new_tokens=12, prefix=scene["prefix"])
        plain = ListenerDecoding(beams=1, top_k=1, listener_weight=0.0)
        for prefix in (None, scene["prefix"]):
            out = model.generate_with_listener(merged, scene["visual"], scene["objects"], target, scene["listener_ids"],
                                               plain, max_new_tokens=12, prefix=prefix, listener_prefix=prefix)
            assert out.token_ids == greedy.token_ids and out.stopped_at_eos == greedy.stopped_at_eos


def test_speaker_and_listener_values_against_full_forwards(default_model: Any, scene: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The search sees the decoder's next-token log-probabilities after the prompt and the words so far (a forward
    of the whole sequence from scratch gives the same), and the target's grounding score of the words as a
    description over the head's temperature (the engine's grounding query gives the same)."""
    import video3dllm_core.model.modeling as modeling

    model, target = default_model, 1
    seen: dict[str, Any] = {}

    def spy(speaker: Any, listener: Any, settings: Any, max_new_tokens: int, eos: Any) -> Any:
        seen.update(speaker=speaker, listener=listener)
        return modeling.GenerationOutput(token_ids=[], step_logits=None, stopped_at_eos=False)

    monkeypatch.setattr(modeling, "listener_beam_search", spy)
    coord = scene["boxes"][target][:3]
    merged = model.build_inputs_embeds(scene["caption_ids"], scene["visual"], coord_xyz=coord)
    model.generate_with_listener(merged, scene["visual"], scene["objects"], target, scene["listener_ids"], ListenerDecoding(),
                                 prefix=scene["prefix"], listener_prefix=scene["prefix"])
    tok = model.tokenizer
    words = tok.encode(" a red chair next to the", add_special_tokens=False)
    added = tok.get_added_vocab()  # never proposed but the end of the answer: a caption is words
    banned = [added[t] for t in ("<coord>", "<ground>", "<image>", "<|im_start|>", "<|endoftext|>")]
    assert model.eos_token_ids == [added["<|im_end|>"]]
    with torch.no_grad():
        for n in (0, 1, len(words)):  # repeated, so the cache is back at the prompt after every call
            full = model.build_inputs_embeds(list(scene["caption_ids"]) + words[:n], scene["visual"], coord_xyz=coord)
            logits = model.logits(model.run_decoder(full).hidden[-1]).float()
            logits[banned] = -torch.inf
            want = torch.log_softmax(logits, dim=-1)
            got = seen["speaker"](words[:n])
            assert torch.isinf(got[banned]).all() and torch.isfinite(got[model.eos_token_ids]).all()
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        text = tok.decode(words, skip_special_tokens=True).strip()
        scores = model.ground(model.build_inputs_embeds(scene["listener_ids"](text), scene["visual"]), scene["objects"]).scores
    temperature = float(model.config.raw["ground_head_temperature"])
    heard = seen["listener"]([words + model.eos_token_ids, [], words[:2]])
    assert math.isclose(heard[0], float(scores[target]) / temperature, abs_tol=1e-3) and heard[1] == 0.0
    assert seen["listener"]([words[:2]]) == [heard[2]]  # asked again: the same value


def test_batched_grounding_equals_one_query_at_a_time(default_model: Any, scene: dict[str, Any]) -> None:
    """ground_batch pads descriptions of different lengths on the right and repeats the prefix cache: each
    result equals `ground` of that description alone, whatever the batch size."""
    model = default_model
    texts = ["the red chair.", "a green table next to the pink stool.", "all the objects within 2 metres of the door.",
             "the box."]
    merged = [model.build_inputs_embeds(scene["listener_ids"](t), scene["visual"]) for t in texts]
    assert len({m.length for m in merged}) > 1
    with torch.no_grad():
        one_by_one = [model.ground(m, scene["objects"], prefix=scene["prefix"]).scores for m in merged]
        for batch_size in (1, 3, 16):
            for prefix in (scene["prefix"], None):
                batched = model.ground_batch(merged, scene["objects"], prefix=prefix, batch_size=batch_size)
                for got, want in zip(batched, one_by_one):
                    torch.testing.assert_close(got.scores, want, rtol=0, atol=1e-4)
        assert scene["prefix"].cache.get_seq_length() == scene["prefix"].length  # the prefix itself is untouched
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.ground_batch(merged, scene["objects"], batch_size=0)


def test_generate_with_listener_checks_its_inputs(default_model: Any, scene: dict[str, Any]) -> None:
    merged = default_model.build_inputs_embeds(scene["caption_ids"], scene["visual"], coord_xyz=scene["boxes"][0][:3])
    with pytest.raises(ValueError, match=r"target_index 9 outside the \d+ candidate boxes"):
        default_model.generate_with_listener(merged, scene["visual"], scene["objects"], 9, scene["listener_ids"],
                                             ListenerDecoding())


# ---------------------------------------------------------------------- engine and eval
def test_engine_decodes_captions_as_the_checkpoint_asks(default_model: Any) -> None:
    from video3dllm_core.engine import EngineConfig, SceneEngine

    assert SceneEngine(default_model, EngineConfig())._listener == checkpoint_caption_decoding(default_model.generation_config)
    assert SceneEngine(default_model, EngineConfig())._listener is not None  # the embedded model asks for the search
    assert SceneEngine(default_model, EngineConfig(caption_decoding="greedy"))._listener is None
    headless = SimpleNamespace(generation_config=None, ground_head=None, config=SimpleNamespace(raw={}))
    with pytest.raises(ValueError, match="caption_decoding='listener'.*has none; use caption_decoding='greedy'"):
        SceneEngine(headless, EngineConfig(caption_decoding="listener"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="EngineConfig.caption_decoding must be one of"):
        EngineConfig(caption_decoding="beam")


def test_eval_listener_candidates() -> None:
    from video3dllm_training.evaluate import listener_candidates

    scene = np.array([[0, 0, 0, 1, 1, 1], [2, 0, 0, 1, 1, 1]], dtype=np.float64)
    boxes, index = listener_candidates(scene, [2, 0, 0.0005, 1, 1, 1])
    assert index == 1 and np.array_equal(boxes, scene)  # the input box is a candidate (within 1 mm)
    boxes, index = listener_candidates(scene, [5, 5, 0, 1, 1, 1])
    assert index == 2 and boxes.shape == (3, 6) and np.array_equal(boxes[2], [5, 5, 0, 1, 1, 1])
    boxes, index = listener_candidates(None, [5, 5, 0, 1, 1, 1])
    assert index == 0 and boxes.shape == (1, 6)
