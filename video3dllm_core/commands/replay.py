"""`video3dllm replay SOURCE --queries FILE`: the scene engine on a recording, with a report.

Streams a rosbag2 (MCAP or sqlite3) or a posed-images directory through `SceneEngine`
(`video3dllm_core.replay`), asks the questions of the query file (`video3dllm_core.queries`) at
their bag times, and writes into --out:

    answers.jsonl   one JSON object per query (Answer.to_dict() + index, at_s, asked_at_s, ...)
    summary.json    frames read / dropped by reason, ingest rate, latency percentiles per stage,
                    peak memory, coverage over time
    report.html     + birdseye.png, coverage.png, latency.png

--markers-bag OUT also writes each answer as the visualization_msgs/MarkerArray the ROS node
publishes for it (grounded boxes, labels) into a new rosbag2 (MCAP) at OUT, in the world frame,
stamped at the query times (play it next to the recording in RViz).

Exit status: 0 when at least one query was answered; 1 when every query failed (each failure
is in answers.jsonl with its error); 2 for bad input (unreadable or empty bag, missing topic,
malformed query file, no usable frame), with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from video3dllm_core.commands.source_args import add_source_arguments, source_options

ANSWER_PRINT_CHARS = 160  # longer answers are cut on the terminal (answers.jsonl has them whole)
HELP = "replay a rosbag2 / posed-images recording through the scene engine, ask questions, write a report"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from video3dllm_core.keyframes import PRESETS

    p = subparsers.add_parser("replay", help=HELP, description=HELP)
    p.add_argument("source", help="rosbag2 directory, .mcap/.db3 file, or posed-images directory")
    p.add_argument("--queries", required=True, help="YAML or JSON list of {question, task, target, situation, at_s}")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--out", default="video3dllm_replay_out", help="output directory (default ./video3dllm_replay_out)")
    p.add_argument(
        "--rate",
        choices=("max", "recorded"),
        default="max",
        help="max: as fast as possible, queries asked in stream order (default); recorded: real time, "
        "queries in a worker thread while frames keep arriving",
    )
    p.add_argument("--strategy", choices=sorted(PRESETS), default=None, help="keyframe strategy (default mc-ratio95)")
    p.add_argument("--max-frames", type=int, default=None, help="keyframe budget per query (default 32)")
    p.add_argument("--voxel-size", type=float, default=None, help="coverage voxel size in metres (default 0.1)")
    add_scene_yaw_argument(p)
    add_caption_decoding_argument(p)
    p.add_argument("--markers-bag", default=None, metavar="OUT", help="also write the answers as a MarkerArray rosbag2 (MCAP)")
    add_source_arguments(p, world_frame_help="TF frame of the poses and outputs (default map)")


def add_scene_yaw_argument(p: argparse.ArgumentParser) -> None:
    """--scene-yaw: EngineConfig.scene_yaw (shared by replay and demo)."""
    p.add_argument("--scene-yaw", choices=("walls", "world"), default=None,
                   help="scene frame turned so the room's walls run along x/y ('walls', the default) or kept on "
                        "the world's axes ('world')")


def add_caption_decoding_argument(p: argparse.ArgumentParser) -> None:
    """--caption-decoding: EngineConfig.caption_decoding (shared by replay and demo)."""
    from video3dllm_core.answer import CAPTION_DECODINGS

    p.add_argument("--caption-decoding", choices=CAPTION_DECODINGS, default=None,
                   help="captions as the checkpoint's generation_config.json asks ('checkpoint', the default: greedy "
                        "for upstream checkpoints, 'listener' for the embedded model), 'greedy', or 'listener' (the "
                        "grounding head picks among the decoder's plausible words; docs/engine.md, \"Captions\")")


def engine_config(args: argparse.Namespace, model: str | None) -> Any:
    """EngineConfig from the command-line options (only those given override the defaults)."""
    from video3dllm_core.engine import EngineConfig

    overrides: dict[str, Any] = {"model_path": model}
    if getattr(args, "strategy", None) is not None:
        overrides["strategy"] = args.strategy
    if getattr(args, "max_frames", None) is not None:
        if args.max_frames < 1:
            raise ValueError(f"--max-frames must be at least 1, got {args.max_frames}")
        overrides["max_frames"] = args.max_frames
    if getattr(args, "voxel_size", None) is not None:
        if not args.voxel_size > 0:
            raise ValueError(f"--voxel-size must be a positive number of metres, got {args.voxel_size}")
        overrides["voxel_size_m"] = args.voxel_size
    if getattr(args, "scene_yaw", None) is not None:
        overrides["scene_yaw"] = args.scene_yaw
    if getattr(args, "caption_decoding", None) is not None:
        overrides["caption_decoding"] = args.caption_decoding
    return EngineConfig(**overrides)


def load_engine(args: argparse.Namespace, model: str | None) -> Any:
    """SceneEngine.load with the command's config; a missing model directory is a clear error."""
    from video3dllm_core.engine import SceneEngine

    if model is not None and not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model} is not a directory; pass a checkpoint directory (config.json, weights)")
    return SceneEngine.load(engine_config(args, model))


