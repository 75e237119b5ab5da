"""Rigid transforms, pinhole back-projection, voxel keys and axis-aligned boxes shared by every stage.

Conventions (see DESIGN.md): `T_a_b` is a 4x4 matrix taking points from frame b to frame a; camera
frames are optical (x right, y down, z forward); boxes are rows `(cx, cy, cz, dx, dy, dz)` =
(center_xyz, size_xyz), axis-aligned, full extents in metres.

Back-projection uses integer pixel indices (no +0.5), like the upstream Video-3D LLM code: pixel
(u=column, v=row) with depth z maps to ((u - cx) z / fx, (v - cy) z / fy, z).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation

__all__ = [
    "check_rigid",
    "invert_rigid",
    "compose",
    "apply_transform",
    "apply_transform_f32",
    "transform_from_translation_quaternion",
    "translation_quaternion_from_transform",
    "backproject_pixels",
    "backproject_depth",
    "VOXEL_KEY_BITS",
    "VOXEL_KEY_OFFSET",
    "voxel_indices",
    "pack_voxel_indices",
    "unpack_voxel_keys",
    "voxel_keys",
    "voxel_centers",
    "sorted_unique",
    "fit_plane",
    "plane_distances",
    "refine_plane",
    "ransac_plane",
    "box_min_max",
    "transform_box_hulls",
    "box_edge_points",
    "box_volume",
    "box_iou_3d",
    "pairwise_box_iou_3d",
    "points_in_box",
    "points_in_boxes",
]


# ----------------------------------------------------------------------------------------------
# Rigid transforms
# ----------------------------------------------------------------------------------------------


def check_rigid(T: ArrayLike, tol: float = 1e-4) -> None:
    """Raise ValueError unless T is a finite 4x4 rigid transform (orthonormal rotation, det +1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError("non-finite values (NaN/inf) in the pose; check the TF/pose source")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise ValueError(f"last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > tol or np.linalg.det(R) < 0:
        raise ValueError(
            f"rotation is not rigid (max |R^T R - I| = {err:.2e}, det = {np.linalg.det(R):.3f}); "
            "scale or shear in the pose, or a left-handed frame: re-orthonormalise the rotation"
        )


def invert_rigid(T: ArrayLike) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t), exact up to rounding; no general inverse."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T must be a 4x4 rigid transform, got shape {T.shape}")
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def compose(*transforms: ArrayLike) -> np.ndarray:
    """Matrix product left to right: compose(T_a_b, T_b_c) = T_a_c. With no argument, identity."""
    out = np.eye(4)
    for i, T in enumerate(transforms):
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"transform {i} must be 4x4, got shape {T.shape}")
        out = out @ T
    return out


