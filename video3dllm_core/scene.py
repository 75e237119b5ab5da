"""The scene frame: a ScanNet-like frame for the model, estimated from a robot's world points.

Video-3D LLM was trained on ScanNet's axis-aligned scenes: z up, the floor near z = 0, the room
roughly centred on the origin, and every coordinate clamped to [-15, 15] x [-15, 15] x [-5, 5] m
before it is discretised into the 3D position embedding. A robot's TF world frame (`map`, `odom`)
is z-up (REP 103) but its origin may lie tens of metres from the observed room and its z = 0 need
not be the floor. `SceneFrame` is the rigid transform that fixes this:

* **Gravity alignment.** The world's up direction is +z unless `up_world` says otherwise; for
  another up vector the shortest rotation taking it onto +z is used (scipy `align_vectors` with a
  single vector pair), so no yaw is added beyond what the tilt requires.
* **No yaw** by default. The scene frame is the (up-aligned) world frame *translated*, never
  rotated about z, so an axis-aligned box in the scene frame is exactly the same axis-aligned box
  in the world frame (`boxes_to_world` is exact, not a loose hull). ScanNet's frames are rotated
  so that the walls run along x/y; a robot map is not, and rotating it would make every returned
  world box the larger hull of a yawed box. A caller that knows the room's wall direction can pass
  `yaw_rad` (a rotation about up only, so boxes stay as tight as a yaw allows); `estimate_wall_yaw`
  finds it from the points, and the engine passes it by default (`EngineConfig.scene_yaw`). When `up_world`
  is not +z, the tilt rotation likewise makes world boxes the axis-aligned hull of the rotated
  scene box (see `boxes_to_world`).
* **Horizontal origin** at the centre of the 2nd..98th percentile x/y range of the points: robust
  to a few far outliers (depth spikes through windows), unlike the min/max range or the mean
  (which a dense, close surface would pull towards itself).
* **Floor at z = 0.** The floor is the dominant near-horizontal plane among the lowest points:
  take the points within `floor_band_m` above the 1st percentile of height, voxel down-sample
  them, fit a plane with `geometry.ransac_plane` (seeded RANSAC refined by least squares to a
  fixed point of its inlier set) and accept it when its normal is within `max_floor_tilt_deg` of
  vertical and it holds at least `min_floor_fraction` of that band; the floor height is the
  median height of its inliers. The estimate is bitwise repeatable, also across threads (Open3D's
  `segment_plane` is not: see `ransac_plane`). Otherwise (no floor seen, e.g. a table-top
  view) the 1st percentile of height is used and `floor_method` says so. A known floor height (the
  robot's `base_footprint` z) can be passed as `floor_z` and skips the estimate.

Every output of the engine is converted back with `to_world` / `boxes_to_world`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from video3dllm_core.geometry import check_rigid, ransac_plane, transform_box_hulls

__all__ = [
    "SceneFrame",
    "FloorEstimateConfig",
    "WallYaw",
    "estimate_wall_yaw",
    "range_warnings",
    "MODEL_MIN_XYZ",
    "MODEL_MAX_XYZ",
]

# The model's coordinate range (upstream min_xyz_range / max_xyz_range, metres): coordinates are
# clamped to it before discretisation, so anything outside collapses onto the boundary.
MODEL_MIN_XYZ: tuple[float, float, float] = (-15.0, -15.0, -5.0)
MODEL_MAX_XYZ: tuple[float, float, float] = (15.0, 15.0, 5.0)

_AXES = "xyz"


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    """Return `points` as a float64 [..., 3] array or raise ValueError naming the argument."""
    arr = np.asarray(points)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be an array of shape [..., 3] (x, y, z in metres), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _out_dtype(points: np.ndarray) -> np.dtype:
    """Floating input keeps its dtype (float32 world coordinates stay float32); integers become float64."""
    dt = np.asarray(points).dtype
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def _up_alignment(up_world: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """3x3 rotation taking the world's up vector onto +z (identity for None or +z)."""
    if up_world is None:
        return np.eye(3)
    up = np.asarray(up_world, dtype=np.float64)
    if up.shape != (3,) or not np.all(np.isfinite(up)):
        raise ValueError(f"up_world must be a finite 3-vector, got {np.asarray(up_world).tolist()}")
    norm = float(np.linalg.norm(up))
    if norm < 1e-9:
        raise ValueError("up_world must be non-zero: pass the world frame's up (anti-gravity) direction, e.g. (0, 0, 1)")
    up = up / norm
    if np.allclose(up, [0.0, 0.0, 1.0], atol=1e-12):
        return np.eye(3)
    rot, _ = Rotation.align_vectors([0.0, 0.0, 1.0], up)
    return np.asarray(rot.as_matrix(), dtype=np.float64)


