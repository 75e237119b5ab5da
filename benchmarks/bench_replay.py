"""Benchmark: `video3dllm replay` at maximum speed on a synthetic rosbag2, against raw bag decoding.

A seeded synthetic room (Open3D ray casting) is recorded as a robot-style MCAP bag (RealSense
topics, map/odom/base_link TF, `bag_writer.write_scene_bag`). In one process:

* baseline: reading the bag with `RosbagSource` alone (MCAP read, CDR decode, colour/depth
  sync, TF interpolation, image decode): the upper bound of any replay;
* replay: the same bag through `replay.replay(..., rate="max")` into `SceneEngine`: ingest rate
  (frames per second inside `engine.add_frame`), stream rate (decode + add_frame), then a set
  of queries of every task after the last frame, with latency per stage (p50 / p90 / max).

The model is the embedded default (2.6 M parameters, trained on synthetic rooms) unless --model is given, so the query
latencies measure the pipeline around the model, not a 7B LLM (see bench_model.py for that).

    .venv/bin/python benchmarks/bench_replay.py            # 120 frames 640x480, prints markdown
    .venv/bin/python benchmarks/bench_replay.py --quick    # 30 frames 320x240 smoke run
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from video3dllm_core.bag_writer import write_scene_bag
from video3dllm_core.engine import EngineConfig, SceneEngine
from video3dllm_core.queries import QuerySpec
from video3dllm_core.replay import build_summary, replay
from video3dllm_core.report import latency_stats
from video3dllm_core.sources.rosbag import RosbagSource
from video3dllm_core.synthetic import make_scene, render_frames

STAGES = ("selection_s", "vision_s", "proposals_s", "prefill_s", "decode_s", "grounding_s", "total_s", "end_to_end_s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="times each query is asked (latency samples)")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: embedded default model)")
    parser.add_argument("--compressed", action="store_true", help="JPEG colour (CompressedImage) instead of raw rgb8")
    parser.add_argument("--quick", action="store_true", help="30 frames at 320x240, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.width, args.height, args.repeats = 30, 320, 240, 1
    return args


def bench_queries(objects: list, repeats: int) -> list[QuerySpec]:
    """Every task, asked `repeats` times after the last frame (repeats exercise the caches)."""
    a, b = objects[0], objects[1 % len(objects)]
    base: list[tuple[str, str, tuple[float, float, float] | None, str | None]] = [
        (f"Where is the {a.colour} {a.label}?", "ground", None, None),
        (f"Find every {b.colour} object.", "ground_multi", None, None),
        (f"What color is the {b.label}?", "qa", None, None),
        (f"What color is the {a.label}?", "situated_qa", None, f"I am next to the {b.label}."),
        ("Describe the object at this location.", "caption", (float(a.center[0]), float(a.center[1]), float(a.center[2])), None),
    ]
    specs: list[QuerySpec] = []
    for _ in range(repeats):
        for q, task, target, situation in base:
            specs.append(QuerySpec(len(specs), q, task, target, situation))
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = make_scene(args.seed)
    t0 = time.perf_counter()
    frames = render_frames(spec, args.frames, args.width, args.height)
    t_render = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        # T_map_world identity keeps the scene objects' boxes valid as caption targets in `map`.
        bag = write_scene_bag(frames, Path(tmp) / "bag", compressed=args.compressed, T_map_world=np.eye(4)).path
        del frames
        # Baseline: the bag alone, same process, twice (the first pass warms the page cache).
        for _ in range(2):
            t0 = time.perf_counter()
            with RosbagSource(bag) as source:
                n_decoded = sum(1 for _ in source)
            t_decode = time.perf_counter() - t0

        t0 = time.perf_counter()
        engine = SceneEngine.load(EngineConfig(model_path=args.model))
        t_load = time.perf_counter() - t0
        queries = bench_queries([o for o in spec.objects if o.placement == "floor"], args.repeats)
        with RosbagSource(bag) as source:
            result = replay(source, engine, queries, rate="max")
            summary = build_summary(result, engine, source.describe(), dict(source.stats.dropped), "map")

    ing = summary["ingest"]
    print(f"# bench_replay: {args.frames} frames {args.width}x{args.height} "
          f"({'JPEG' if args.compressed else 'raw rgb8'} colour, 16UC1 depth, MCAP), seed {args.seed}")
    print()
    print(f"machine: {platform.machine()}, {platform.python_version()}, model: {args.model or 'embedded default'} "
          f"(load {t_load:.2f} s), render {t_render:.1f} s")
    print()
    print("| path | frames | seconds | frames/s |")
    print("|---|---:|---:|---:|")
    print(f"| bag decode only (RosbagSource) | {n_decoded} | {t_decode:.2f} | {n_decoded / t_decode:.1f} |")
    print(f"| replay: engine.add_frame only | {result.frames_read} | {ing['add_s']:.2f} | {ing['rate_fps']:.1f} |")
    print(f"| replay: decode + add_frame | {result.frames_read} | {ing['read_s'] + ing['add_s']:.2f} | "
          f"{ing['stream_rate_fps']:.1f} |")
    print()
    rows = [r.to_dict() for r in result.records]
    per_round = len(rows) // args.repeats
    cold, warm = latency_stats(rows[:per_round]), latency_stats(rows[per_round:])
    print(f"Query latency, ms: {summary['queries']['ok']} successful of {summary['queries']['count']} queries, "
          f"{per_round} tasks x {args.repeats} rounds after the last frame. Cold: round 1, whose first query "
          "computes the keyframes' vision features and visual-prefix KV cache (later tasks reuse them, computing "
          "only their own proposals / decoding); warm: later rounds on the same keyframe set.")
    print()
    print("| stage | cold n | cold p50 | cold max | warm n | warm p50 | warm max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stage in STAGES:
        if stage in cold or stage in warm:
            c, w = cold.get(stage), warm.get(stage)
            cells = [f"{c['n']} | {1e3 * c['p50']:.1f} | {1e3 * c['max']:.1f}" if c else "0 | - | -",
                     f"{w['n']} | {1e3 * w['p50']:.1f} | {1e3 * w['max']:.1f}" if w else "0 | - | -"]
            print(f"| {stage[:-2]} | {cells[0]} | {cells[1]} |")
    print()
    print("| task | cold total ms | warm total ms (median) |")
    print("|---|---:|---:|")
    for i, row in enumerate(rows[:per_round]):
        again = [rows[i + k * per_round]["timings"]["total_s"] for k in range(1, args.repeats)]
        warm_text = f"{1e3 * float(np.median(again)):.1f}" if again else "-"
        print(f"| {row['task']} | {1e3 * row['timings']['total_s']:.1f} | {warm_text} |")
    mem = summary["memory"]
    print()
    print(f"peak RSS {mem['max_rss_bytes'] / 2**20:.0f} MiB, engine pool {mem['pool_bytes'] / 2**20:.1f} MiB "
          f"({mem['pool_size']} frames), {summary['coverage']['voxels_total']} voxels seen")
    failed = [r for r in result.records if not r.answer.ok]
    for r in failed[:3]:
        print(f"failed: Q{r.spec.index} {r.spec.task}: {r.answer.error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