def apply_transform(T: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Map (..., 3) points through the 4x4 transform T in float64 (with homogeneous divide if needed)."""
    T = np.asarray(T, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T must be 4x4, got shape {T.shape}")
    if pts.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
    out = pts @ T[:3, :3].T + T[:3, 3]
    if not np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0]):
        w = pts @ T[3, :3] + T[3, 3]
        out = out / w[..., None]
    return out


def _fma_f32(a: np.ndarray | np.float32, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a*b + c with one rounding (the product of two float32 is exact in float64)."""
    return (np.float64(a) * b.astype(np.float64) + c).astype(np.float32)


def apply_transform_f32(T: ArrayLike, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """World points from float32 camera coordinates, reproducing a float32 FMA matrix product.

    Upstream computes `poses.float() @ [x, y, z, 1]` with torch on CPU; its float32 GEMM kernel
    evaluates each row as fma(T3, 1, fma(T2, z, fma(T1, y, T0 * x))). This function evaluates the
    same chain in plain IEEE arithmetic (float64 intermediate + float32 rounding, which is the FMA
    result except in astronomically rare double-rounding ties), so the world coordinates match the
    reference bitwise independently of the BLAS in use. T is cast to float32 first (upstream forms
    the pose product in float64 and casts). Returns x.shape + (3,) float32.
    """
    T32 = np.asarray(T, dtype=np.float64).astype(np.float32)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    z = np.asarray(z, dtype=np.float32)
    out = np.empty(x.shape + (3,), dtype=np.float32)
    for i in range(3):
        acc = T32[i, 0] * x
        acc = _fma_f32(T32[i, 1], y, acc)
        acc = _fma_f32(T32[i, 2], z, acc)
        out[..., i] = acc + T32[i, 3]
    if not np.array_equal(T32[3], np.array([0, 0, 0, 1], dtype=np.float32)):
        w = _fma_f32(T32[3, 2], z, _fma_f32(T32[3, 1], y, T32[3, 0] * x)) + T32[3, 3]
        out /= w[..., None]
    return out


def transform_from_translation_quaternion(translation_xyz: ArrayLike, quaternion_xyzw: ArrayLike) -> np.ndarray:
    """4x4 transform from a translation and a scalar-last quaternion (ROS geometry_msgs order).

    The quaternion is normalised (scipy Rotation); a zero or non-finite one raises ValueError.
    """
    t = np.asarray(translation_xyz, dtype=np.float64)
    q = np.asarray(quaternion_xyzw, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f"translation_xyz must be 3 finite numbers, got {t.tolist()}")
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
        raise ValueError(f"quaternion_xyzw must be 4 finite numbers (x, y, z, w) with non-zero norm, got {q.tolist()}")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def translation_quaternion_from_transform(T: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(translation_xyz, quaternion_xyzw) of a rigid 4x4 transform; inverse of the function above."""
    T = np.asarray(T, dtype=np.float64)
    check_rigid(T)
    return T[:3, 3].copy(), Rotation.from_matrix(T[:3, :3]).as_quat()


# ----------------------------------------------------------------------------------------------
# Pinhole back-projection
# ----------------------------------------------------------------------------------------------


def _intrinsics_f32(K: ArrayLike) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    K = np.asarray(K)
    if K.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"K must be a 3x3 (or 4x4) intrinsics matrix, got shape {K.shape}")
    K32 = K.astype(np.float32)
    return K32[0, 0], K32[1, 1], K32[0, 2], K32[1, 2]


def backproject_pixels(u: ArrayLike, v: ArrayLike, depth_m: ArrayLike, K: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame (x, y, z) float32 of pixels (u=column, v=row, integer indices) at depth z.

    Arithmetic is float32 in the upstream order: x = ((u - cx) * z) / fx. Arrays broadcast.
    """
    fx, fy, cx, cy = _intrinsics_f32(K)
    z = np.asarray(depth_m, dtype=np.float32)
    x = (np.asarray(u, dtype=np.float32) - cx) * z / fx
    y = (np.asarray(v, dtype=np.float32) - cy) * z / fy
    return x, y, z


def backproject_depth(depth_m: ArrayLike, K: ArrayLike) -> np.ndarray:
    """Dense back-projection of an HxW depth image to HxWx3 float32 camera-frame points.

    Every pixel is kept (zero depth gives the camera centre, as upstream); mask afterwards if needed.
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth_m must be HxW, got shape {depth.shape}")
    h, w = depth.shape
    x, y, z = backproject_pixels(np.arange(w)[None, :], np.arange(h)[:, None], depth, K)
    return np.stack([x, y, z], axis=-1)


# ----------------------------------------------------------------------------------------------
# Voxel keys
# ----------------------------------------------------------------------------------------------

VOXEL_KEY_BITS = 21
"""Bits per axis in a packed voxel key; 3 x 21 = 63 bits, so keys are non-negative int64."""
VOXEL_KEY_OFFSET = 1 << (VOXEL_KEY_BITS - 1)
"""Added to each voxel index before packing: indices must lie in [-2**20, 2**20 - 1]
(+-1,048,576 voxels, i.e. +-104.8 km at 0.1 m voxels)."""
_KEY_MASK = (1 << VOXEL_KEY_BITS) - 1


def voxel_indices(points: ArrayLike, voxel_size: float) -> np.ndarray:
    """Integer voxel indices floor(p / voxel_size) of (..., 3) points, int64, computed in float64."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points contain NaN/inf; mask invalid depth before computing voxel keys")
    return np.floor(pts / voxel_size).astype(np.int64)


def pack_voxel_indices(indices: ArrayLike) -> np.ndarray:
    """Pack (..., 3) int voxel indices into int64 keys ((ix+o) << 42 | (iy+o) << 21 | (iz+o)).

    Keys order lexicographically by (ix, iy, iz). Raises ValueError outside the packable range.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.shape[-1:] != (3,):
        raise ValueError(f"indices must have shape (..., 3), got {idx.shape}")
    if idx.size and (idx.min() < -VOXEL_KEY_OFFSET or idx.max() >= VOXEL_KEY_OFFSET):
        raise ValueError(
            f"voxel index out of the packable range [-{VOXEL_KEY_OFFSET}, {VOXEL_KEY_OFFSET - 1}] "
            f"(got {int(idx.min())}..{int(idx.max())}); points too far from the origin for this voxel size"
        )
    o = idx + VOXEL_KEY_OFFSET
    return (o[..., 0] << (2 * VOXEL_KEY_BITS)) | (o[..., 1] << VOXEL_KEY_BITS) | o[..., 2]


def unpack_voxel_keys(keys: ArrayLike) -> np.ndarray:
    """Inverse of pack_voxel_indices: (..., ) int64 keys -> (..., 3) int64 voxel indices."""
    k = np.asarray(keys, dtype=np.int64)
    out = np.stack(
        [(k >> (2 * VOXEL_KEY_BITS)) & _KEY_MASK, (k >> VOXEL_KEY_BITS) & _KEY_MASK, k & _KEY_MASK], axis=-1
    )
    return out - VOXEL_KEY_OFFSET


def voxel_keys(points: ArrayLike, voxel_size: float) -> np.ndarray:
    """Packed int64 voxel keys of (..., 3) points (not deduplicated; see sorted_unique)."""
    return pack_voxel_indices(voxel_indices(points, voxel_size))


def voxel_centers(keys: ArrayLike, voxel_size: float) -> np.ndarray:
    """(N, 3) float64 centres of the voxels named by keys (for display, e.g. coverage markers)."""
    return (unpack_voxel_keys(keys).astype(np.float64) + 0.5) * voxel_size


def sorted_unique(values: ArrayLike) -> np.ndarray:
    """Sorted distinct values of a 1-D integer array by sort + diff.

    numpy 2.4's np.unique is ~100x slower than this on ~1M int64 (NOTES.md).
    """
    a = np.sort(np.asarray(values).ravel())
    if a.size == 0:
        return a
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


# ----------------------------------------------------------------------------------------------
# Planes (unit normal n, offset d: n . p + d = 0)
# ----------------------------------------------------------------------------------------------


def fit_plane(points: ArrayLike) -> tuple[np.ndarray, float]:
    """Least-squares plane (unit normal [3], offset) through [N >= 3, 3] points.

    The normal is the eigenvector of the smallest eigenvalue of the points' scatter matrix, signed
    so that its largest-magnitude component is positive. Every reduction is an elementwise numpy
    sum (no BLAS, no threads), so the same points give bitwise the same plane on every run.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 3:
        raise ValueError(f"fit_plane needs an [N >= 3, 3] point array, got shape {p.shape}")
    centroid = p.sum(axis=0) / len(p)
    q = p - centroid
    scatter = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            scatter[i, j] = scatter[j, i] = float(np.sum(q[:, i] * q[:, j]))
    _, vectors = np.linalg.eigh(scatter)
    normal = vectors[:, 0]
    if normal[int(np.argmax(np.abs(normal)))] < 0:
        normal = -normal
    return normal, -float(normal @ centroid)


def plane_distances(points: ArrayLike, normal: ArrayLike, offset: float) -> np.ndarray:
    """Unsigned distance of [N, 3] points to the plane n . p + d = 0 (n need not be unit length)."""
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normal, dtype=np.float64)
    norm = float(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]))
    if not norm > 0:
        raise ValueError(f"plane normal must be non-zero, got {n.tolist()}")
    return np.abs(p[:, 0] * (n[0] / norm) + p[:, 1] * (n[1] / norm) + p[:, 2] * (n[2] / norm) + offset / norm)