def print_answer(row: dict[str, Any], file: Any = None) -> None:
    """One answer as a few human-readable lines."""
    when = "after the last frame" if row.get("at_s") is None else f"at {row['asked_at_s']:.2f} s"
    print(f"Q{row['index']} [{row['task']}] {when}, {row['frames_seen']} frames: {row['question']}", file=file)
    if row.get("situation"):
        print(f"   situation: {row['situation']}", file=file)
    if row.get("target") is not None:
        print(f"   target: ({', '.join(f'{v:.2f}' for v in row['target'])})", file=file)
    if row.get("error"):
        print(f"   error: {row['error']}", file=file)
        return
    text = str(row["text"])
    print(f"   answer: {text[:ANSWER_PRINT_CHARS]!r}" + (" ..." if len(text) > ANSWER_PRINT_CHARS else ""), file=file)
    from video3dllm_core.report import correctness_mark

    for obj in row.get("objects") or []:
        c, s = obj["center_xyz"], obj["size_xyz"]
        print(
            f"   box: centre ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) size ({s[0]:.2f}, {s[1]:.2f}, {s[2]:.2f}) "
            f"score {obj['score']:.2f}"
            + (f" IoU with truth {obj['iou']:.2f}{correctness_mark(obj)}" if obj.get("iou") is not None else ""),
            file=file,
        )
    t = row["timings"]
    fused = row.get("proposal_stamps_ns") or ()
    print(
        f"   {len(row['keyframe_stamps_ns'])} keyframes"
        + (f" (candidates from {len(fused)} frames)" if fused else "")
        + f", coverage {row['coverage']:.1%}, "
        f"{t['total_s'] * 1e3:.0f} ms (vision {t['vision_s'] * 1e3:.0f}, prefill {t['prefill_s'] * 1e3:.0f}, "
        f"decode {t['decode_s'] * 1e3:.0f}" + (" by the speaker-listener search" if row.get("decoding") == "listener" else "")
        + ")",
        file=file,
    )


def print_summary(summary: dict[str, Any], file: Any = None) -> None:
    f, ing, mem = summary["frames"], summary["ingest"], summary["memory"]
    dropped = {**f["dropped_by_source"], **{f"engine:{k}": v for k, v in f["dropped_by_engine"].items()}}
    drop_text = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none"
    print(
        f"{f['read']} frames read ({f['added']} added, dropped {drop_text}) over {f['duration_s']:.1f} s of recording; "
        f"ingest {ing['rate_fps']:.1f} frames/s, stream {ing['stream_rate_fps']:.1f} frames/s"
        + (f", max lag {ing['max_lag_s']:.2f} s" if ing.get("max_lag_s") is not None else ""),
        file=file,
    )
    for stage, v in summary["latency_s"].items():
        print(f"   {stage:<13} p50 {v['p50'] * 1e3:8.1f} ms  p90 {v['p90'] * 1e3:8.1f} ms  max {v['max'] * 1e3:8.1f} ms",
              file=file)
    print(f"peak RSS {mem['max_rss_bytes'] / 2**20:.0f} MiB, engine pool {mem['pool_bytes'] / 2**20:.1f} MiB", file=file)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from video3dllm_core.queries import load_queries
    from video3dllm_core.replay import build_summary, replay, write_outputs
    from video3dllm_core.report import write_markers_bag
    from video3dllm_core.sources import open_source

    queries = load_queries(args.queries)  # cheapest check first: a typo should not cost a model load
    markers = Path(args.markers_bag) if args.markers_bag else None
    if markers is not None and markers.exists():
        raise FileExistsError(f"--markers-bag {markers} already exists; rosbag2 writers never overwrite, choose a new path")
    with open_source(args.source, **source_options(args)) as source:  # bag/topic errors before the model loads
        engine = load_engine(args, args.model)
        total = len(source) if hasattr(source, "__len__") else None
        if total is None and hasattr(source, "topics") and hasattr(source, "rgb_topic"):
            total = source.topics.get(source.rgb_topic, (None, None))[1]
        with tqdm(total=total, desc="replaying", unit="frame", file=sys.stderr, leave=False) as bar:
            result = replay(source, engine, queries, rate=args.rate, on_frame=lambda _: bar.update(1))
        description = source.describe()
        source_dropped = dict(source.stats.dropped)
        world_frame = str(getattr(source, "world_frame", "world"))
    if result.frames_added == 0:
        reasons = {**source_dropped, **{f"engine:{k}": v for k, v in engine.stats().frames_dropped.items()}}
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "the source yielded no frame"
        raise ValueError(f"no usable frame in {args.source} ({why}); nothing to answer questions about")

    summary = build_summary(result, engine, description, source_dropped, world_frame)
    rows = [r.to_dict() for r in result.records]
    files = write_outputs(args.out, result, engine, summary, rows, title=f"video3dllm replay: {args.source}")
    for row in rows:
        print_answer(row)
    print_summary(summary)
    if markers is not None:
        n = write_markers_bag(markers, rows, world_frame)
        print(f"wrote {n} MarkerArray message(s) to {markers}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    if summary["queries"]["ok"] == 0:
        print(f"video3dllm replay: all {len(rows)} queries failed (errors in {files['answers']})", file=sys.stderr)
        return 1
    return 0
