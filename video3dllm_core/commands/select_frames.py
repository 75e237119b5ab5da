"""`video3dllm select-frames SOURCE`: choose keyframes of a posed-images directory or a rosbag2.

The offline form of the keyframe stage: every frame of SOURCE is a candidate (the online
CoverageIndex with a pool large enough for all of them). Each frame is reduced to its coverage
voxel keys with the ingest stage's own `coverage_voxel_keys` and `IngestConfig`, then the
frames are chosen by `keyframes.greedy_max_coverage` ("mc", with an optional coverage ratio) or
`keyframes.uniform_indices` ("uniform"), the functions `CoverageIndex.select` runs on its
pool, so the result equals `CoverageIndex(capacity >= N).select(...)` on the same frames while
holding only the voxel keys, pose, stamp and name per frame (tens of KB, not the ~1 MB model
crop), which keeps hour-long bags in memory.

With --json exactly one JSON object goes to stdout:
    frames            selected frames in time order: {index, name, stamp_ns, T_world_cam}
    coverage          voxels covered by the selection / voxels seen by all input frames
    voxels_selected, voxels_total, num_input_frames, dropped (by reason), source, strategy,
    max_frames, coverage_ratio, voxel_size_m
    timing            seconds per stage: read, voxelize, select, total
Progress goes to stderr (tqdm), never to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from video3dllm_core.commands.source_args import add_source_arguments, source_options

HELP = "select keyframes (max-coverage or uniform) of a posed-images directory or a rosbag2"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("select-frames", help=HELP, description=HELP)
    p.add_argument("source", help="posed-images directory, rosbag2 directory, or .mcap/.db3 file")
    p.add_argument("--voxel-size", type=float, default=0.1, help="coverage voxel size in metres (default 0.1)")
    p.add_argument("--max-frames", type=int, default=32, help="frame budget (default 32)")
    p.add_argument(
        "--coverage",
        type=float,
        default=None,
        help="with --strategy mc: stop once this fraction of the voxels is covered, e.g. 0.95 (default: budget only)",
    )
    p.add_argument(
        "--strategy",
        choices=("mc", "uniform", "mc-ratio90", "mc-ratio95"),
        default="mc",
        help="max-coverage greedy (mc, mc-ratio90/95 as upstream) or uniform sampling (default mc)",
    )
    add_source_arguments(p, world_frame_help="TF frame of the output poses (default map)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")


@dataclass
class _Candidate:
    index: int
    name: str | None
    stamp_ns: int
    T_world_cam: np.ndarray
    voxel_keys: np.ndarray


def _drop_text(source: Any) -> str:
    dropped = source.stats.dropped
    if not dropped:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
    text = f"dropped {sum(dropped.values())} frame(s) ({reasons})"
    examples = getattr(source, "drop_examples", {})
    for reason in sorted(dropped):
        if reason in examples:
            text += f"\n  {reason}, first case: {examples[reason]}"
    return text


def select_frames(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selection; returns the JSON-ready result (see the module doc)."""
    from tqdm import tqdm

    from video3dllm_core.geometry import sorted_unique
    from video3dllm_core.ingest import IngestConfig, coverage_voxel_keys
    from video3dllm_core.keyframes import greedy_max_coverage, resolve_strategy, uniform_indices
    from video3dllm_core.sources import open_source

    method, ratio = resolve_strategy(args.strategy, args.coverage)
    if args.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {args.max_frames}")
    config = IngestConfig(voxel_size_m=args.voxel_size)
    t_start = time.perf_counter()
    t_read = t_vox = 0.0
    candidates: list[_Candidate] = []
    with open_source(args.source, **source_options(args)) as source:
        total = None
        if hasattr(source, "__len__"):
            total = len(source)
        elif hasattr(source, "topics") and hasattr(source, "rgb_topic"):
            total = source.topics.get(source.rgb_topic, (None, None))[1]
        iterator = iter(source)
        with tqdm(total=total, desc="reading frames", unit="frame", file=sys.stderr, leave=False) as bar:
            while True:
                t0 = time.perf_counter()
                frame = next(iterator, None)
                t1 = time.perf_counter()
                t_read += t1 - t0
                if frame is None:
                    break
                keys = coverage_voxel_keys(frame.depth_m, frame.K_depth, frame.T_world_cam, config)
                t_vox += time.perf_counter() - t1
                candidates.append(
                    _Candidate(len(candidates), frame.name, int(frame.stamp_ns), np.asarray(frame.T_world_cam), keys)
                )
                bar.update(1)
        description = source.describe()
        drops = _drop_text(source)
        dropped = dict(source.stats.dropped)
    if drops:
        print(f"video3dllm select-frames: {drops}", file=sys.stderr)
    if not candidates:
        raise ValueError(f"no usable frame in {args.source}" + (f": {drops}" if drops else ""))

    # Time order, as the online index keeps its pool (stable for equal stamps).
    candidates.sort(key=lambda c: c.stamp_ns)
    t0 = time.perf_counter()
    if method == "uniform":
        picks = [int(i) for i in uniform_indices(len(candidates), args.max_frames)]
        union = sorted_unique(np.concatenate([c.voxel_keys for c in candidates]))
        covered = sorted_unique(np.concatenate([candidates[i].voxel_keys for i in picks]))
        voxels_selected, voxels_total = int(covered.size), int(union.size)
    else:
        result = greedy_max_coverage([c.voxel_keys for c in candidates], args.max_frames, ratio)
        picks = [int(i) for i in result.order]
        voxels_selected, voxels_total = int(result.covered), int(result.total)
    t_select = time.perf_counter() - t0
    chosen = [candidates[i] for i in sorted(picks)]
    return {
        "source": description,
        "strategy": args.strategy,
        "max_frames": args.max_frames,
        "coverage_ratio": ratio,
        "voxel_size_m": args.voxel_size,
        "num_input_frames": len(candidates),
        "dropped": dropped,
        "frames": [
            {"index": c.index, "name": c.name, "stamp_ns": c.stamp_ns, "T_world_cam": c.T_world_cam.tolist()}
            for c in chosen
        ],
        "coverage": voxels_selected / voxels_total if voxels_total else 0.0,
        "voxels_selected": voxels_selected,
        "voxels_total": voxels_total,
        "timing": {
            "read_s": t_read,
            "voxelize_s": t_vox,
            "select_s": t_select,
            "total_s": time.perf_counter() - t_start,
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report printed without --json."""
    ratio = result["coverage_ratio"]
    lines = [
        f"source: {result['source']}",
        f"input frames: {result['num_input_frames']}"
        + (f" (dropped {sum(result['dropped'].values())})" if result["dropped"] else ""),
        f"strategy: {result['strategy']}, budget {result['max_frames']} frames"
        + (f", stop at {ratio:.0%} coverage" if ratio is not None else ""),
        f"selected {len(result['frames'])} frames covering {result['coverage']:.1%} "
        f"({result['voxels_selected']} / {result['voxels_total']} voxels of {result['voxel_size_m']:g} m)",
        "",
        f"{'#':>3}  {'index':>5}  {'name':<12} {'stamp [s]':>18}  {'x [m]':>8} {'y [m]':>8} {'z [m]':>8}",
    ]
    for i, f in enumerate(result["frames"]):
        x, y, z = (row[3] for row in f["T_world_cam"][:3])
        lines.append(
            f"{i:>3}  {f['index']:>5}  {f['name'] or '-':<12} {f['stamp_ns'] / 1e9:>18.6f}  {x:>8.3f} {y:>8.3f} {z:>8.3f}"
        )
    t = result["timing"]
    lines += [
        "",
        f"timing: read {t['read_s']:.3f} s, voxelize {t['voxelize_s']:.3f} s, select {t['select_s'] * 1e3:.1f} ms, "
        f"total {t['total_s']:.3f} s",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = select_frames(args)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(format_table(result))
    return 0