@dataclass(frozen=True)
class FloorEstimateConfig:
    """Parameters of the floor estimate (see the module docstring).

    Attributes:
        low_percentile: height percentile taken as the lowest observed surface (robust to a few
            spurious points below the floor).
        floor_band_m: height band above that percentile searched for the floor plane.
        voxel_m: down-sampling voxel (Open3D `voxel_down_sample`) for the plane fit (uniform
            density, bounded cost).
        distance_m: RANSAC inlier distance.
        iterations: RANSAC iterations.
        max_floor_tilt_deg: largest accepted angle between the plane normal and +z.
        min_floor_fraction: smallest accepted share of the band's (down-sampled) points on the plane.
        min_points: fewer band points than this skip RANSAC and use the percentile.
        seed: seed of the RANSAC sample generator (a local numpy Generator: the fit is the
            same on every call and from any thread).
    """

    low_percentile: float = 1.0
    floor_band_m: float = 0.25
    voxel_m: float = 0.03
    distance_m: float = 0.02
    iterations: int = 200
    max_floor_tilt_deg: float = 10.0
    min_floor_fraction: float = 0.3
    min_points: int = 50
    seed: int = 0


def _estimate_floor(points_up: np.ndarray, cfg: FloorEstimateConfig) -> tuple[float, str]:
    """Floor height (along +z of the up-aligned frame) and the method that found it."""
    from video3dllm_core.o3d import o3d

    z = points_up[:, 2]
    z_low = float(np.percentile(z, cfg.low_percentile))
    band = points_up[z <= z_low + cfg.floor_band_m]
    if len(band) >= cfg.min_points:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(band))
        pcd = pcd.voxel_down_sample(cfg.voxel_m)
        n_band = len(pcd.points)
        if n_band >= cfg.min_points:
            band_pts = np.asarray(pcd.points)
            normal, _, inliers = ransac_plane(band_pts, cfg.distance_m, cfg.iterations, cfg.seed)
            tilt = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
            if inliers.any() and tilt <= cfg.max_floor_tilt_deg and int(inliers.sum()) >= cfg.min_floor_fraction * n_band:
                return float(np.median(band_pts[inliers, 2])), "plane"
    return z_low, "percentile"


