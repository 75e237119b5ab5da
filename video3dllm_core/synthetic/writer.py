"""Write a synthetic scene to disk: posed-images layout + objects.json + scene.json."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from video3dllm_core.sources.posed_images import write_posed_images
from video3dllm_core.synthetic.render import default_camera, render_frames
from video3dllm_core.synthetic.scene import GENERATOR_VERSION, SceneSpec, make_scene

__all__ = ["write_synthetic_scene", "scannet_like_axis_alignment"]


def scannet_like_axis_alignment(seed: int) -> np.ndarray:
    """A seeded rigid transform A (yaw + offset) standing in for ScanNet's axisAlignment.

    Pose files then hold raw-scan poses inv(A) @ T_world_cam, as in ScanNet, and a reader that
    forgets the alignment gets a visibly rotated, shifted scene.
    """
    rng = np.random.default_rng([seed, 7])
    yaw = float(rng.uniform(-math.pi, math.pi))
    c, s = math.cos(yaw), math.sin(yaw)
    A = np.eye(4)
    A[:2, :2] = [[c, -s], [s, c]]
    A[:3, 3] = [float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), 0.0]
    return A


def write_synthetic_scene(
    out_dir: str | Path,
    seed: int,
    num_frames: int = 60,
    width: int = 640,
    height: int = 480,
    color_size: tuple[int, int] | None = None,
    axis_align: bool = True,
    noise_std: float = 0.0,
    scene: SceneSpec | None = None,
) -> dict[str, Any]:
    """Generate (or take) a scene, render it and write it to `out_dir`; return scene.json's content.

    Files: the posed-images layout (see video3dllm_core.sources.posed_images), `objects.json`
    (room size and object boxes in the aligned world frame) and `scene.json` (generator version,
    settings, timing).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory or remove it")
    t0 = time.perf_counter()
    spec = make_scene(seed) if scene is None else scene
    frames = render_frames(spec, num_frames, width, height, color_size=color_size, noise_std=noise_std)
    t_render = time.perf_counter() - t0
    cam = default_camera(width, height)
    color_cam = cam if color_size is None else cam.resized(*color_size)
    A = scannet_like_axis_alignment(spec.seed) if axis_align else None
    write_posed_images(out, frames, axis_align_matrix=A, K_color=color_cam.K)
    (out / "objects.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n", encoding="utf-8")
    info: dict[str, Any] = {
        "generator": "video3dllm_core.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "num_frames": num_frames,
        "depth_size": [width, height],
        "color_size": [color_cam.width, color_cam.height],
        "K_depth": cam.K.tolist(),
        "K_color": color_cam.K.tolist(),
        "axis_align_matrix": None if A is None else A.tolist(),
        "noise_std": noise_std,
        "pixel_convention": "depth is exact z-depth of the ray through the pixel centre (u + 0.5, v + 0.5)",
        "depth_png": "uint16 millimetres, rounded (0 = no hit)",
        "render_s": round(t_render, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    (out / "scene.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
