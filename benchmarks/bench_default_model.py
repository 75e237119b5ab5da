"""Accuracy of checkpoints on a synthetic-benchmark split, next to chance/prior baselines.

    python benchmarks/bench_default_model.py --benchmark BENCH \\
        --model pe=video3dllm_core/default_model --model no_pe=runs/no_pe/checkpoint-2000 \\
        [--split test] [--limit N] [--out bench_results]

For every model and task (ScanRefer and Multi3DRefer with the split's ground-truth boxes as
candidates, ScanQA, SQA3D, Scan2Cap at the matched detector box) it runs `video3dllm eval`'s code
(`video3dllm_training.evaluate`, max-coverage frames), scores the answers with the benchmark
metrics, computes the chance/prior rows (`video3dllm_training.baselines`), prints a table (overall
and per question type) and writes `<out>/results.json`. Answers are resumable per model and task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("scanrefer", "multi3drefer", "scanqa", "sqa3d", "scan2cap")
FILES = {"scanrefer": "scanrefer_vg", "multi3drefer": "multi3drefer", "scanqa": "scanqa", "sqa3d": "sqa3d",
         "scan2cap": "scan2cap"}
HEADLINE = {"scanrefer": ("acc@0.25", "acc@0.5"), "multi3drefer": ("f1@0.25", "f1@0.5"), "scanqa": ("em",),
            "sqa3d": ("em",), "scan2cap": ("cider",)}


def headline(task: str, metrics: dict[str, Any], group: str = "all") -> dict[str, float]:
    """The numbers the table shows: {metric: value} of one group (overall or a question type)."""
    if task in ("scanrefer", "multi3drefer"):
        return {k: metrics[group][k] for k in HEADLINE[task]} if group in metrics else {}
    if task == "sqa3d":
        return {"em": metrics["em"]["all"]} if group == "all" else {}
    return {k: metrics[k] for k in HEADLINE[task]} if group == "all" else {}


def evaluate_model(name: str, path: str, bench: Path, split: str, out: Path, limit: int | None,
                   frames_upbound: int) -> dict[str, Any]:
    from video3dllm_training.evaluate import EvalConfig, evaluate

    meta = bench / "metadata"
    results = {}
    for task in TASKS:
        cfg = EvalConfig(task=task, model=path, annotations=str(bench / "processed" / f"{FILES[task]}_{split}_llava_style.json"),
                         posed_images=str(bench / "posed_images"), answers=str(out / name / f"{task}.jsonl"),
                         boxes=str(meta / f"scannet_{split}_gt_box.json") if task in ("scanrefer", "multi3drefer") else None,
                         frames_file=str(meta / "scannet_select_frames.json"), frame_strategy="mc",
                         frames_upbound=frames_upbound, batch_size=64, max_new_tokens=24, limit=limit, device="cpu",
                         meteor=False, progress=False)
        result = evaluate(cfg)
        results[task] = {"metrics": result.metrics, "questions": result.total}
        print(f"  {name} {task}: {result.total} questions, {result.seconds:.1f} s", file=sys.stderr)
    return results


def baselines(bench: Path, split: str, limit: int | None) -> dict[str, Any]:
    from video3dllm_training.baselines import chance_metrics
    from video3dllm_training.data import load_box_file
    from video3dllm_training.data.annotations import load_annotations
    from video3dllm_training.evaluate import unique_questions

    boxes = load_box_file(bench / "metadata" / f"scannet_{split}_gt_box.json")
    out = {}
    for task in TASKS:
        anns = load_annotations(bench / "processed" / f"{FILES[task]}_{split}_llava_style.json")
        if limit is not None:  # the same questions the evaluation answers
            keep = {q.question_id for q in unique_questions(anns)[:limit]}
            anns = [a for a in anns if a.question_id in keep]
        train = load_annotations(bench / "processed" / f"{FILES[task]}_train_llava_style.json")
        out[task] = {"metrics": chance_metrics(task, anns, boxes, train)}
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| task | group | metric | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for task in TASKS:
        metrics = results[names[0]][task]["metrics"]
        groups = ["all"] + sorted(g for g in metrics if isinstance(metrics.get(g), dict) and "count" in metrics[g]
                                  and g != "all") if task in ("scanrefer", "multi3drefer") else ["all"]
        for group in groups:
            for metric in HEADLINE[task]:
                cells = []
                for name in names:
                    value = headline(task, results[name][task]["metrics"], group).get(metric)
                    cells.append("" if value is None else f"{100 * value:.1f}")
                count = metrics.get(group, {}).get("count") if isinstance(metrics.get(group), dict) else None
                label = group if count is None else f"{group} ({int(count)})"
                lines.append(f"| {task} | {label} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N questions per task")
    p.add_argument("--frames-upbound", type=int, default=4, help="keyframes per question (as in training)")
    p.add_argument("--out", default="bench_default_model_out")
    args = p.parse_args(argv)
    bench, out = Path(args.benchmark), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {"chance/prior": baselines(bench, args.split, args.limit)}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--model {spec!r}: expected NAME=CHECKPOINT")
        results[name] = evaluate_model(name, path, bench, args.split, out, args.limit, args.frames_upbound)
    (out / "results.json").write_text(json.dumps({"split": args.split, "limit": args.limit, "results": results}, indent=2) + "\n")
    print(f"split {args.split}" + (f", first {args.limit} questions per task" if args.limit else "") + " (values x100)")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