@dataclass(frozen=True, eq=False)
class SceneFrame:
    """Rigid transform between the TF world frame and the model's scene frame.

    Attributes:
        T_scene_world: 4x4 world-to-scene transform (p_scene = T_scene_world @ p_world).
        floor_method: how z = 0 was chosen: "plane" (RANSAC floor plane), "percentile" (lowest
            points; no floor plane found), "given" (caller's `floor_z`) or "identity".
    """

    T_scene_world: np.ndarray
    floor_method: str = "identity"
    _T_world_scene: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_scene_world, dtype=np.float64)
        try:
            check_rigid(T)
        except ValueError as exc:
            raise ValueError(f"T_scene_world: {exc}") from None
        T = T.copy()
        T.setflags(write=False)
        object.__setattr__(self, "T_scene_world", T)
        inv = np.eye(4)
        inv[:3, :3] = T[:3, :3].T
        inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
        inv.setflags(write=False)
        object.__setattr__(self, "_T_world_scene", inv)

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls) -> SceneFrame:
        """The world frame already is a scene frame (ScanNet's axis-aligned scenes)."""
        return cls(np.eye(4), "identity")

    @classmethod
    def estimate(
        cls,
        points_world: np.ndarray,
        up_world: Sequence[float] | np.ndarray | None = None,
        floor_z: float | None = None,
        config: FloorEstimateConfig | None = None,
        yaw_rad: float = 0.0,
    ) -> SceneFrame:
        """Estimate the scene frame from observed world points.

        Args:
            points_world: [N, 3] points in the TF world frame (metres); non-finite rows are ignored.
            up_world: the world's up (anti-gravity) direction; None means +z (REP 103 map/odom).
            floor_z: known floor height along `up_world` (e.g. the robot's base_footprint z in a
                z-up world); skips the floor estimate.
            config: floor-estimate parameters.
            yaw_rad: optional extra rotation of the scene axes about up (e.g. to align a room's
                walls with x/y as ScanNet's axis alignment does). The default 0 keeps the world's
                horizontal axes, so boxes map between the frames exactly; any other value makes
                `boxes_to_world` return the (larger) axis-aligned hull of the yawed box.
        """
        if not np.isfinite(yaw_rad):
            raise ValueError(f"yaw_rad must be finite, got {yaw_rad}")
        pts = _as_points(points_world, "points_world").reshape(-1, 3)
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts) < 3:
            raise ValueError(
                f"points_world has {len(pts)} finite points; the scene frame needs at least 3 "
                "(ingest some frames with valid depth first)"
            )
        R = _up_alignment(up_world)
        if yaw_rad != 0.0:
            R = Rotation.from_euler("z", yaw_rad).as_matrix() @ R
        up_pts = pts @ R.T
        cx, cy = (np.percentile(up_pts[:, :2], 2.0, axis=0) + np.percentile(up_pts[:, :2], 98.0, axis=0)) / 2.0
        if floor_z is not None:
            if not np.isfinite(floor_z):
                raise ValueError(f"floor_z must be finite, got {floor_z}")
            fz, method = float(floor_z), "given"
        else:
            fz, method = _estimate_floor(up_pts, config or FloorEstimateConfig())
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = -np.array([cx, cy, fz])
        return cls(T, method)

    # ------------------------------------------------------------------ transforms
    @property
    def T_world_scene(self) -> np.ndarray:
        """4x4 scene-to-world transform (inverse of `T_scene_world`)."""
        return self._T_world_scene

    @property
    def is_pure_translation(self) -> bool:
        """True when the frames differ only by a translation (world up is +z): boxes map exactly."""
        return bool(np.allclose(self.T_scene_world[:3, :3], np.eye(3), atol=1e-12))

    @property
    def yaw_rad(self) -> float | None:
        """The scene axes' turn about up relative to the world's (the rotation of `T_scene_world` is a turn
        by yaw_rad about z; 0 for the world's own axes); None when the frame also tilts (`up_world` not +z)."""
        R = self.T_scene_world[:3, :3]
        if not np.allclose(R[2], [0.0, 0.0, 1.0], atol=1e-9):
            return None
        return float(np.arctan2(R[1, 0], R[0, 0]))

    @staticmethod
    def _apply(T: np.ndarray, points: np.ndarray, name: str) -> np.ndarray:
        pts = _as_points(points, name)
        out = pts @ T[:3, :3].T + T[:3, 3]
        return out.astype(_out_dtype(points), copy=False)

    def to_scene(self, points_world: np.ndarray) -> np.ndarray:
        """World points [..., 3] -> scene points [..., 3]."""
        return self._apply(self.T_scene_world, points_world, "points_world")

    def to_world(self, points_scene: np.ndarray) -> np.ndarray:
        """Scene points [..., 3] -> world points [..., 3]."""
        return self._apply(self.T_world_scene, points_scene, "points_scene")

    @staticmethod
    def _map_boxes(T: np.ndarray, center: np.ndarray, size: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        c = _as_points(center, names[0])
        s = _as_points(size, names[1])
        if c.shape != s.shape:
            raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {c.shape} and {s.shape}")
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
            raise ValueError(f"{names[0]}/{names[1]} contain NaN or inf")
        if np.any(s < 0):
            raise ValueError(f"{names[1]} must be non-negative box extents (metres), got a negative value")
        c_out, s_out = transform_box_hulls(T, c, s)
        return c_out.astype(_out_dtype(center), copy=False), s_out.astype(_out_dtype(size), copy=False)

    def boxes_to_world(self, center_xyz: np.ndarray, size_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned scene boxes ([3] or [K, 3] centres and sizes) -> axis-aligned world boxes.

        With a z-up world (the default) the scene frame is a pure translation of the world frame
        and the box is the same box, exactly. With another `up_world` the world box is the
        axis-aligned hull of the tilted scene box (it grows by the tilt; no yaw is ever added).
        """
        return self._map_boxes(self.T_world_scene, center_xyz, size_xyz, ("center_xyz", "size_xyz"))

    def boxes_to_scene(self, center_xyz: np.ndarray, size_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world boxes -> axis-aligned scene boxes (external detector boxes, markers)."""
        return self._map_boxes(self.T_scene_world, center_xyz, size_xyz, ("center_xyz", "size_xyz"))

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (reports, replay output)."""
        return {"T_scene_world": self.T_scene_world.tolist(), "floor_method": self.floor_method}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SceneFrame:
        """Inverse of `as_dict`."""
        if "T_scene_world" not in data:
            raise ValueError("scene frame dict lacks 'T_scene_world' (a 4x4 nested list)")
        return cls(np.asarray(data["T_scene_world"], dtype=np.float64), str(data.get("floor_method", "identity")))

    @staticmethod
    def range_warnings(
        points_scene: np.ndarray,
        min_xyz: Sequence[float] = MODEL_MIN_XYZ,
        max_xyz: Sequence[float] = MODEL_MAX_XYZ,
    ) -> list[str]:
        """See `range_warnings` (module level)."""
        return range_warnings(points_scene, min_xyz, max_xyz)


@dataclass(frozen=True)
class WallYaw:
    """`estimate_wall_yaw`'s answer: the scene yaw that turns the walls onto x/y, and how clear they were."""

    yaw_rad: float
    """Pass as `SceneFrame.estimate(yaw_rad=...)`; 0 when the walls already run along x/y (within
    `snap_deg`) or no wall direction stands out."""
    walls_rad: float
    """The walls' normal direction about up, modulo 90 degrees, in (-45, 45] degrees (radians)."""
    strength: float
    """Agreement of the vertical surfaces' normals on one rectangular grid, 0 (none) .. 1 (all)."""
    vertical_points: int
    """Points (5 cm voxels) on vertical surfaces the estimate used."""


def estimate_wall_yaw(
    points_world: np.ndarray,
    up_world: Sequence[float] | np.ndarray | None = None,
    voxel_m: float = 0.05,
    snap_deg: float = 2.0,
    min_strength: float = 0.3,
    min_vertical_points: int = 200,
) -> WallYaw:
    """The yaw that turns a room's walls onto the scene axes, as ScanNet's axis alignment does.

    A robot's map frame has no relation to the room's walls (SLAM starts wherever the robot stood),
    while the model was trained on rooms whose walls run along x and y, and proposals are boxes along
    the scene axes, loose around a turned object. Rooms are mostly rectangular ("Manhattan"): the normals
    of walls, cabinet fronts and table sides point along two perpendicular directions. So: normals of
    the points voxel-down-sampled to `voxel_m` (Open3D, 30 neighbours within 3 voxels), those within
    10 degrees of horizontal kept, and the direction theta of each taken modulo 90 degrees as the angle
    of the mean of exp(4 i theta), whose length is the strength. A strength below `min_strength` (a
    round room, a view of one object) or fewer than `min_vertical_points` vertical points keeps the
    world's axes (yaw 0); so does a wall direction within `snap_deg` of the axes, so an already-aligned
    map keeps exact world boxes (`SceneFrame.boxes_to_world` of a yawed frame returns hulls).
    """
    from video3dllm_core.o3d import o3d

    pts = _as_points(points_world, "points_world").reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)] @ _up_alignment(up_world).T
    keep = WallYaw(0.0, 0.0, 0.0, 0)
    if len(pts) < 3:
        return keep
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).voxel_down_sample(voxel_m)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * voxel_m, max_nn=30))
    normals = np.asarray(pcd.normals)
    vertical = normals[np.abs(normals[:, 2]) <= np.sin(np.radians(10.0))]
    if len(vertical) < min_vertical_points:
        return WallYaw(0.0, 0.0, 0.0, len(vertical))
    theta4 = 4.0 * np.arctan2(vertical[:, 1], vertical[:, 0])
    mean = np.array([np.cos(theta4).mean(), np.sin(theta4).mean()])
    strength = float(np.linalg.norm(mean))
    walls = float(np.arctan2(mean[1], mean[0]) / 4.0)
    if strength < min_strength or abs(walls) <= np.radians(snap_deg):
        return WallYaw(0.0, walls, strength, len(vertical))
    return WallYaw(-walls, walls, strength, len(vertical))


