"""Render posed RGB-D frames of a SceneSpec by Open3D ray casting: exact depth, exact poses.

Pixel convention: Open3D's `create_rays_pinhole` casts the ray of pixel (u, v) through the pixel
centre (u + 0.5, v + 0.5) with direction K^-1 [u + 0.5, v + 0.5, 1] rotated into the world, i.e.
with unit z in the camera frame, so `t_hit` is the z-depth. Back-projecting pixel (u, v) as
z * ((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1) therefore recovers the surface point exactly
(up to float32 rounding of the ray casting). Pixels whose ray hits nothing (there is no ceiling)
get depth 0, the invalid value of ScanNet and RealSense depth.

The camera moves once around the room on a smooth closed loop at 1.35-1.55 m, looking across the
room at points that drift around the opposite side at table height, so every object is seen from
several sides. Colour is the flat colour of the mesh hit, Lambert-shaded by a fixed sun direction
plus a head-light term, the floor with a mild tile pattern; optional seeded pixel noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from video3dllm_core.frame import PosedFrame
from video3dllm_core.sources.posed_images import stamp_from_index
from video3dllm_core.synthetic.scene import SceneSpec, build_meshes

__all__ = ["Camera", "default_camera", "camera_trajectory", "look_at", "render_frames", "FRAME_INDEX_STEP"]

# Frames are named like upstream's `--fast` ScanNet export: every 10th index of a 30 Hz sequence,
# so stems are 00000, 00010, ... and stamps 1/3 s apart (see posed_images.stamp_from_index).
FRAME_INDEX_STEP = 10

_SUN = np.array([0.35, 0.55, 1.0]) / np.linalg.norm([0.35, 0.55, 1.0])


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: image size and intrinsics in pixels (pixel-centre convention above)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def resized(self, width: int, height: int) -> Camera:
        """The same field of view at another resolution (exact under the pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)


