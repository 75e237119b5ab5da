"""Load a script from ``benchmarks/`` as a module, so tests can call its functions and ``main``.

The scripts are not a package (they are run as ``python benchmarks/NAME.py``), so tests import them by
path. Imported by the test modules (pytest puts this folder on sys.path); not a test module itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """Execute ``benchmarks/<name>.py`` and return it as a module named ``name`` (registered in
    ``sys.modules`` first, as an import would: a script's dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no benchmark script benchmarks/{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
