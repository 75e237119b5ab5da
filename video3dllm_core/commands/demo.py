"""`video3dllm demo`: a synthetic room streamed through ingest + keyframe selection, with a picture.

Renders a seeded synthetic scene (`video3dllm_core.synthetic`), feeds the frames one by one to
the online path (`FrameIngestor` -> `CoverageIndex`, exactly what the ROS node does with a live
stream), then asks the index for keyframes with every upstream strategy (uniform, mc,
mc-ratio90, mc-ratio95) and prints frames, coverage and timing per strategy. Writes to --out:

    birdseye.png     top view of the fused scene points, object boxes, the camera path and,
                     per strategy, the selected keyframes with their viewing directions
    selection.json   the selections (frame names, stamps, coverage, timing)

A later issue makes the demo answer questions with the embedded default model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "render a synthetic scene, stream it through ingest + keyframe selection, plot the result"
STRATEGIES = ("uniform", "mc", "mc-ratio90", "mc-ratio95")
POINT_STRIDE_PX = 8  # pixels between plotted points (each axis)
MAX_PLOT_POINTS = 60_000
FLOOR_CUT_M = 0.03  # points below this height (the floor) are left out of the top view


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--out", default="video3dllm_demo_out", help="output directory (default ./video3dllm_demo_out)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--frames", type=int, default=60, help="frames along the camera loop (default 60)")
    p.add_argument("--max-frames", type=int, default=32, help="keyframe budget (default 32, as upstream)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height (default 480)")


def _scene_points(frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """World points and colours of every POINT_STRIDE_PX-th pixel with valid depth."""
    from video3dllm_core.geometry import apply_transform, backproject_pixels

    s = POINT_STRIDE_PX
    v, u = np.mgrid[0 : frame.depth_m.shape[0] : s, 0 : frame.depth_m.shape[1] : s]
    z = frame.depth_m[v, u]
    valid = np.isfinite(z) & (z > 0)
    u, v, z = u[valid], v[valid], z[valid]
    x, y, z = backproject_pixels(u, v, z, frame.K_depth)
    points = apply_transform(frame.T_world_cam, np.stack([x, y, z], axis=-1))
    # colour may be larger than depth (same field of view): sample it at the scaled pixel
    sy = frame.rgb.shape[0] / frame.depth_m.shape[0]
    sx = frame.rgb.shape[1] / frame.depth_m.shape[1]
    colours = frame.rgb[(v * sy).astype(int), (u * sx).astype(int)]
    return points, colours


def plot_birdseye(
    path: Path, points: np.ndarray, colours: np.ndarray, poses: np.ndarray, names: list[str | None],
    selections: dict[str, Any], objects: list[Any], title: str,
) -> None:
    """One top-view panel per strategy: scene points, object footprints, camera path, keyframes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(12, 11), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    positions = poses[:, :3, 3]
    forward = poses[:, :3, 2]  # optical z axis in the world
    extent = np.concatenate([points[:, :2], positions[:, :2]])
    lo, hi = extent.min(axis=0) - 0.3, extent.max(axis=0) + 0.3
    index_of = {n: i for i, n in enumerate(names)}
    for ax, (strategy, sel) in zip(axes, selections.items()):
        ax.scatter(points[:, 0], points[:, 1], c=colours / 255.0, s=1.0, linewidths=0, rasterized=True)
        for obj in objects:
            (cx, cy, _), (sx, sy, _) = obj.center, obj.size
            ax.add_patch(Rectangle((cx - sx / 2, cy - sy / 2), sx, sy, fill=False, lw=0.8, ec="black"))
            ax.text(cx, cy, f"{obj.colour} {obj.label}", fontsize=6, ha="center", va="center")
        ax.plot(positions[:, 0], positions[:, 1], "-", color="0.6", lw=0.8)
        ax.plot(positions[:, 0], positions[:, 1], ".", color="0.45", ms=3)
        picked = [index_of[f.name] for f in sel.frames]
        ax.quiver(
            positions[picked, 0], positions[picked, 1], forward[picked, 0], forward[picked, 1],
            color="red", angles="xy", scale_units="xy", scale=2.5, width=0.004,
        )
        ax.plot(positions[picked, 0], positions[picked, 1], "o", color="red", ms=4)
        ax.set_title(f"{strategy}: {len(sel)} keyframes, coverage {sel.coverage:.1%}", fontsize=10)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.ingest import FrameIngestor, IngestConfig
    from video3dllm_core.keyframes import CoverageIndex
    from video3dllm_core.synthetic import make_scene, render_frames

    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = make_scene(args.seed)
    frames = render_frames(spec, args.frames, args.width, args.height)
    t_render = time.perf_counter() - t0

    ingestor = FrameIngestor(IngestConfig())
    index = CoverageIndex(capacity=max(256, args.frames))
    point_chunks, colour_chunks = [], []
    t0 = time.perf_counter()
    for frame in frames:  # the online path: one frame at a time, raw images dropped after ingest
        index.add(ingestor.ingest(frame))
        pts, cols = _scene_points(frame)
        point_chunks.append(pts)
        colour_chunks.append(cols)
    t_ingest = time.perf_counter() - t0

    selections = {s: index.select(s, max_frames=args.max_frames) for s in STRATEGIES}
    labels = ", ".join(f"{o.colour} {o.label}" for o in spec.objects)
    lx, ly, lz = spec.room_size
    print(f"scene seed {args.seed}: {lx:.1f} x {ly:.1f} x {lz:.1f} m room with {labels}")
    print(
        f"{len(frames)} frames {args.width}x{args.height}: rendered in {t_render:.2f} s, ingested in {t_ingest:.2f} s "
        f"({t_ingest / len(frames) * 1e3:.1f} ms/frame); {index.voxels_total} voxels of "
        f"{ingestor.config.voxel_size_m:g} m seen"
    )
    print()
    print(f"{'strategy':<11} {'frames':>6} {'coverage':>9} {'voxels':>13} {'select':>9}  keyframes")
    for strategy, sel in selections.items():
        names = " ".join(f.name or "?" for f in sel.frames)
        print(
            f"{strategy:<11} {len(sel):>6} {sel.coverage:>9.1%} {sel.voxels_selected:>6}/{sel.voxels_total:<6} "
            f"{sel.timing_ms:>7.2f} ms  {names}"
        )

    points = np.concatenate(point_chunks)
    colours = np.concatenate(colour_chunks)
    above_floor = points[:, 2] > FLOOR_CUT_M  # the floor would hide everything in a top view
    points, colours = points[above_floor], colours[above_floor]
    if len(points) > MAX_PLOT_POINTS:
        keep = np.random.default_rng(0).choice(len(points), MAX_PLOT_POINTS, replace=False)
        points, colours = points[keep], colours[keep]
    order = np.argsort(points[:, 2])  # higher points drawn last, as seen from above
    points, colours = points[order], colours[order]
    poses = np.stack([f.T_world_cam for f in frames])
    png = out / "birdseye.png"
    t0 = time.perf_counter()
    plot_birdseye(
        png, points, colours, poses, [f.name for f in frames], selections, list(spec.objects),
        f"video3dllm demo: synthetic scene seed {args.seed}, {len(frames)} frames",
    )
    t_plot = time.perf_counter() - t0
    summary = {
        "seed": args.seed,
        "num_frames": len(frames),
        "voxels_total": index.voxels_total,
        "timing_s": {"render": t_render, "ingest": t_ingest, "plot": t_plot},
        "selections": {
            s: {
                "frames": [f.name for f in sel.frames],
                "stamps_ns": [int(f.stamp_ns) for f in sel.frames],
                "coverage": sel.coverage,
                "voxels_selected": sel.voxels_selected,
                "voxels_total": sel.voxels_total,
                "select_ms": sel.timing_ms,
            }
            for s, sel in selections.items()
        },
    }
    (out / "selection.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"wrote {png} and {out / 'selection.json'}")
    return 0
