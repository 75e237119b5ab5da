"""benchmarks/bench_demo_rooms.py: the counts it prints are `score_demo_rooms`' (the demo's own checks), and
`--record` merges them into a results.json without touching the rest and refuses any non-default column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _bench_support import load_benchmark_script


@pytest.mark.parametrize("extra", [["--caption-decoding", "greedy"], ["--max-frames", "8"], ["--turn", "30"],
                                   ["--model", "x=/nowhere"]])
def test_record_refuses_a_non_default_column(tmp_path: Path, extra: list[str]) -> None:
    script = load_benchmark_script("bench_demo_rooms")
    with pytest.raises(SystemExit, match="--record measures the embedded default model"):
        script.main(["--rooms", "1", "--record", str(tmp_path / "results.json"), *extra])
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow  # ~10 s: two small rooms through the embedded model
def test_record_merges_the_printed_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from video3dllm_core.commands.demo import render_demo_room, score_demo_rooms
    from video3dllm_core.engine import EngineConfig, SceneEngine

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"test": {"kept": 1}}))
    script = load_benchmark_script("bench_demo_rooms")
    size = ["--frames", "8", "--width", "160", "--height", "120"]
    assert script.main(["--rooms", "2", *size, "--record", str(results)]) == 0
    out = capsys.readouterr().out
    data = json.loads(results.read_text())
    assert data["test"] == {"kept": 1}  # the held-out test numbers stay
    demo = data["demo"]
    assert demo["seeds"] == [0, 1] and (demo["frames"], demo["width"], demo["height"], demo["turn_deg"]) == (8, 160, 120, 0.0)
    assert list(demo["correct"]) == ["Q0 ground", "Q1 ground", "Q2 ground", "Q3 ground_multi", "Q4 qa", "Q5 qa",
                                     "Q6 situated_qa", "Q7 caption"]
    assert sum(demo["correct"].values()) == sum(demo["per_room"]) and demo["mean"] == pytest.approx(sum(demo["per_room"]) / 2)
    for key, count in demo["correct"].items():  # what it printed is what it recorded
        assert f"| {key} | {count} / 2 |" in out
    assert f"| per room | {demo['per_room'][0]} {demo['per_room'][1]} |" in out
    assert "--rooms 2" in demo["command"]
    # the same rooms scored directly (one engine for both rooms, reset in between) give the same counts
    score = score_demo_rooms(SceneEngine.load(EngineConfig()), [0, 1], 8, 160, 120,
                             rooms=[render_demo_room(s, 8, 160, 120) for s in (0, 1)])
    assert score.per_room == demo["per_room"] and score.correct == demo["correct"]
