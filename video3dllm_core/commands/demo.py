"""`video3dllm demo`: a synthetic room streamed through the scene engine, questioned, and reported.

Renders a seeded synthetic room (`video3dllm_core.synthetic`: exact depth, poses and object
boxes), places it in a robot-like `map` frame 20 m from the origin (a pure translation, so the
axis-aligned ground-truth boxes stay axis-aligned), streams the frames one by one into
`SceneEngine` exactly as `video3dllm replay` does with a recording, and asks one question of
every task type built from the scene's own objects (ground, ground_multi, qa, situated_qa,
caption with the target at an object's centre, and an "auto" one). One grounding question is
asked half-way through the stream as well, to show what the engine knows at that moment.

Each answer is printed with its boxes next to the ground-truth box (and their 3D IoU) or the
expected text, followed by the keyframe selection; the replay report (answers.jsonl,
summary.json, report.html + PNGs) goes to --out.

With the embedded default model (no --model) the answers are meaningless: that model is not
trained. The demo then shows the machinery (streaming, keyframes, scene frame, proposals,
grounding head, timings), not accuracy; pass a trained checkpoint with --model for real answers.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

HELP = "render a synthetic room, stream it through the scene engine, ask questions, write a report"
# Where the synthetic room sits in the robot's map: far from the origin, like a real map.
T_MAP_WORLD_XYZ = (20.0, -12.0, 0.0)
UNTRAINED_NOTE = (
    "NOTE: the embedded default model is not trained (no trained checkpoint ships yet), so its answers "
    "and boxes are meaningless. The demo shows the pipeline, keyframes and timings; pass --model PATH "
    "with a trained Video-3D LLM checkpoint for real answers."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--out", default="video3dllm_demo_out", help="output directory (default ./video3dllm_demo_out)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--frames", type=int, default=40, help="frames along the camera loop (default 40)")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height (default 480)")


def _name(obj: Any) -> str:
    return f"{obj.colour} {obj.label}"


def _truth(obj: Any, shift: np.ndarray) -> dict[str, Any]:
    return {
        "label": _name(obj),
        "center_xyz": [float(v) for v in np.asarray(obj.center) + shift],
        "size_xyz": [float(v) for v in obj.size],
    }


def demo_queries(objects: list[Any], shift: np.ndarray, mid_s: float) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """Questions of every task built from the scene's objects, and the truth of each (by index).

    Truth: {"boxes": [...]} for grounding and captioning (the object meant), {"text": ...} for
    the expected answer words.
    """
    from video3dllm_core.queries import QuerySpec

    a, b, c = objects[0], objects[1 % len(objects)], objects[2 % len(objects)]
    target = tuple(float(v) for v in np.asarray(c.center) + shift)
    specs = [
        QuerySpec(0, f"Where is the {_name(a)}?", "ground", at_s=mid_s),
        QuerySpec(1, f"Where is the {_name(a)}?", "ground"),
        QuerySpec(2, f"Find every {b.colour} object in the room.", "ground_multi"),
        QuerySpec(3, f"What color is the {c.label}?", "qa"),
        QuerySpec(4, f"What color is the {b.label}?", "situated_qa", situation=f"I am standing next to the {_name(a)}."),
        QuerySpec(5, "Describe the object at this location.", "caption", target_xyz=target),  # type: ignore[arg-type]
        QuerySpec(6, f"Where is the {c.label}?", "auto"),
    ]
    truth: dict[int, dict[str, Any]] = {
        0: {"boxes": [_truth(a, shift)]},
        1: {"boxes": [_truth(a, shift)]},
        2: {"boxes": [_truth(o, shift) for o in objects if o.colour == b.colour]},
        3: {"text": c.colour},
        4: {"text": b.colour},
        5: {"boxes": [_truth(c, shift)], "text": _name(c)},
        6: {"boxes": [_truth(c, shift)]},
    }
    return specs, truth


def add_truth(row: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The answers.jsonl row with `ground_truth` boxes, `expected_text` and each object's best IoU."""
    from video3dllm_core.geometry import box_iou_3d

    row = dict(row)
    boxes = truth.get("boxes", [])
    row["ground_truth"] = boxes
    row["expected_text"] = truth.get("text")
    if boxes:
        gt = np.array([b["center_xyz"] + b["size_xyz"] for b in boxes], dtype=np.float64)
        objects = []
        for obj in row["objects"]:
            pred = np.array(obj["center_xyz"] + obj["size_xyz"], dtype=np.float64)
            objects.append({**obj, "iou": float(box_iou_3d(pred[None], gt).max())})
        row["objects"] = objects
    return row


