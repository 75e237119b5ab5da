"""benchmarks/bench_grounding_plateau.py: --content-scales is checked before any model is built."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _plateau_module():
    spec = importlib.util.spec_from_file_location("bench_grounding_plateau", REPO / "benchmarks" / "bench_grounding_plateau.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("value", "message"), [("0", "must be > 0"), ("1,x", "expected numbers"), ("-2", "must be > 0")])
def test_bad_content_scales_name_the_option_and_the_fix(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message) as raised:
        _plateau_module().main(["--benchmark", str(tmp_path / "missing"), "--work", str(tmp_path), "--content-scales", value])
    assert "--content-scales" in str(raised.value)
    assert not any(tmp_path.iterdir())  # nothing was built