def default_camera(width: int = 640, height: int = 480, fx: float | None = None, fy: float | None = None) -> Camera:
    """ScanNet-like depth camera: fx = fy = 0.9 * width (about 58 degrees horizontal), centred."""
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
    fx = 0.9 * width if fx is None else float(fx)
    fy = fx if fy is None else float(fy)
    if fx <= 0 or fy <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    return Camera(width, height, fx, fy, width / 2.0, height / 2.0)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """4x4 camera-to-world pose at `eye` looking at `target`, optical axes (x right, y down, z fwd)."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, eye
    return T


def camera_trajectory(scene: SceneSpec, num_frames: int) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses along one closed loop around the room."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    lx, ly, _ = scene.room_size
    a, b = 0.3 * lx, 0.3 * ly
    poses = np.empty((num_frames, 4, 4))
    phase = (scene.seed % 360) * np.pi / 180  # where on the loop the sequence starts
    for i in range(num_frames):
        th = phase + 2 * np.pi * i / num_frames
        eye = np.array([a * np.cos(th), b * np.sin(th), 1.45 + 0.10 * np.sin(2 * th)])
        tt = th + np.pi + 0.6 * np.sin(2 * th)
        target = np.array([0.35 * lx * np.cos(tt), 0.35 * ly * np.sin(tt), 0.55 + 0.15 * np.sin(3 * th)])
        poses[i] = look_at(eye, target)
    return poses


class _Raycaster:
    """One Open3D RaycastingScene with per-geometry colours (built once per render call)."""

    def __init__(self, scene: SceneSpec) -> None:
        from video3dllm_core.o3d import o3d

        self.o3d = o3d
        self.rc = o3d.t.geometry.RaycastingScene()
        meshes = build_meshes(scene)
        colours: list[tuple[int, int, int]] = []
        textured: list[bool] = []
        for m in meshes:
            gid = self.rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m.mesh))
            assert gid == len(colours)
            colours.append(m.rgb)
            textured.append(m.textured)
        self.colours = np.asarray(colours + [(0, 0, 0)], dtype=np.float32)  # last row: miss
        self.textured = np.asarray(textured + [False])

    def cast(self, camera: Camera, T_world_cam: np.ndarray) -> dict[str, np.ndarray]:
        o3d = self.o3d
        rays = self.rc.create_rays_pinhole(
            o3d.core.Tensor(camera.K), o3d.core.Tensor(np.linalg.inv(T_world_cam)), camera.width, camera.height
        )
        hit = self.rc.cast_rays(rays)
        return {
            "t_hit": hit["t_hit"].numpy(),
            "ids": hit["geometry_ids"].numpy().astype(np.int64),
            "normals": hit["primitive_normals"].numpy(),
            "rays": rays.numpy(),
        }

    def shade(self, cast: dict[str, np.ndarray]) -> np.ndarray:
        t, ids, normals, rays = cast["t_hit"], cast["ids"], cast["normals"], cast["rays"]
        valid = np.isfinite(t)
        ids = np.where(valid, ids, len(self.colours) - 1)
        base = self.colours[ids]
        d = rays[..., 3:]
        sun = np.clip(normals @ _SUN.astype(np.float32), 0.0, None)
        head = np.abs(np.einsum("hwc,hwc->hw", normals, d)) / np.sqrt(np.einsum("hwc,hwc->hw", d, d))
        shade = 0.40 + 0.35 * sun + 0.30 * head
        tex = self.textured[ids] & valid
        if tex.any():  # 0.5 m floor tiles, slightly darker every other one
            p = rays[..., :3] + rays[..., 3:] * np.where(valid, t, 0.0)[..., None]  # t_hit scales the raw direction
            tile = (np.floor(p[..., 0] / 0.5) + np.floor(p[..., 1] / 0.5)) % 2
            shade = np.where(tex, shade * (1.0 - 0.12 * tile), shade)
        rgb = base * shade[..., None]
        rgb[~valid] = 0.0
        return rgb


def render_frames(
    scene: SceneSpec,
    num_frames: int,
    width: int = 640,
    height: int = 480,
    fx: float | None = None,
    fy: float | None = None,
    color_size: tuple[int, int] | None = None,
    noise_std: float = 0.0,
) -> list[PosedFrame]:
    """Render `num_frames` posed RGB-D frames along `camera_trajectory(scene, num_frames)`.

    Depth (width x height, float32 metres, exact z-depth, 0 where nothing is hit) uses
    `default_camera(width, height, fx, fy)`, whose K is the frame's K_depth. `color_size=(w, h)`
    renders the colour at another resolution with the same field of view (ScanNet-like, e.g.
    (1296, 968)); its intrinsics are `default_camera(...).resized(w, h).K`. Frames are named
    00000, 00010, ... with stamps `stamp_from_index(name)` (ScanNet posed-images convention).
    `noise_std` adds Gaussian colour noise (intensity units) seeded by scene seed and frame.
    """
    cam = default_camera(width, height, fx, fy)
    color_cam = cam if color_size is None else cam.resized(*color_size)
    caster = _Raycaster(scene)
    frames = []
    for i, T in enumerate(camera_trajectory(scene, num_frames)):
        depth_cast = caster.cast(cam, T)
        depth = depth_cast["t_hit"].astype(np.float32)
        depth[~np.isfinite(depth)] = 0.0
        colour_cast = depth_cast if color_cam is cam else caster.cast(color_cam, T)
        rgb = caster.shade(colour_cast)
        if noise_std > 0:
            rng = np.random.default_rng([scene.seed, i])
            rgb = rgb + rng.normal(0.0, noise_std, rgb.shape)
        index = i * FRAME_INDEX_STEP
        frames.append(
            PosedFrame(
                stamp_ns=stamp_from_index(index),
                rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                depth_m=depth,
                K_depth=cam.K,
                T_world_cam=T,
                name=f"{index:05d}",
            )
        )
    return frames