def refine_plane(points: ArrayLike, plane: ArrayLike, distance_m: float,
                 max_iterations: int = 20) -> tuple[np.ndarray, float, np.ndarray]:
    """Refine a plane hypothesis to a fixed point: (unit normal, offset, inlier mask [N]).

    Starting from `plane` (a, b, c, d of ax + by + cz + d = 0), alternate "inliers = points within
    `distance_m`" and "least-squares plane of the inliers" (`fit_plane`) until the inlier set stops
    changing (at most `max_iterations` fits). The plane returned is always the least-squares fit of
    the mask returned, which on convergence is exactly its inlier set; so the result depends only on
    that final set, not on which sample triple found the plane, and nearby starting planes give
    bitwise the same answer. With fewer than 3 points within `distance_m` the starting plane
    (normalised) and its inlier mask are returned unchanged.
    """
    p = np.asarray(points, dtype=np.float64)
    start = np.asarray(plane, dtype=np.float64).reshape(-1)
    if start.shape != (4,) or not np.all(np.isfinite(start)):
        raise ValueError(f"plane must be 4 finite numbers (a, b, c, d of ax + by + cz + d = 0), got {start.tolist()}")
    norm = float(np.linalg.norm(start[:3]))
    if not norm > 0:
        raise ValueError(f"plane normal must be non-zero, got {start[:3].tolist()}")
    normal, offset = start[:3] / norm, float(start[3]) / norm
    mask = plane_distances(p, normal, offset) <= distance_m
    if int(mask.sum()) < 3:
        return normal, offset, mask
    for _ in range(max(1, int(max_iterations))):
        normal, offset = fit_plane(p[mask])
        new_mask = plane_distances(p, normal, offset) <= distance_m
        if np.array_equal(new_mask, mask) or int(new_mask.sum()) < 3:
            break
        mask = new_mask
    return normal, offset, mask


