"""Accuracy of checkpoints on a synthetic-benchmark split, next to chance/prior baselines.

    python benchmarks/bench_default_model.py --benchmark BENCH \\
        --model pe=video3dllm_core/default_model --model no_pe=runs/no_pe/checkpoint-2000 \\
        [--split test] [--limit N] [--out bench_results]

For every model and task (ScanRefer and Multi3DRefer with the split's ground-truth boxes as
candidates, ScanQA, SQA3D, Scan2Cap at the matched detector box) it runs `video3dllm eval`'s code
(`video3dllm_training.evaluate`, max-coverage frames), scores the answers with the benchmark
metrics, computes the chance/prior rows (`video3dllm_training.baselines`), prints a table (overall
and per question type) and writes `<out>/results.json`. Answers are resumable per model and task.
A second table splits ScanRefer's relation descriptions into finding the named label and resolving
the relation among the objects of that label (`relation_breakdown`); a third groups Multi3DRefer's
descriptions by how many objects they mean and counts empty answers and exact sets (`multi_breakdown`), and
again by what they name (a colour, a label, both, a shape, a support, a distance: `multi_kind_breakdown`);
a fourth says how often a Scan2Cap caption names the object's colour and label and is exact (`caption_breakdown`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.answer import CAPTION_DECODINGS  # noqa: E402
from video3dllm_training.synthetic_eval import (  # noqa: E402
    baseline_metrics,
    caption_breakdown,
    caption_table,
    evaluate_checkpoint,
    multi_breakdown,
    multi_kind_breakdown,
    multi_kind_table,
    multi_table,
    relation_breakdown,
    relation_table,
    results_table,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N questions per task")
    p.add_argument("--frames-upbound", type=int, default=None,
                   help="keyframes per question (default: each model's config frames_upbound, as in its training)")
    p.add_argument("--newline-after-image", action=argparse.BooleanOptionalAction, default=None,
                   help="prompts with / without upstream eval's newline after the image placeholder (default: each "
                        "model's config.json prompt_newline_after_image; docs/prompts.md)")
    p.add_argument("--caption-decoding", default="checkpoint", choices=CAPTION_DECODINGS,
                   help="Scan2Cap captions: as each checkpoint's generation_config asks (default), greedy, or by the "
                        "speaker-listener search for every model (docs/engine.md, \"Captions\")")
    p.add_argument("--out", default="bench_default_model_out")
    p.add_argument("--record", default=None,
                   help="also write the embedded model's results.json here (the first --model is the shipped one)")
    p.add_argument("--recipe", default=None, help="the script that made the models (stored in --record)")
    args = p.parse_args(argv)
    bench, out = Path(args.benchmark), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {"chance/prior": baseline_metrics(bench, args.split, args.limit)}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--model {spec!r}: expected NAME=CHECKPOINT")
        frames = args.frames_upbound or json.loads((Path(path) / "config.json").read_text())["frames_upbound"]
        results[name] = evaluate_checkpoint(name, path, bench, args.split, out, args.limit, frames,
                                            newline_after_image=args.newline_after_image,
                                            caption_decoding=args.caption_decoding)
    models = list(results)[1:]  # after the chance/prior row
    relations = {name: relation_breakdown(bench, args.split, out / name / "scanrefer.jsonl") for name in models}
    multi = {name: multi_breakdown(out / name / "multi3drefer.jsonl") for name in models}
    multi_kinds = {name: multi_kind_breakdown(out / name / "multi3drefer.jsonl") for name in models}
    captions = {name: caption_breakdown(out / name / "scan2cap.jsonl") for name in models}
    (out / "results.json").write_text(json.dumps({"split": args.split, "limit": args.limit, "results": results,
                                                  "relations": relations, "multi": multi, "multi_kinds": multi_kinds,
                                                  "captions": captions},
                                                 indent=2) + "\n")
    print(f"split {args.split}" + (f", first {args.limit} questions per task" if args.limit else "") + " (values x100)")
    print(results_table(results))
    print("\nScanRefer relation descriptions (values x100)")
    print(relation_table(relations))
    print("\nMulti3DRefer descriptions by number of targets (values x100)")
    print(multi_table(multi))
    print("\nMulti3DRefer descriptions by what they name (values x100)")
    print(multi_kind_table(multi_kinds))
    print("\nScan2Cap captions: the object named, the caption exact (values x100)")
    print(caption_table(captions))
    if args.record:
        record(Path(args.record), bench, args, results, relations, multi, multi_kinds, captions)
    return 0


def record(path: Path, bench: Path, args: argparse.Namespace, results: dict[str, Any],
           relations: dict[str, dict[str, float]], multi: dict[str, dict[str, dict[str, float]]],
           multi_kinds: dict[str, dict[str, dict[str, float | None]]], captions: dict[str, dict[str, float]]) -> None:
    """results.json of the embedded default model: how the benchmark and model were made, what they score."""
    info = json.loads((bench / "benchmark.json").read_text())
    width, height = info["image_size"]
    bench_args = {"scenes": info["scene_count"], "seed": info["seed"], "frames_per_scene": info["frames_per_scene"],
                  "width": width, "height": height, "val_fraction": info["fractions"]["val"],
                  "test_fraction": info["fractions"]["test"]}
    shipped = args.model[0].partition("=")[2]
    config = json.loads((Path(shipped) / "config.json").read_text())
    if args.frames_upbound not in (None, config["frames_upbound"]):
        raise SystemExit(f"--record: the shipped model is measured with its own frames_upbound ({config['frames_upbound']}), "
                         f"not --frames-upbound {args.frames_upbound}; drop the option")
    doc = {
        "benchmark": {"args": bench_args, "generator_version": info["version"], "test_scenes": info["scenes"]["test"],
                      "counts": info["counts"]},
        "training": {"frames_upbound": config["frames_upbound"], "checkpoint": shipped},
        "recipe": Path(args.recipe).read_text() if args.recipe else None,
        "test": {"split": args.split, "limit": args.limit, "newline_after_image": args.newline_after_image,
                 "caption_decoding": args.caption_decoding,
                 "results": results, "relations": relations, "multi": multi, "multi_kinds": multi_kinds,
                 "captions": captions},
        "table": results_table(results),
        "relation_table": relation_table(relations),
        "multi_table": multi_table(multi),
        "multi_kind_table": multi_kind_table(multi_kinds),
        "caption_table": caption_table(captions),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
