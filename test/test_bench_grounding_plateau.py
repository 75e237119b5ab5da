"""benchmarks/bench_grounding_plateau.py: --content-scales is checked before any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from _bench_support import load_benchmark_script


@pytest.mark.parametrize(("value", "message"), [("0", "must be > 0"), ("1,x", "expected numbers"), ("-2", "must be > 0")])
def test_bad_content_scales_name_the_option_and_the_fix(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message) as raised:
        load_benchmark_script("bench_grounding_plateau").main(["--benchmark", str(tmp_path / "missing"), "--work", str(tmp_path), "--content-scales", value])
    assert "--content-scales" in str(raised.value)
    assert not any(tmp_path.iterdir())  # nothing was built
