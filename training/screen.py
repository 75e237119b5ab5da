"""Rank training runs by a logged loss over a window of early steps (`python -m video3dllm_training.screen`).

Why: stage 1 of the embedded model's recipe takes one of two courses depending on the training seed
(validation ScanRefer Acc@0.25 near 40 % at steps 2000-3000, or 10-34 %), and which one shows early:
the description recall loss averaged over steps 400-600 splits the runs into those two groups, though
not sharply at the boundary and without ordering the runs within a group (docs/training.md,
"Screening training seeds"). Train several seeds to step 600
(`train --stop-at-step 600`), continue the one ranked first (`train --resume auto`): no validation
data is needed to choose.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

METRICS_FILE = "metrics.jsonl"


def window_mean(run_dir: str | Path, key: str = "description_loss", first_step: int = 400, last_step: int = 600) -> float:
    """Mean of ``key`` over the logged records with ``first_step <= step <= last_step`` of a `video3dllm train` run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE}; pass the --output folder of a `video3dllm train` run")
    values, logged = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON record ({err.msg})") from None
        step = record.get("step")
        if not isinstance(step, int):
            continue
        logged.append(step)
        if first_step <= step <= last_step and key in record:
            values.append(float(record[key]))
    if not values:
        span = f"steps {min(logged)}-{max(logged)}" if logged else "no steps"
        raise ValueError(f"{path}: no {key!r} logged within steps {first_step}-{last_step} (it has {span}); "
                         f"train to step {last_step} with --log-steps at most {max(1, last_step - first_step)}")
    mean = sum(values) / len(values)
    if not math.isfinite(mean):
        raise ValueError(f"{path}: {key!r} over steps {first_step}-{last_step} is not finite ({mean})")
    return mean


def rank_runs(run_dirs: Sequence[str | Path], key: str = "description_loss", first_step: int = 400,
              last_step: int = 600) -> list[tuple[Path, float]]:
    """The runs with their window mean, lowest first (ties keep the given order)."""
    if not run_dirs:
        raise ValueError("no runs to rank")
    scored = [(Path(d), window_mean(d, key, first_step, last_step)) for d in run_dirs]
    return sorted(scored, key=lambda item: item[1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m video3dllm_training.screen", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="--output folders of `video3dllm train` runs")
    p.add_argument("--key", default="description_loss", help="logged value to rank by, lowest first (default description_loss)")
    p.add_argument("--steps", default="400-600", help="window of steps FIRST-LAST, both included (default 400-600)")
    args = p.parse_args(argv)
    try:
        first, last = (int(x) for x in args.steps.split("-"))
    except ValueError:
        p.error(f"--steps must be FIRST-LAST, e.g. 400-600, got {args.steps!r}")
    if first > last:
        p.error(f"--steps {args.steps}: FIRST must not exceed LAST")
    ranked = rank_runs(args.runs, args.key, first, last)
    for run, value in ranked:
        print(f"{value:.4f}  {run}")
    print(ranked[0][0])  # last line: the run to continue
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