def range_warnings(
    points_scene: np.ndarray,
    min_xyz: Sequence[float] = MODEL_MIN_XYZ,
    max_xyz: Sequence[float] = MODEL_MAX_XYZ,
) -> list[str]:
    """Human-readable warnings for scene points beyond the model's coordinate range.

    The model clamps coordinates to [min_xyz, max_xyz] before discretising them, so everything
    beyond collapses onto the boundary and loses its position. One warning per axis side that is
    exceeded, with the extreme value and the share of points beyond it, e.g.
    "scene extends to x=18.3 m, beyond the model's +15 m range; coordinates are clamped (2.1 % of
    points)". Non-finite points are ignored. An empty list means everything is in range.
    """
    pts = _as_points(points_scene, "points_scene").reshape(-1, 3)
    lo = np.asarray(min_xyz, dtype=np.float64)
    hi = np.asarray(max_xyz, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(lo >= hi):
        raise ValueError(f"min_xyz/max_xyz must be 3-vectors with min < max, got {list(lo)} and {list(hi)}")
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        return []
    warnings: list[str] = []
    n = len(pts)
    for axis in range(3):
        v = pts[:, axis]
        name = _AXES[axis]
        for side, bound, beyond in (
            ("-", lo[axis], v < lo[axis]),
            ("+", hi[axis], v > hi[axis]),
        ):
            count = int(beyond.sum())
            if count == 0:
                continue
            extreme = float(v.min() if side == "-" else v.max())
            share = 100.0 * count / n
            warnings.append(
                f"scene extends to {name}={extreme:.1f} m, beyond the model's {side}{abs(bound):g} m range; "
                f"coordinates are clamped ({share:.1f} % of points)"
            )
    return warnings