def ransac_plane(points: ArrayLike, distance_m: float, iterations: int, seed: int = 0,
                 max_score_points: int = 20_000) -> tuple[np.ndarray, float, np.ndarray]:
    """The dominant plane of [N, 3] points, repeatably: (unit normal, offset, inlier mask [N]).

    Seeded RANSAC followed by `refine_plane`: draw `iterations` point triples from
    `numpy.random.default_rng(seed)`, keep the plane through the triple with the most points
    within `distance_m` (ties: the first drawn), then refine it by least squares to a fixed
    point. Hypotheses are scored on at most `max_score_points` points (a seeded random subset of
    a larger cloud, in float32 relative to the subset's mean: the inlier share is estimated to
    well under 1 %, and the refinement then uses every point in float64).

    Why not Open3D's `segment_plane`: it is not repeatable run to run. Its OpenMP threads stop
    early depending on which thread finds a good plane first, and `o3d.utility.random.seed` is
    process-global, so concurrent callers interleave their draws; the same points gave floor
    heights of -0.00456349 and -0.00456125 m and different wall sets. Here the generator is
    local and every operation is elementwise numpy, so the same input always gives bitwise the
    same output, from any thread. All-degenerate samples (collinear or repeated points) give a
    zero normal and an all-False mask.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be an [N, 3] array, got shape {p.shape}")
    if not distance_m > 0:
        raise ValueError(f"distance_m must be a positive inlier distance in metres, got {distance_m}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    n_pts = len(p)
    none = (np.zeros(3), 0.0, np.zeros(n_pts, dtype=bool))
    if n_pts < 3:
        return none
    rng = np.random.default_rng(seed)
    triples = rng.integers(0, n_pts, size=(int(iterations), 3))
    a, b, c = p[triples[:, 0]], p[triples[:, 1]], p[triples[:, 2]]
    normals = np.cross(b - a, c - a)
    lengths = np.sqrt(np.sum(normals * normals, axis=1))
    valid = lengths > 1e-12
    if not valid.any():
        return none
    normals = normals[valid] / lengths[valid, None]
    offsets = -np.sum(normals * a[valid], axis=1)
    score = p if n_pts <= max_score_points else p[np.sort(rng.choice(n_pts, int(max_score_points), replace=False))]
    mean = score.sum(axis=0) / len(score)
    local = (score - mean).astype(np.float32)
    n32 = normals.astype(np.float32)
    d32 = (offsets + np.sum(normals * mean, axis=1)).astype(np.float32)  # plane offset relative to the mean
    x, y, z = local[:, 0:1], local[:, 1:2], local[:, 2:3]
    counts = np.empty(len(normals), dtype=np.int64)
    chunk = 64
    for s in range(0, len(normals), chunk):
        n_c, d_c = n32[s:s + chunk], d32[s:s + chunk]
        dist = x * n_c[:, 0] + y * n_c[:, 1] + z * n_c[:, 2] + d_c
        np.abs(dist, out=dist)
        counts[s:s + chunk] = np.count_nonzero(dist <= np.float32(distance_m), axis=0)
    best = int(np.argmax(counts))
    return refine_plane(p, np.append(normals[best], offsets[best]), distance_m)


# ----------------------------------------------------------------------------------------------
# Axis-aligned boxes (center_xyz, size_xyz)
# ----------------------------------------------------------------------------------------------


def _boxes(boxes: ArrayLike, name: str) -> np.ndarray:
    b = np.asarray(boxes)
    if b.shape[-1:] != (6,):
        raise ValueError(f"{name} must have shape (..., 6) = (center_xyz, size_xyz), got {b.shape}")
    if not np.issubdtype(b.dtype, np.floating):
        b = b.astype(np.float64)
    if np.any(b[..., 3:] < 0):
        raise ValueError(f"{name}: size_xyz must be non-negative full extents")
    return b


def box_min_max(boxes: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners of (..., 6) boxes: center - size/2, center + size/2, in the boxes' dtype."""
    b = _boxes(boxes, "boxes")
    half = b[..., 3:] / 2
    return b[..., :3] - half, b[..., :3] + half


