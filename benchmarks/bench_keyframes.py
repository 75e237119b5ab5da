"""Benchmark: per-frame ingestion and keyframe selection against a set-based greedy baseline.

Inputs are rendered analytically: a 8 x 6 x 3 m room with box furniture, seen by a 640x480 depth
camera (ScanNet-like intrinsics) moving along a jittered loop, depth quantised to millimetres.
Everything is measured in one process; the baseline for selection is the textbook greedy on
Python sets (what upstream's max_coverage_sampling.py does, minus its per-iteration set rebuilds).

    .venv/bin/python benchmarks/bench_keyframes.py            # prints a markdown table
    .venv/bin/python benchmarks/bench_keyframes.py --quick    # smaller run for a smoke check
"""

from __future__ import annotations

import argparse
import os

# One core, as the targets are stated: keep BLAS from spinning worker threads (set before numpy).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from video3dllm_core.frame import PosedFrame  # noqa: E402
from video3dllm_core.geometry import pack_voxel_indices  # noqa: E402
from video3dllm_core.ingest import (  # noqa: E402
    FrameIngestor,
    IngestConfig,
    IngestedFrame,
    coverage_voxel_keys,
    crop_geometry,
    model_crop,
    patch_world_coords,
    sample_crop_depth,
)
from video3dllm_core.keyframes import CoverageIndex, greedy_max_coverage  # noqa: E402

W, H = 640, 480
K = np.array([[577.6, 0.0, 319.5], [0.0, 578.7, 239.5], [0.0, 0.0, 1.0]])
ROOM_LO, ROOM_HI = np.array([0.0, 0.0, 0.0]), np.array([8.0, 6.0, 3.0])
FURNITURE = np.array(  # center xyz, size xyz
    [
        [1.0, 1.0, 0.4, 1.6, 0.8, 0.8],
        [4.0, 3.0, 0.375, 2.0, 1.0, 0.75],
        [7.2, 4.5, 1.0, 0.6, 2.0, 2.0],
        [2.5, 5.4, 0.5, 1.2, 0.6, 1.0],
        [6.0, 1.0, 0.25, 0.8, 0.8, 0.5],
        [0.4, 3.5, 0.9, 0.8, 1.4, 1.8],
    ]
)


def camera_pose(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """T_world_cam for an optical camera at `position` looking along (yaw, pitch), z up world."""
    f = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, d, f], axis=1)
    T[:3, 3] = position
    return T


def render_depth(T: np.ndarray, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """z-depth (metres, float32, mm-quantised) at pixel columns us x rows vs by ray casting."""
    uu, vv = np.meshgrid(us.astype(np.float64), vs.astype(np.float64))
    dirs_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1)
    D = dirs_cam @ T[:3, :3].T  # world direction per unit z-depth
    o = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / D
        t_exit = np.min(np.maximum((ROOM_LO - o) * inv, (ROOM_HI - o) * inv), axis=-1)
        t = t_exit
        for box in FURNITURE:
            lo, hi = box[:3] - box[3:] / 2, box[:3] + box[3:] / 2
            t1, t2 = (lo - o) * inv, (hi - o) * inv
            near = np.max(np.minimum(t1, t2), axis=-1)
            far = np.min(np.maximum(t1, t2), axis=-1)
            hit = (near <= far) & (near > 0)
            t = np.where(hit & (near < t), near, t)
    return (np.round(t * 1000.0) / 1000.0).astype(np.float32)