def _print_row(row: dict[str, Any]) -> None:
    from video3dllm_core.commands.replay import print_answer

    print_answer(row)
    for gt in row.get("ground_truth") or []:
        c, s = gt["center_xyz"], gt["size_xyz"]
        print(f"   truth: {gt['label']} centre ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) size ({s[0]:.2f}, {s[1]:.2f}, {s[2]:.2f})")
    if row.get("expected_text"):
        print(f"   expected words: {row['expected_text']!r}")


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.commands.replay import load_engine
    from video3dllm_core.replay import build_summary, replay, write_outputs
    from video3dllm_core.synthetic import make_scene, render_frames

    if args.frames < 2:
        raise ValueError(f"--frames must be at least 2, got {args.frames}")
    if args.model is None:
        print(UNTRAINED_NOTE)
        print()
    t_start = time.perf_counter()
    spec = make_scene(args.seed)
    shift = np.asarray(T_MAP_WORLD_XYZ, dtype=np.float64)
    T_map_world = np.eye(4)
    T_map_world[:3, 3] = shift
    frames = [
        dataclasses.replace(f, T_world_cam=T_map_world @ f.T_world_cam)
        for f in render_frames(spec, args.frames, args.width, args.height)
    ]
    t_render = time.perf_counter() - t_start
    objects = [o for o in spec.objects if o.placement == "floor"]
    lx, ly, lz = spec.room_size
    print(
        f"scene seed {args.seed}: {lx:.1f} x {ly:.1f} x {lz:.1f} m room at map ({shift[0]:.0f}, {shift[1]:.0f}) with "
        + ", ".join(_name(o) for o in objects)
    )
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {t_render:.2f} s")

    t0 = time.perf_counter()
    engine = load_engine(args, args.model)
    t_load = time.perf_counter() - t0
    print(f"loaded the {'embedded default' if args.model is None else args.model} model in {t_load:.2f} s")
    duration_s = (frames[-1].stamp_ns - frames[0].stamp_ns) / 1e9
    queries, truth = demo_queries(objects, shift, mid_s=round(duration_s / 2, 3))
    result = replay(frames, engine, queries, rate="max")
    summary = build_summary(result, engine, f"synthetic scene seed {args.seed} ({len(frames)} frames)", {}, "map")
    rows = [add_truth(r.to_dict(), truth[r.spec.index]) for r in result.records]
    print()
    for row in rows:
        _print_row(row)
    print()

    names = {int(f.stamp_ns): f.name for f in frames}
    stats = engine.stats()
    keyframes = engine.keyframe_poses()
    cfg = getattr(engine, "config", None)
    print(
        f"keyframes: {len(keyframes)} of {stats.pool_size} pooled frames "
        f"(strategy {getattr(cfg, 'strategy', '?')}, budget {getattr(cfg, 'max_frames', '?')}), "
        f"coverage {stats.last_coverage:.1%} of {stats.voxels_total} voxels: "
        + " ".join(str(names.get(int(s), s)) for s, _ in keyframes)
    )
    from video3dllm_core.commands.replay import print_summary

    print_summary(summary)
    notes = [UNTRAINED_NOTE] if args.model is None else []
    files = write_outputs(args.out, result, engine, summary, rows, title=f"video3dllm demo: synthetic scene seed {args.seed}",
                          notes=notes)
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - t_start:.1f} s")
    return 0