def transform_box_hulls(T: ArrayLike, center_xyz: np.ndarray, size_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned boxes ([..., 3] centres and full sizes) moved by the rigid transform T: the moved centres
    and the sizes of the axis-aligned hulls of the moved boxes (each extent is sum_j |R_ij| * size_j; for a
    pure translation, |R| = I and the box is carried over exactly)."""
    M = np.asarray(T, dtype=np.float64)
    R = M[:3, :3]
    return center_xyz @ R.T + M[:3, 3], size_xyz @ np.abs(R).T


def box_edge_points(center_xyz: ArrayLike, size_xyz: ArrayLike) -> np.ndarray:
    """[24, 3] float64 endpoints of the 12 edges of one axis-aligned box, in pairs (a LINE_LIST).

    Corner i has sign bits (x, y, z) = ((i >> 2) & 1, (i >> 1) & 1, i & 1) (0: -size/2, 1: +size/2);
    the edges are the corner pairs (i, j), i < j, that differ in one bit, in increasing (i, j) order.
    Used for RViz box markers (the node and the replay's markers bag) and report drawings.
    """
    c = np.asarray(center_xyz, dtype=np.float64)
    h = np.asarray(size_xyz, dtype=np.float64) / 2
    if c.shape != (3,) or h.shape != (3,):
        raise ValueError(f"center_xyz and size_xyz must be 3-vectors, got shapes {c.shape} and {h.shape}")
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    pts = c + corners * h
    edges = [(i, i ^ bit) for i in range(8) for bit in (1, 2, 4) if i < i ^ bit]
    return pts[[k for edge in edges for k in edge]]


def box_volume(boxes: ArrayLike) -> np.ndarray:
    """Volume of (..., 6) boxes."""
    b = _boxes(boxes, "boxes")
    return np.prod(b[..., 3:], axis=-1)


def _iou_from_corners(lo_a: np.ndarray, hi_a: np.ndarray, lo_b: np.ndarray, hi_b: np.ndarray) -> np.ndarray:
    inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None), axis=-1)
    vol_a = np.prod(hi_a - lo_a, axis=-1)
    vol_b = np.prod(hi_b - lo_b, axis=-1)
    union = vol_a + vol_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou_3d(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """Elementwise (broadcast) 3D IoU of axis-aligned boxes; 0 where both volumes are 0."""
    lo_a, hi_a = box_min_max(_boxes(boxes_a, "boxes_a").astype(np.float64))
    lo_b, hi_b = box_min_max(_boxes(boxes_b, "boxes_b").astype(np.float64))
    return _iou_from_corners(lo_a, hi_a, lo_b, hi_b)


def pairwise_box_iou_3d(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """(N, M) IoU matrix between (N, 6) and (M, 6) axis-aligned boxes."""
    a = _boxes(boxes_a, "boxes_a").astype(np.float64).reshape(-1, 6)
    b = _boxes(boxes_b, "boxes_b").astype(np.float64).reshape(-1, 6)
    return box_iou_3d(a[:, None, :], b[None, :, :])


def points_in_box(points: ArrayLike, box: ArrayLike) -> np.ndarray:
    """Bool mask of (..., 3) points with lo <= p <= hi on all axes (inclusive bounds)."""
    return points_in_boxes(points, np.asarray(box).reshape(1, 6))[0]


def points_in_boxes(points: ArrayLike, boxes: ArrayLike) -> np.ndarray:
    """(M, ...) bool: point inside box m (inclusive bounds), corners computed in the boxes' dtype.

    With float32 boxes and points this is the upstream object-feature test (lo = c - d/2 in float32).
    """
    pts = np.asarray(points)
    if pts.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
    lo, hi = box_min_max(np.asarray(boxes).reshape(-1, 6))
    shape = (lo.shape[0],) + (1,) * (pts.ndim - 1) + (3,)
    p = pts[None]
    return np.all((p >= lo.reshape(shape)) & (p <= hi.reshape(shape)), axis=-1)
