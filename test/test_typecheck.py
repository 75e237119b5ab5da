"""video3dllm_core, video3dllm_ros and the benchmark scripts type-check cleanly with mypy (settings in mypy.ini)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~60 s on a cold cache (torch and transformers are analysed), ~3 s warm
def test_mypy_passes_on_core_ros_and_benchmarks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), "video3dllm_core", "video3dllm_ros", "benchmarks"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
