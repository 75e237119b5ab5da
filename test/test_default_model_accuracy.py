"""The shipped default model still reproduces its recorded accuracy on the benchmark's held-out test scenes.

The benchmark is regenerated from the recorded `make-benchmark` arguments (seeded, versioned), the shipped
checkpoint answers every test question through `video3dllm eval`'s code, and each headline metric (overall
and per question type) must match `video3dllm_core/default_model/results.json` within TOLERANCE: a
change to rendering, ingestion, prompts, the model code or the metrics that moves the numbers fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_core.default_model import DEFAULT_MODEL_DIR, default_model_results, load_default_model
from video3dllm_training.synthetic_benchmark import GENERATOR_VERSION, make_benchmark
from video3dllm_training.synthetic_eval import (TASKS, baseline_metrics, caption_breakdown, evaluate_checkpoint, headline,
                                                multi_breakdown, relation_breakdown)

TOLERANCE = 0.02  # absolute, on fractions: a few flipped argmaxes from another CPU's float32 kernels


@pytest.mark.slow  # ~2 min on 2 cores: 150 rendered rooms, ~1700 questions
def test_shipped_model_reproduces_the_recorded_test_accuracy(tmp_path: Path) -> None:
    recorded = default_model_results()
    args = recorded["benchmark"]["args"]
    assert recorded["benchmark"]["generator_version"] == GENERATOR_VERSION, "benchmark generator changed: retrain"
    info = make_benchmark(tmp_path / "bench", **args)
    assert info["scenes"]["test"] == recorded["benchmark"]["test_scenes"]
    split = recorded["test"]["split"]
    model = load_default_model(device="cpu")
    got = evaluate_checkpoint("default", DEFAULT_MODEL_DIR, tmp_path / "bench", split, tmp_path / "answers",
                              recorded["test"]["limit"], recorded["training"]["frames_upbound"], model=model,
                              newline_after_image=recorded["test"].get("newline_after_image"),
                              caption_decoding=recorded["test"].get("caption_decoding", "greedy"))
    want = recorded["test"]["results"]["default"]
    chance = baseline_metrics(tmp_path / "bench", split, recorded["test"]["limit"])
    report = {}
    for task in TASKS:
        assert got[task]["questions"] == want[task]["questions"], task
        groups = [g for g in want[task]["metrics"] if isinstance(want[task]["metrics"][g], dict)
                  and "count" in want[task]["metrics"][g]] or ["all"]
        for group in groups:
            for metric, value in headline(task, want[task]["metrics"], group).items():
                now = headline(task, got[task]["metrics"], group)[metric]
                report[f"{task}/{group}/{metric}"] = (round(now, 4), round(value, 4))
                assert abs(now - value) <= TOLERANCE, (task, group, metric, now, value)
        # the baselines are exact functions of the regenerated benchmark: equal to the recorded ones
        recorded_chance = recorded["test"]["results"]["chance/prior"][task]["metrics"]
        for group in groups:
            assert headline(task, chance[task]["metrics"], group) == pytest.approx(headline(task, recorded_chance, group))
    relations = relation_breakdown(tmp_path / "bench", split, tmp_path / "answers" / "default" / "scanrefer.jsonl")
    for key, value in recorded["test"]["relations"]["default"].items():
        assert abs(relations[key] - value) <= TOLERANCE, (key, relations[key], value)
    multi = multi_breakdown(tmp_path / "answers" / "default" / "multi3drefer.jsonl")
    for group, values in recorded["test"]["multi"]["default"].items():
        assert multi[group]["descriptions"] == values["descriptions"], group
        for key in ("answered_nothing", "exact", "f1"):
            assert abs(multi[group][key] - values[key]) <= TOLERANCE, (group, key, multi[group][key], values[key])
    captions = caption_breakdown(tmp_path / "answers" / "default" / "scan2cap.jsonl")
    want_captions = recorded["test"]["captions"]["default"]
    assert captions["captions"] == want_captions["captions"]
    for key in ("colour", "label", "object", "exact"):
        assert abs(captions[key] - want_captions[key]) <= TOLERANCE, (key, captions[key], want_captions[key])
    print(json.dumps(report, indent=1))


DEMO_TOLERANCE = 2  # right answers of the ten rooms' 80: a close choice may flip on another CPU's float32 kernels


@pytest.mark.slow  # ~1 min on 2 cores: ten rooms rendered at 640x480 and streamed through the engine
def test_demo_reproduces_the_recorded_counts_over_ten_rooms() -> None:
    """`video3dllm demo`'s eight questions in the recorded rooms (`bench_demo_rooms.py --record`): the engine's own
    candidates, keyframes and decoding, not the benchmark's ground-truth boxes. Seed 0 is the room `video3dllm demo`
    shows by default; issue 7 asks that it show mostly correct answers."""
    from video3dllm_core.commands.demo import score_demo_rooms
    from video3dllm_core.engine import EngineConfig, SceneEngine

    recorded = default_model_results()["demo"]
    score = score_demo_rooms(SceneEngine.load(EngineConfig()), recorded["seeds"], recorded["frames"], recorded["width"],
                             recorded["height"], recorded["turn_deg"])
    print(score.correct, score.per_room)
    assert list(score.correct) == list(recorded["correct"])
    assert all(abs(now - then) <= 1 for now, then in zip(score.per_room, recorded["per_room"])), \
        (score.per_room, recorded["per_room"])
    assert abs(sum(score.per_room) - sum(recorded["per_room"])) <= DEMO_TOLERANCE, (score.per_room, recorded["per_room"])
    assert recorded["seeds"][0] == 0 and score.per_room[0] >= 5, "the default demo room is no longer mostly right"
    assert score.mean > 4.0, "the demo is no longer right more often than wrong over the ten rooms"
