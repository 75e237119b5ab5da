"""Proposal recall on synthetic scenes, through the same path the engine uses.

For each seed: render RGB-D frames of `make_scene(seed)` (Open3D ray casting), ingest them
(`FrameIngestor`: 384x384 model crops, upstream back-projection), fuse the crops' world points
(`fuse_points`), estimate the scene frame, propose boxes in it and map them back to the world
frame, then match them against the scene's objects.json boxes.

Reported per scene: floor-standing objects, how many of them were observed (>= 100 fused points
strictly inside the box, above 3 cm), recall at IoU 0.25 / 0.5 over all and over observed objects,
the number of proposals (floor-extended twins included) and the fraction of them on an object
(IoU >= 0.25 with a floor-standing object; twins count when they or their own box do; a wall-panel proposal
with a door or window), the wall panels (door, window) found at IoU 0.25, the wall-panel proposals (and how many of
them match no door or window), the floor height error of the scene frame, and the time of fuse + scene frame +
proposals. Prints a markdown table.

`--rooms benchmark` takes the synthetic benchmark's rooms (`make_benchmark_scene`: repeated categories,
and in most rooms a box standing on a table, bed, sofa or cabinet) instead of `make_scene`'s; the
table then also reports the stacked boxes found at IoU 0.25 / 0.5.

    .venv/bin/python benchmarks/bench_proposals.py --seeds 0-9 [--rooms benchmark] [--no-split-stacked] [--no-wall-panels] [--noise STD] [--yaw DEG]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from video3dllm_core.geometry import pairwise_box_iou_3d, transform_box_hulls
from video3dllm_core.ingest import FrameIngestor
from video3dllm_core.proposals import ProposalConfig, fuse_points, propose_boxes
from video3dllm_core.scene import SceneFrame
from video3dllm_core.synthetic import make_scene, render_frames


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _turn(yaw_deg: float) -> np.ndarray:
    """4x4 rotation about z by yaw_deg (the room's pose in the world)."""
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T


def run_scene(seed: int, width: int, height: int, frames: int, stride: int, config: ProposalConfig,
              rooms: str = "scene", noise_std: float = 0.0, yaw_deg: float = 0.0) -> dict[str, float]:
    if rooms == "benchmark":
        from video3dllm_training.synthetic_benchmark import make_benchmark_scene

        spec = make_benchmark_scene(seed)
    else:
        spec = make_scene(seed)
    doc = spec.to_json()  # the objects.json document
    ingestor = FrameIngestor()
    T_world_room = _turn(yaw_deg)  # the walls leave the world's axes, and the scene frame's (it does not turn)
    ingested = [ingestor.ingest(dataclasses.replace(f, T_world_cam=T_world_room @ f.T_world_cam))
                for f in render_frames(spec, frames, width=width, height=height, noise_std=noise_std)]

    t0 = time.perf_counter()
    fused = fuse_points(ingested, stride=stride)
    t1 = time.perf_counter()
    scene_frame = SceneFrame.estimate(fused.points)
    t2 = time.perf_counter()
    props = propose_boxes(scene_frame.to_scene(fused.points), fused.colors, config)
    t3 = time.perf_counter()
    centers, sizes = scene_frame.boxes_to_world(props.centers, props.sizes)
    pred = np.hstack([centers, sizes]) if len(props) else np.zeros((0, 6))

    def boxes(placement: str) -> np.ndarray:
        """objects.json boxes, turned with the room: the axis-aligned box around each turned box."""
        rows = np.asarray([o["box"]["center"] + o["box"]["size"] for o in doc["objects"] if o["placement"] == placement],
                          dtype=np.float64).reshape(-1, 6)
        return np.hstack(transform_box_hulls(T_world_room, rows[:, :3], rows[:, 3:]))

    def best_iou(gt: np.ndarray) -> np.ndarray:
        if len(gt) == 0:
            return np.zeros(0)
        if len(pred) == 0:
            return np.zeros(len(gt))
        return pairwise_box_iou_3d(gt, pred).max(axis=1)

    floor_gt, wall_gt = boxes("floor"), boxes("wall")
    best = best_iou(floor_gt)
    stacked = floor_gt[:, 2] - floor_gt[:, 5] / 2 > 0.05  # "floor" objects whose bottom is on something else
    if len(pred) and len(floor_gt):
        on_object = pairwise_box_iou_3d(pred, floor_gt).max(axis=1) >= 0.25
        if props.wall_panel is not None and props.wall_panel.any() and len(wall_gt):  # a panel is on a door/window
            on_object[props.wall_panel] = pairwise_box_iou_3d(pred[props.wall_panel], wall_gt).max(axis=1) >= 0.25
        if props.floor_extended is not None and props.floor_extended.any():  # a twin counts with its own box
            own = ~props.floor_extended
            for k in np.flatnonzero(props.floor_extended):
                twin_of = own & np.all(np.isclose(pred[:, [0, 1, 3, 4]], pred[k, [0, 1, 3, 4]]), axis=1)
                on_object[k] |= bool(on_object[twin_of].any())
    else:
        on_object = np.zeros(len(pred), dtype=bool)
    pts = fused.points
    lo, hi = floor_gt[:, :3] - floor_gt[:, 3:] / 2, floor_gt[:, :3] + floor_gt[:, 3:] / 2
    seen = np.array([np.sum(np.all((pts > lo[k]) & (pts < hi[k]), axis=1) & (pts[:, 2] > 0.03)) for k in range(len(floor_gt))])
    observed = seen >= 100
    floor_err = float(scene_frame.to_world(np.zeros(3))[2])  # true floor: world z = 0
    return {
        "seed": seed,
        "objects": len(floor_gt),
        "observed": int(observed.sum()),
        "r25": float(np.mean(best >= 0.25)),
        "r50": float(np.mean(best >= 0.5)),
        "r25_obs": float(np.mean(best[observed] >= 0.25)) if observed.any() else float("nan"),
        "r50_obs": float(np.mean(best[observed] >= 0.5)) if observed.any() else float("nan"),
        "stacked": int(stacked.sum()),
        "stacked_r25": int(np.sum(best[stacked] >= 0.25)),
        "stacked_r50": int(np.sum(best[stacked] >= 0.5)),
        "proposals": len(props),
        "on_object": int(on_object.sum()),
        "walls_found": int(np.sum(best_iou(wall_gt) >= 0.25)),
        "walls": len(wall_gt),
        "panels": int(props.wall_panel.sum()) if props.wall_panel is not None else 0,
        "panels_off": int(np.sum(props.wall_panel & ~on_object)) if props.wall_panel is not None else 0,
        "points": len(pts),
        "floor_err_mm": 1000 * floor_err,
        "t_fuse_ms": 1000 * (t1 - t0),
        "t_frame_ms": 1000 * (t2 - t1),
        "t_propose_ms": 1000 * (t3 - t2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9", help="seeds, e.g. 0-9 or 1,4,7 (default 0-9)")
    parser.add_argument("--width", type=int, default=320, help="depth/colour width (default 320)")
    parser.add_argument("--height", type=int, default=240, help="depth/colour height (default 240)")
    parser.add_argument("--frames", type=int, default=32, help="frames per scene (default 32)")
    parser.add_argument("--stride", type=int, default=4, help="fuse_points stride on the 384 crop (default 4)")
    parser.add_argument("--voxel", type=float, default=ProposalConfig.voxel_m, help="proposal voxel (m)")
    parser.add_argument("--no-twins", action="store_true", help="disable floor-extended twin proposals")
    parser.add_argument("--keep-fragments", action="store_true", help="keep clusters nested in a much larger one")
    parser.add_argument("--no-split-stacked", action="store_true", help="do not split supports from what stands on them")
    parser.add_argument("--no-wall-panels", action="store_true", help="do not propose coloured wall panels (doors, windows)")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian colour noise of the renders (intensity std, 0-255)")
    parser.add_argument("--yaw", type=float, default=0.0,
                        help="turn each room by this many degrees about z in the world (walls oblique to the axes; "
                             "truth: the axis-aligned box around each turned box)")
    parser.add_argument("--rooms", choices=("scene", "benchmark"), default="scene",
                        help="make_scene's rooms (default) or the synthetic benchmark's (stacked boxes)")
    args = parser.parse_args()
    config = ProposalConfig(voxel_m=args.voxel, add_floor_extended=not args.no_twins,
                            drop_nested_fragments=not args.keep_fragments, split_stacked=not args.no_split_stacked,
                            propose_wall_panels=not args.no_wall_panels)

    rows = [run_scene(s, args.width, args.height, args.frames, args.stride, config, args.rooms, args.noise, args.yaw)
            for s in _seeds(args.seeds)]
    print(
        f"Synthetic {'benchmark rooms' if args.rooms == 'benchmark' else 'scenes'}, {args.width}x{args.height}, "
        f"{args.frames} frames, stride {args.stride}, voxel {args.voxel} m, twins {'off' if args.no_twins else 'on'}, "
        f"nested fragments {'kept' if args.keep_fragments else 'dropped'}, "
        f"stacked {'not split' if args.no_split_stacked else 'split'}, wall panels {'off' if args.no_wall_panels else 'on'}, "
        f"colour noise {args.noise:g}, rooms turned {args.yaw:g} deg\n"
    )
    print("| seed | objects (observed) | R@0.25 | R@0.5 | R@0.25 obs. | R@0.5 obs. | stacked @0.25 / @0.5 | proposals | on an object | door/window @0.25 | panels (off one) | points | floor err (mm) | fuse + frame + propose (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['objects']} ({r['observed']}) | {r['r25']:.2f} | {r['r50']:.2f} | {r['r25_obs']:.2f} | "
            f"{r['r50_obs']:.2f} | {r['stacked_r25']} / {r['stacked_r50']} of {r['stacked']} | {r['proposals']} | {r['on_object'] / max(1, r['proposals']):.2f} | {r['walls_found']}/{r['walls']} | {r['panels']} ({r['panels_off']}) | {r['points']:,} | "
            f"{r['floor_err_mm']:+.1f} | {r['t_fuse_ms']:.0f} + {r['t_frame_ms']:.0f} + {r['t_propose_ms']:.0f} |"
        )
    n_obj = sum(r["objects"] for r in rows)
    n_obs = sum(r["observed"] for r in rows)

    def pooled(key: str, weight: str) -> float:
        return sum(r[key] * r[weight] for r in rows) / max(1, sum(r[weight] for r in rows))

    print(
        f"| **all** | {n_obj} ({n_obs}) | **{pooled('r25', 'objects'):.3f}** | **{pooled('r50', 'objects'):.3f}** | "
        f"**{pooled('r25_obs', 'observed'):.3f}** | **{pooled('r50_obs', 'observed'):.3f}** | "
        f"{sum(r['stacked_r25'] for r in rows)} / {sum(r['stacked_r50'] for r in rows)} of {sum(r['stacked'] for r in rows)} | "
        f"{np.mean([r['proposals'] for r in rows]):.1f} | "
        f"**{sum(r['on_object'] for r in rows) / max(1, sum(r['proposals'] for r in rows)):.3f}** | {sum(r['walls_found'] for r in rows)}/{sum(r['walls'] for r in rows)} | "
        f"{sum(r['panels'] for r in rows)} ({sum(r['panels_off'] for r in rows)}) | "
        f"{np.mean([r['points'] for r in rows]):,.0f} | {np.mean([abs(r['floor_err_mm']) for r in rows]):.1f} | "
        f"{np.mean([r['t_fuse_ms'] for r in rows]):.0f} + {np.mean([r['t_frame_ms'] for r in rows]):.0f} + "
        f"{np.mean([r['t_propose_ms'] for r in rows]):.0f} |"
    )
    print("\nRecall pooled over objects, on-object fraction over proposals; proposals, points, |floor err| and times are means per scene.")


if __name__ == "__main__":
    main()
