"""Synthetic RGB-D scenes, our ScanNet stand-in: rooms with labelled objects, ray-cast exactly.

    spec = make_scene(seed=3)                 # room + 5-10 labelled objects (objects.json data)
    frames = render_frames(spec, 60)          # list[PosedFrame], exact depth and poses
    write_synthetic_scene("out/", seed=3)     # posed-images layout + objects.json + scene.json
"""

from __future__ import annotations

from video3dllm_core.synthetic.render import Camera, camera_trajectory, default_camera, look_at, render_frames
from video3dllm_core.synthetic.scene import (
    CATALOGUE,
    COLOURS,
    GENERATOR_VERSION,
    SceneMesh,
    SceneObject,
    SceneSpec,
    build_meshes,
    make_scene,
)
from video3dllm_core.synthetic.writer import scannet_like_axis_alignment, write_synthetic_scene

__all__ = [
    "Camera",
    "camera_trajectory",
    "default_camera",
    "look_at",
    "render_frames",
    "CATALOGUE",
    "COLOURS",
    "GENERATOR_VERSION",
    "SceneMesh",
    "SceneObject",
    "SceneSpec",
    "build_meshes",
    "make_scene",
    "scannet_like_axis_alignment",
    "write_synthetic_scene",
]
