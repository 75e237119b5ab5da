"""benchmarks/bench_caption_decoding.py: settings are checked before any model is loaded, and a run prints greedy
next to each setting, with the time as a ratio to greedy's."""

from __future__ import annotations

from pathlib import Path

import pytest

from _bench_support import load_benchmark_script
from video3dllm_core.model.listener_decoding import ListenerDecoding


def test_settings_parse_into_listener_decoding() -> None:
    script = load_benchmark_script("bench_caption_decoding")
    assert script.parse_setting("beams=2, listener_weight=0.5") == ListenerDecoding(beams=2, listener_weight=0.5)
    assert script.parse_setting("") == ListenerDecoding()


@pytest.mark.parametrize(("setting", "message"), [
    ("beams", "expected NAME=VALUE"),
    ("beams=two", "beams needs a number"),
    ("beam_width=2", "unknown setting"),
    ("beams=0", "beams must be a positive integer"),
])
def test_bad_settings_name_the_option(tmp_path: Path, setting: str, message: str) -> None:
    script = load_benchmark_script("bench_caption_decoding")
    with pytest.raises(SystemExit, match=message) as raised:
        script.main(["--benchmark", str(tmp_path / "missing"), "--setting", setting])
    assert "--setting" in str(raised.value)


def test_a_run_prints_greedy_and_each_setting(small_model_benchmark: Path, small_init_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    script = load_benchmark_script("bench_caption_decoding")
    assert script.main(["--benchmark", str(small_model_benchmark), "--model", str(small_init_model), "--split", "val",
                        "--limit", "2", "--setting", "beams=2,top_k=3", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| greedy") or line.startswith("| beams=2,top_k=3")]
    assert len(rows) == 2 and rows[0].endswith("| 1.0 |")  # greedy is its own baseline
    assert (tmp_path / "run0.jsonl").is_file() and (tmp_path / "run1.jsonl").is_file()
