"""Geometry helpers against independent computations (loops, exact rationals, hand-worked cases)."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations, product

import numpy as np
import pytest

from video3dllm_core.geometry import (
    VOXEL_KEY_OFFSET,
    apply_transform,
    apply_transform_f32,
    backproject_depth,
    backproject_pixels,
    box_edge_points,
    box_iou_3d,
    box_min_max,
    box_volume,
    check_rigid,
    compose,
    fit_plane,
    invert_rigid,
    pack_voxel_indices,
    pairwise_box_iou_3d,
    points_in_box,
    plane_distances,
    points_in_boxes,
    ransac_plane,
    refine_plane,
    sorted_unique,
    transform_box_hulls,
    transform_from_translation_quaternion,
    translation_quaternion_from_transform,
    unpack_voxel_keys,
    voxel_centers,
    voxel_indices,
    voxel_keys,
)

RNG = np.random.default_rng(7)


def random_rigid(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    T = np.eye(4)
    T[:3, :3] = q
    T[:3, 3] = rng.uniform(-5, 5, size=3)
    return T


# ---------------------------------------------------------------- rigid transforms


def test_invert_compose_apply_match_general_matrix_algebra() -> None:
    A, B = random_rigid(RNG), random_rigid(RNG)
    np.testing.assert_allclose(invert_rigid(A), np.linalg.inv(A), atol=1e-12)
    np.testing.assert_allclose(compose(A, invert_rigid(A)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(compose(A, B), A @ B, atol=1e-12)
    np.testing.assert_array_equal(compose(), np.eye(4))
    pts = RNG.normal(size=(50, 3))
    homog = np.c_[pts, np.ones(50)] @ (A @ B).T
    np.testing.assert_allclose(apply_transform(compose(A, B), pts), homog[:, :3], atol=1e-12)
    # a projective last row is honoured by the homogeneous divide
    P = A.copy()
    P[3] = [0.1, 0.0, 0.0, 2.0]
    h = np.c_[pts, np.ones(50)] @ P.T
    np.testing.assert_allclose(apply_transform(P, pts), h[:, :3] / h[:, 3:], atol=1e-12)


def test_quaternion_xyzw_convention_and_round_trip() -> None:
    s = math.sqrt(0.5)
    T = transform_from_translation_quaternion([1.0, 2.0, 3.0], [0.0, 0.0, s, s])  # +90 deg about z
    np.testing.assert_allclose(apply_transform(T, [[1.0, 0.0, 0.0]]), np.array([[1.0, 3.0, 3.0]]), atol=1e-12)
    # non-unit quaternions are normalised
    T2 = transform_from_translation_quaternion([0, 0, 0], [0.0, 0.0, 2.0, 2.0])
    np.testing.assert_allclose(T2[:3, :3], T[:3, :3], atol=1e-12)
    A = random_rigid(RNG)
    t, q = translation_quaternion_from_transform(A)
    np.testing.assert_allclose(transform_from_translation_quaternion(t, q), A, atol=1e-12)


def test_quaternion_and_rigid_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="quaternion_xyzw"):
        transform_from_translation_quaternion([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="translation_xyz"):
        transform_from_translation_quaternion([0, np.nan, 0], [0, 0, 0, 1])
    T = np.eye(4)
    T[0, 0] = 1.5
    with pytest.raises(ValueError, match="not rigid"):
        check_rigid(T)
    T = np.eye(4)
    T[0, 0] = -1.0  # reflection
    with pytest.raises(ValueError, match="det"):
        check_rigid(T)
    T = np.eye(4)
    T[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_rigid(T)


# ---------------------------------------------------------------- back-projection


def test_backproject_depth_matches_per_pixel_formula_integer_pixels() -> None:
    K = np.array([[500.0, 0, 31.0], [0, 480.0, 23.0], [0, 0, 1]])
    depth = RNG.uniform(0.5, 4.0, size=(48, 64)).astype(np.float32)
    depth[3, 5] = 0.0
    pts = backproject_depth(depth, K)
    assert pts.shape == (48, 64, 3) and pts.dtype == np.float32
    for v, u in [(0, 0), (23, 31), (47, 63), (10, 40), (3, 5)]:
        z = float(depth[v, u])
        expected = [(u - 31.0) * z / 500.0, (v - 23.0) * z / 480.0, z]
        np.testing.assert_allclose(pts[v, u], expected, rtol=1e-6, atol=1e-7)
    # no +0.5: the principal-point pixel lies on the optical axis; zero depth is the camera centre
    assert pts[23, 31, 0] == 0 and pts[23, 31, 1] == 0
    np.testing.assert_array_equal(pts[3, 5], [0, 0, 0])
    xs, ys, zs = backproject_pixels(np.array([40]), np.array([10]), depth[10:11, 40], K)
    np.testing.assert_array_equal(np.stack([xs, ys, zs], -1)[0], pts[10, 40])


def _round_to_f32(value: Fraction) -> np.float32:
    """Correctly rounded (nearest, ties to even) float32 of an exact rational."""
    f = np.float32(float(value))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(np.float32(c).view(np.int32)) & 1))
    return np.float32(best)


def test_apply_transform_f32_is_the_exactly_rounded_fma_chain() -> None:
    T = random_rigid(RNG)
    T32 = T.astype(np.float32)
    x, y, z = (RNG.uniform(-3, 3, 300).astype(np.float32) for _ in range(3))
    got = apply_transform_f32(T, x, y, z)
    for k in range(300):
        for i in range(3):
            acc = np.float32(T32[i, 0] * x[k])
            acc = _round_to_f32(Fraction(float(T32[i, 1])) * Fraction(float(y[k])) + Fraction(float(acc)))
            acc = _round_to_f32(Fraction(float(T32[i, 2])) * Fraction(float(z[k])) + Fraction(float(acc)))
            acc = np.float32(acc + T32[i, 3])
            assert got[k, i] == acc, (k, i)
    np.testing.assert_allclose(got, apply_transform(T, np.stack([x, y, z], -1)), atol=1e-5)


# ---------------------------------------------------------------- voxel keys


def test_voxel_keys_round_trip_order_and_floor_semantics() -> None:
    idx = RNG.integers(-VOXEL_KEY_OFFSET, VOXEL_KEY_OFFSET, size=(1000, 3))
    idx[:3] = [[-VOXEL_KEY_OFFSET] * 3, [VOXEL_KEY_OFFSET - 1] * 3, [0, -1, 1]]
    keys = pack_voxel_indices(idx)
    assert keys.dtype == np.int64 and np.all(keys >= 0)
    np.testing.assert_array_equal(unpack_voxel_keys(keys), idx)
    # keys sort like the (ix, iy, iz) tuples
    order = np.argsort(keys, kind="stable")
    assert [tuple(r) for r in idx[order]] == sorted(tuple(r) for r in idx)
    pts = np.array([[0.0, -0.0, 0.05], [-0.05, 0.1999, -0.1], [1.0, 2.34, -3.21]])
    expected = [[math.floor(c / 0.1) for c in p] for p in pts]
    np.testing.assert_array_equal(voxel_indices(pts, 0.1), expected)
    np.testing.assert_array_equal(unpack_voxel_keys(voxel_keys(pts, 0.1)), expected)
    np.testing.assert_allclose(voxel_centers(voxel_keys(pts, 0.1), 0.1)[2], [1.05, 2.35, -3.25])


def test_voxel_keys_range_and_nan_errors() -> None:
    with pytest.raises(ValueError, match="packable range"):
        voxel_keys(np.array([[0.1 * VOXEL_KEY_OFFSET + 1.0, 0.0, 0.0]]), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        voxel_keys(np.array([[np.nan, 0.0, 0.0]]), 0.1)
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_keys(np.zeros((1, 3)), 0.0)


def test_sorted_unique_equals_numpy_unique() -> None:
    a = RNG.integers(-50, 50, size=5000)
    np.testing.assert_array_equal(sorted_unique(a), np.unique(a))
    assert sorted_unique(np.empty(0, np.int64)).size == 0


# ---------------------------------------------------------------- boxes


def _iou_loop(a: np.ndarray, b: np.ndarray) -> float:
    inter = 1.0
    for k in range(3):
        lo = max(a[k] - a[k + 3] / 2, b[k] - b[k + 3] / 2)
        hi = min(a[k] + a[k + 3] / 2, b[k] + b[k + 3] / 2)
        inter *= max(0.0, hi - lo)
    union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_hand_cases_and_pairwise_matrix() -> None:
    unit = np.array([0, 0, 0, 1, 1, 1.0])
    shifted = np.array([0.5, 0, 0, 1, 1, 1.0])
    assert box_iou_3d(unit, unit) == pytest.approx(1.0)
    assert box_iou_3d(unit, shifted) == pytest.approx(1 / 3)  # 0.5 / (1 + 1 - 0.5)
    assert box_iou_3d(unit, np.array([5, 0, 0, 1, 1, 1.0])) == 0.0
    assert box_iou_3d(np.zeros(6), np.zeros(6)) == 0.0  # degenerate, no division by zero
    lo, hi = box_min_max(np.array([[1, 2, 3, 2, 4, 6.0]]))
    np.testing.assert_allclose(lo, [[0, 0, 0]])
    np.testing.assert_allclose(hi, [[2, 4, 6]])
    assert box_volume(np.array([1, 2, 3, 2, 4, 6.0])) == pytest.approx(48.0)
    a = np.c_[RNG.uniform(-1, 1, (7, 3)), RNG.uniform(0.1, 1.5, (7, 3))]
    b = np.c_[RNG.uniform(-1, 1, (5, 3)), RNG.uniform(0.1, 1.5, (5, 3))]
    M = pairwise_box_iou_3d(a, b)
    assert M.shape == (7, 5)
    expected = np.array([[_iou_loop(x, y) for y in b] for x in a])
    np.testing.assert_allclose(M, expected, atol=1e-12)
    assert (M > 0).any()
    with pytest.raises(ValueError, match="size_xyz"):
        box_iou_3d(unit, np.array([0, 0, 0, -1, 1, 1.0]))


def test_box_edges_are_the_twelve_edges_of_the_box() -> None:
    center, size = np.array([1.0, -2.0, 0.5]), np.array([0.4, 0.6, 1.0])
    pts = box_edge_points(center, size)
    assert pts.shape == (24, 3) and pts.dtype == np.float64
    corners = {tuple(center + np.array(sign) * size / 2) for sign in product((-1, 1), repeat=3)}
    assert {tuple(p) for p in pts} == corners
    edges = {frozenset((tuple(a), tuple(b))) for a, b in zip(pts[0::2], pts[1::2])}
    # independently: the box edges are the corner pairs that differ along exactly one axis
    expected = {frozenset((a, b)) for a, b in combinations(corners, 2) if np.count_nonzero(np.subtract(a, b)) == 1}
    assert edges == expected and len(edges) == 12
    # pairs in increasing corner order: corner i = signs of bits (x, y, z) = (i >> 2, i >> 1, i) & 1
    assert [tuple(p) for p in pts[:6]] == [tuple(center + np.array(s) * size / 2) for s in
                                          ((-1, -1, -1), (-1, -1, 1), (-1, -1, -1), (-1, 1, -1), (-1, -1, -1), (1, -1, -1))]
    with pytest.raises(ValueError, match="3-vectors"):
        box_edge_points([0, 0], [1, 1, 1])


def test_points_in_box_inclusive_and_float32_corners() -> None:
    box = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    pts = np.array([[0, 0, 0], [2, 2, 2], [1, 1, 1], [2.0001, 1, 1], [1, -0.0001, 1.0]])
    np.testing.assert_array_equal(points_in_box(pts, box), [True, True, True, False, False])
    boxes = np.stack([box, np.array([5, 5, 5, 1, 1, 1.0])])
    mask = points_in_boxes(pts.reshape(1, 5, 3), boxes)
    assert mask.shape == (2, 1, 5)
    np.testing.assert_array_equal(mask[0, 0], [True, True, True, False, False])
    assert not mask[1].any()
    # float32 boxes: corners computed in float32 (upstream object features)
    b32 = np.array([0.1, 0.0, 0.0, 0.3, 1.0, 1.0], dtype=np.float32)
    lo32 = np.float32(0.1) - np.float32(0.3) / np.float32(2)
    assert points_in_box(np.array([[lo32, 0, 0]], dtype=np.float32), b32)[0]
    assert not points_in_box(np.array([[np.nextafter(lo32, np.float32(-1)), 0, 0]], dtype=np.float32), b32)[0]


# ---------------------------------------------------------------- planes


def _tilted_plane_points(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Points on the plane through (0.3, -0.2, 1.1) with normal ~(0.1, -0.05, 1), with noise."""
    normal = np.array([0.1, -0.05, 1.0]) / np.linalg.norm([0.1, -0.05, 1.0])
    u = np.cross(normal, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    ab = rng.uniform(-2, 2, size=(n, 2))
    origin = np.array([0.3, -0.2, 1.1])
    pts = origin + ab[:, :1] * u + ab[:, 1:] * v + rng.normal(0, noise, size=(n, 1)) * normal
    return pts, normal, -float(normal @ origin)


def test_fit_plane_matches_lstsq_and_distances_match_projection() -> None:
    rng = np.random.default_rng(11)
    pts, normal, offset = _tilted_plane_points(rng, 500, 0.0)
    n, d = fit_plane(pts)
    assert n[np.argmax(np.abs(n))] > 0 and np.linalg.norm(n) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(n, normal, atol=1e-9)
    assert d == pytest.approx(offset, abs=1e-9)
    # Noisy points: the total-least-squares normal is close to the ordinary z = ax + by + c fit.
    noisy, _, _ = _tilted_plane_points(rng, 2000, 0.005)
    coef, *_ = np.linalg.lstsq(np.c_[noisy[:, :2], np.ones(len(noisy))], noisy[:, 2], rcond=None)
    expected = np.array([-coef[0], -coef[1], 1.0]) / np.linalg.norm([-coef[0], -coef[1], 1.0])
    n2, d2 = fit_plane(noisy)
    np.testing.assert_allclose(n2, expected, atol=2e-4)
    assert d2 == pytest.approx(-coef[2] / np.linalg.norm([-coef[0], -coef[1], 1.0]), abs=5e-4)
    # Distances: |n.p + d| / |n| for a non-unit normal equals the projection onto the unit normal.
    q = rng.normal(size=(20, 3))
    np.testing.assert_allclose(plane_distances(q, 3 * normal, 3 * offset), np.abs(q @ normal + offset), atol=1e-12)
    with pytest.raises(ValueError, match="N >= 3"):
        fit_plane(pts[:2])
    with pytest.raises(ValueError, match="non-zero"):
        plane_distances(q, [0, 0, 0], 1.0)


def test_refine_plane_reaches_the_same_fixed_point_from_nearby_starts() -> None:
    rng = np.random.default_rng(12)
    plane_pts, normal, offset = _tilted_plane_points(rng, 3000, 0.006)
    clutter = rng.uniform([-2, -2, 1.2], [2, 2, 2.5], size=(1500, 3))
    pts = np.concatenate([plane_pts, clutter])
    results = [refine_plane(pts, np.append(normal + delta, offset + eps), 0.02)
               for delta, eps in ((np.zeros(3), 0.0), (np.array([2e-3, -1e-3, 0]), 4e-3), (np.array([0, 3e-3, 0]), -5e-3))]
    n0, d0, m0 = results[0]
    for n, d, m in results[1:]:
        np.testing.assert_array_equal(n, n0)
        assert d == d0
        np.testing.assert_array_equal(m, m0)
    # A fixed point: the mask is exactly the inlier set of the returned plane, which is its LS fit.
    np.testing.assert_array_equal(m0, plane_distances(pts, n0, d0) <= 0.02)
    n_fit, d_fit = fit_plane(pts[m0])
    np.testing.assert_array_equal(n_fit, n0)
    assert d_fit == d0
    assert m0[:3000].mean() > 0.99 and m0[3000:].mean() < 0.05
    with pytest.raises(ValueError, match="4 finite numbers"):
        refine_plane(pts, [0, 0, 1], 0.02)


def test_ransac_plane_finds_the_dominant_plane_repeatably_from_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    plane_pts, normal, offset = _tilted_plane_points(rng, 25_000, 0.004)  # > max_score_points: subset scoring
    wall = np.c_[np.full(6000, 2.5), rng.uniform(-2, 2, 6000), rng.uniform(0, 2.5, 6000)]
    clutter = rng.uniform(-2, 2, size=(4000, 3))
    pts = np.concatenate([plane_pts, wall, clutter])
    n, d, mask = ransac_plane(pts, 0.02, 200, seed=3)
    assert abs(float(n @ normal)) > 0.9999
    assert abs(d * np.sign(n @ normal) - offset) < 2e-3
    assert mask[:25_000].mean() > 0.99 and mask[25_000:31_000].mean() < 0.05
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: ransac_plane(pts, 0.02, 200, seed=3), range(20)))
    for n_r, d_r, m_r in runs:
        np.testing.assert_array_equal(n_r, n)
        assert d_r == d
        np.testing.assert_array_equal(m_r, mask)
    # Degenerate input: every sample collinear.
    line = np.c_[np.linspace(0, 1, 50), np.zeros(50), np.zeros(50)]
    n_l, _, m_l = ransac_plane(line, 0.01, 20)
    assert not m_l.any() and not n_l.any()
    with pytest.raises(ValueError, match="distance_m"):
        ransac_plane(pts, 0.0, 10)


def test_transform_box_hulls_are_the_boxes_around_the_moved_corners() -> None:
    rng = np.random.default_rng(4)
    centers, sizes = rng.uniform(-3, 3, (5, 3)), rng.uniform(0.1, 2.0, (5, 3))
    T = np.eye(4)
    a = np.radians(30.0)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = (20.0, -12.0, 0.5)
    c_out, s_out = transform_box_hulls(T, centers, sizes)
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    for k in range(5):
        moved = (centers[k] + signs * sizes[k]) @ T[:3, :3].T + T[:3, 3]
        np.testing.assert_allclose(c_out[k], (moved.min(0) + moved.max(0)) / 2, atol=1e-12)
        np.testing.assert_allclose(s_out[k], np.ptp(moved, axis=0), atol=1e-12)
    T[:3, :3] = np.eye(3)  # a translation carries the box over exactly
    c_out, s_out = transform_box_hulls(T, centers, sizes)
    np.testing.assert_array_equal(s_out, sizes)
    np.testing.assert_array_equal(c_out, centers + T[:3, 3])
