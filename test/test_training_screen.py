"""video3dllm_training.screen: ranking training runs by an early window of a logged loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_training import screen


def _run(root: Path, name: str, losses: dict[int, float], extra: list[str] | None = None) -> Path:
    run = root / name
    run.mkdir()
    lines = [json.dumps({"step": step, "loss": 9.0, "description_loss": value}) for step, value in losses.items()]
    (run / "metrics.jsonl").write_text("\n".join(lines + (extra or [])) + "\n")
    return run


def test_runs_are_ranked_by_the_mean_inside_the_window_only(tmp_path: Path) -> None:
    # "late" is worst inside 400-600 but best outside it; "early" the reverse
    late = _run(tmp_path, "late", {350: 1.0, 400: 2.7, 450: 2.6, 500: 2.8, 650: 1.0})
    early = _run(tmp_path, "early", {350: 3.0, 400: 2.4, 500: 2.5, 600: 2.45, 650: 3.0})
    assert screen.window_mean(late) == pytest.approx((2.7 + 2.6 + 2.8) / 3)
    ranked = screen.rank_runs([late, early])
    assert [run for run, _ in ranked] == [early, late]
    assert ranked[0][1] == pytest.approx((2.4 + 2.5 + 2.45) / 3)
    assert screen.rank_runs([late, early], first_step=300, last_step=350)[0][0] == late


def test_main_prints_the_table_and_the_run_to_continue_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "a", {450: 2.6, 550: 2.6})
    b = _run(tmp_path, "b", {450: 2.5, 550: 2.4})
    assert screen.main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"2.4500  {b}", f"2.6000  {a}", str(b)]


def test_bad_runs_are_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl; pass the --output folder"):
        screen.window_mean(tmp_path)
    short = _run(tmp_path, "short", {50: 3.0, 100: 2.9})
    with pytest.raises(ValueError, match=r"no 'description_loss' logged within steps 400-600 \(it has steps 50-100\); train to step 600"):
        screen.window_mean(short)
    broken = _run(tmp_path, "broken", {450: 2.5}, extra=["{not json"])
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        screen.window_mean(broken)
    with pytest.raises(ValueError, match="no runs"):
        screen.rank_runs([])
    with pytest.raises(SystemExit):
        screen.main([str(short), "--steps", "600-400"])