def trajectory(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n poses on a jittered loop (3 laps) around the room centre, looking around."""
    poses = []
    for i in range(n):
        a = 2 * np.pi * 3 * i / n
        pos = np.array([4.0 + 2.6 * np.cos(a), 3.0 + 1.8 * np.sin(a), 1.4]) + rng.normal(0, 0.1, 3)
        yaw = a + np.pi / 2 + rng.normal(0, 0.6) + (np.pi if i % 3 == 0 else 0.0)
        pitch = -0.35 + rng.normal(0, 0.15)
        poses.append(camera_pose(pos, yaw, pitch))
    return poses


def shade(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible colour image: depth-shaded grey with colour noise."""
    g = np.clip(255 - depth * 50, 0, 255)
    rgb = np.stack([g, g * 0.9, g * 0.8], axis=-1) + rng.normal(0, 12, depth.shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def timeit_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def reference_set_greedy(sets: list[set[int]], max_frames: int, ratio: float | None = None) -> tuple[list[int], int]:
    """Textbook set-based greedy (max gain, ties -> lowest index), the baseline."""
    total = len(set().union(*sets))
    covered: set[int] = set()
    order: list[int] = []
    while len(order) < max_frames:
        best, best_gain = -1, 0
        for i, s in enumerate(sets):
            if i in order:
                continue
            gain = len(s - covered)
            if gain > best_gain:
                best, best_gain = i, gain
        if best < 0:
            break
        order.append(best)
        covered |= sets[best]
        if ratio is not None and len(covered) >= ratio * total:
            break
    return order, len(covered)


def upstream_style_ingest(rgb: np.ndarray, depth: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, ...]:
    """Baseline: the upstream per-frame path, vectorised in numpy (upstream: torch + cv2).

    World map for every depth pixel (float32 matrix product), nearest resize to 512x384 + centre
    crop, PIL crop of the colour image, 27x27 block means, and the frame's voxel set from every
    pixel (round(p / 0.1), deduplicated with np.unique as max_coverage_sampling.py does with
    torch.unique).
    """
    h, w = depth.shape
    K32 = K.astype(np.float32)
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    x = (u - K32[0, 2]) * depth / K32[0, 0]
    y = (v - K32[1, 2]) * depth / K32[1, 1]
    cam = np.stack([x, y, depth, np.ones_like(depth)], axis=-1).reshape(-1, 4)
    world = (cam @ T.astype(np.float32).T)[:, :3].reshape(h, w, 3)
    new_w = int(w * (384 / h))
    left = (new_w - 384) // 2
    rows = np.minimum(np.floor(np.arange(384) * (h / 384)), h - 1).astype(int)
    cols = np.minimum(np.floor((np.arange(384) + left) * (w / new_w)), w - 1).astype(int)
    world_crop = world[rows][:, cols]
    crop = np.asarray(Image.fromarray(rgb).resize((new_w, 384)))[:, left : left + 384]
    patches = world_crop[:378, :378].reshape(14, 27, 14, 27, 3).mean(axis=(1, 3))
    vox = np.round(world.reshape(-1, 3) / 0.1).astype(np.int64)
    keys = np.unique(pack_voxel_indices(vox))
    return crop, world_crop, patches, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--select", type=int, default=32)
    ap.add_argument("--ingest-frames", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="200 candidates, 10 ingest frames, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.candidates, args.ingest_frames, args.repeats = 200, 10, 3
    rng = np.random.default_rng(args.seed)
    cfg = IngestConfig()
    ingestor = FrameIngestor(cfg)
    med = statistics.median
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, times: list[float], baseline: list[float] | None = None) -> None:
        ratio = f"{med(baseline) / med(times):.0f}x" if baseline else ""
        rows.append((label, f"{med(times):.2f}", f"{min(times):.2f}", ratio))

    # ------------------------------------------------------------ ingestion (full 640x480 frames)
    poses = trajectory(args.ingest_frames, rng)
    raw = []
    for T in poses:
        depth = render_depth(T, np.arange(W), np.arange(H))
        raw.append((shade(depth, rng), depth, T))
    ingestor.ingest(PosedFrame(0, raw[0][0], raw[0][1], K, raw[0][2]))  # warm-up (caches, first calls)
    upstream_style_ingest(*raw[0])
    names = ("validate", "crop", "depth", "patch", "voxels", "total", "baseline")
    parts: dict[str, list[float]] = {k: [] for k in names}
    nbytes = []
    for i, (rgb, depth, T) in enumerate(raw):
        t0 = time.perf_counter()
        frame = PosedFrame(i, rgb, depth, K, T)
        parts["validate"].append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        nbytes.append(ingestor.ingest(frame).nbytes)
        parts["total"].append((time.perf_counter() - t0) * 1e3)
        parts["baseline"] += timeit_ms(lambda: upstream_style_ingest(rgb, depth, T), 1)
        geom = crop_geometry(depth.shape, cfg.crop_size)
        parts["crop"] += timeit_ms(lambda: model_crop(rgb, geom), 1)
        parts["depth"] += timeit_ms(lambda: sample_crop_depth(depth, geom), 1)
        parts["patch"] += timeit_ms(lambda: patch_world_coords(depth, geom, K, T, cfg), 1)
        parts["voxels"] += timeit_ms(lambda: coverage_voxel_keys(depth, K, T, cfg), 1)
    row("ingest 640x480 frame (total)", parts["total"], parts["baseline"])
    row("  crop: PIL bicubic resize + centre crop", parts["crop"])
    row("  depth samples under the crop", parts["depth"])
    row("  14x14 patch world coords (exact)", parts["patch"])
    row("  coverage voxel keys (stride 4)", parts["voxels"])
    row("PosedFrame validation (before ingest)", parts["validate"])
    row("baseline: upstream-style frame processing", parts["baseline"], parts["baseline"])
    rows.append(("bytes kept per ingested frame", f"{med(nbytes) / 2**20:.2f} MiB", "", ""))

    # ------------------------------------------------------------ candidates for selection
    stride = cfg.coverage_stride_px
    us, vs = np.arange(0, W, stride), np.arange(0, H, stride)
    cand_keys = []
    for T in trajectory(args.candidates, rng):
        depth = np.zeros((H, W), np.float32)
        depth[::stride, ::stride] = render_depth(T, us, vs)  # exactly what stride-4 coverage reads
        cand_keys.append(coverage_voxel_keys(depth, K, T, cfg))
    index = CoverageIndex(capacity=args.candidates)
    blank = dict(  # frames carrying coverage keys only
        K_depth=K,
        crop_rgb=np.zeros((1, 1, 3), np.uint8),
        crop_depth_m=np.zeros((1, 1), np.float32),
        patch_world_coords=np.zeros((1, 1, 3), np.float32),
        voxel_size_m=cfg.voxel_size_m,
        geometry=crop_geometry((1, 1), 1),
    )
    frames = [IngestedFrame(stamp_ns=i, T_world_cam=np.eye(4), voxel_keys=k, **blank) for i, k in enumerate(cand_keys)]  # type: ignore[arg-type]
    add_ms = timeit_ms(lambda: [index.add(f) for f in frames], 1)[0] / len(frames)
    sizes = [k.size for k in cand_keys]

    sets = [set(k.tolist()) for k in cand_keys]
    ref_ms, ref95_ms = [], []
    t0 = time.perf_counter()
    ref_order, ref_covered = reference_set_greedy(sets, args.select)
    ref_ms.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    ref95_order, ref95_covered = reference_set_greedy(sets, args.select, 0.95)
    ref95_ms.append((time.perf_counter() - t0) * 1e3)

    index.select("mc", args.select)  # warm-up
    greedy_max_coverage(cand_keys, args.select)
    sel_ms = timeit_ms(lambda: index.select("mc", args.select), args.repeats)
    sel = index.select("mc", args.select)
    sel95_ms = timeit_ms(lambda: index.select("mc-ratio95", args.select), args.repeats)
    sel95 = index.select("mc-ratio95", args.select)
    off_ms = timeit_ms(lambda: greedy_max_coverage(cand_keys, args.select), args.repeats)
    off = greedy_max_coverage(cand_keys, args.select)
    assert list(off.order) == ref_order and off.covered == ref_covered, "offline greedy differs from reference"
    assert list(sel.pick_order) == ref_order and sel.voxels_selected == ref_covered, "index differs from reference"
    assert list(sel95.pick_order) == ref95_order and sel95.voxels_selected == ref95_covered

    rows.append(("index add() per frame (capacity = candidates)", f"{add_ms:.3f}", "", ""))
    row(f"select mc {args.select} of {args.candidates} (CoverageIndex)", sel_ms, ref_ms)
    row(f"select mc-ratio95 <= {args.select} of {args.candidates} (CoverageIndex)", sel95_ms, ref95_ms)
    row(f"greedy_max_coverage {args.select} of {args.candidates} (offline, incl. key remap)", off_ms, ref_ms)
    row(f"baseline: set-based greedy {args.select} of {args.candidates}", ref_ms, ref_ms)
    row("baseline: set-based greedy, ratio 0.95", ref95_ms, ref95_ms)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical cores, load average {load}, numpy {np.__version__}")
    print(
        f"candidates: {args.candidates}, voxels per frame median {int(med(sizes))} "
        f"(min {min(sizes)}, max {max(sizes)}), voxels total {index.voxels_total}; "
        f"mc {args.select}: {len(sel)} frames, coverage {sel.coverage:.3f}; "
        f"mc-ratio95: {len(sel95)} frames, coverage {sel95.coverage:.3f}; identical picks to the baseline: yes"
    )
    print()
    print("| measurement | median ms | min ms | speed-up vs baseline (medians) |")
    print("| --- | ---: | ---: | ---: |")
    for label, median_ms, min_ms, ratio in rows:
        print(f"| {label} | {median_ms} | {min_ms} | {ratio} |")


if __name__ == "__main__":
    main()
