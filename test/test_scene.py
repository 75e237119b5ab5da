"""SceneFrame: a robot map frame far from the origin becomes a centred, floor-at-zero scene frame."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from video3dllm_core.scene import SceneFrame, estimate_wall_yaw, range_warnings


def _room(rng: np.random.Generator, floor_xy: tuple[float, float] = (6.0, 4.0), n_floor: int = 6000) -> np.ndarray:
    """Points of a room in its own frame: floor centred on the origin at z=0, two walls, a table."""
    w, d = floor_xy
    floor = np.column_stack([rng.uniform(-w / 2, w / 2, n_floor), rng.uniform(-d / 2, d / 2, n_floor), np.zeros(n_floor)])
    floor[:, 2] += rng.normal(0.0, 0.004, n_floor)  # depth noise
    n_wall = 2000
    wall_x = np.column_stack([np.full(n_wall, w / 2), rng.uniform(-d / 2, d / 2, n_wall), rng.uniform(0, 2.5, n_wall)])
    wall_nx = np.column_stack([np.full(n_wall, -w / 2), rng.uniform(-d / 2, d / 2, n_wall), rng.uniform(0, 2.5, n_wall)])
    table = np.column_stack([rng.uniform(-0.5, 0.5, 800), rng.uniform(-0.3, 0.3, 800), np.full(800, 0.8)])
    return np.concatenate([floor, wall_x, wall_nx, table])


def _T(yaw_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = t
    return T


def _apply(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ T[:3, :3].T + T[:3, 3]


def _box_corners(c: np.ndarray, s: np.ndarray) -> np.ndarray:
    signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    return c + signs * s


def test_far_yawed_map_room_becomes_centred_floor_at_zero() -> None:
    rng = np.random.default_rng(0)
    room = _room(rng)
    T_map_room = _T(37.0, (20.0, -12.0, 0.3))  # room 23 m from the map origin, floor at map z = 0.3
    pts_map = _apply(T_map_room, room)
    # Depth spikes through a window, all on one side: a min/max or mean centre would move by metres.
    outliers = _apply(T_map_room, np.column_stack([rng.uniform(30, 60, 100), rng.uniform(-5, 5, 100), rng.uniform(-2, 4, 100)]))
    frame = SceneFrame.estimate(np.concatenate([pts_map, outliers]))
    assert frame.floor_method == "plane"
    assert frame.is_pure_translation  # z-up world: no rotation at all, so boxes map exactly
    np.testing.assert_allclose(frame.T_scene_world[:3, :3], np.eye(3), atol=0)
    scene = frame.to_scene(pts_map)
    floor_scene = scene[: 6000]
    assert abs(float(np.median(floor_scene[:, 2]))) < 0.003
    # The room centre maps to the horizontal origin (the 2..98 % range of a point-symmetric room).
    centre_scene = frame.to_scene(T_map_room[:3, 3])
    assert np.linalg.norm(centre_scene[:2]) < 0.1  # the mean would be ~0.4 m off, min/max ~25 m
    assert abs(centre_scene[2]) < 0.003
    # Heights above the floor are preserved: the table top stays at 0.8 m.
    assert abs(float(np.median(scene[-800:, 2])) - 0.8) < 0.005
    assert range_warnings(scene) == []


def test_round_trips_and_inverse() -> None:
    rng = np.random.default_rng(1)
    frame = SceneFrame.estimate(_apply(_T(-120.0, (-35.0, 8.0, 1.0)), _room(rng)))
    np.testing.assert_allclose(frame.T_world_scene @ frame.T_scene_world, np.eye(4), atol=1e-12)
    p = rng.uniform(-50, 50, size=(7, 5, 3))
    np.testing.assert_allclose(frame.to_world(frame.to_scene(p)), p, atol=1e-9)
    # float32 world coordinates stay float32; the shape is kept.
    p32 = p.astype(np.float32)
    assert frame.to_scene(p32).dtype == np.float32 and frame.to_scene(p32).shape == (7, 5, 3)
    again = SceneFrame.from_dict(frame.as_dict())
    np.testing.assert_array_equal(again.T_scene_world, frame.T_scene_world)
    assert again.floor_method == frame.floor_method


def test_estimate_is_deterministic() -> None:
    pts = _apply(_T(10.0, (3.0, 4.0, -0.2)), _room(np.random.default_rng(2)))
    a, b = SceneFrame.estimate(pts), SceneFrame.estimate(pts)
    np.testing.assert_array_equal(a.T_scene_world, b.T_scene_world)


def test_estimate_is_bitwise_repeatable_across_threads() -> None:
    """Open3D's RANSAC gave floor heights -0.00456349 vs -0.00456125 m for the same points; the
    seeded numpy RANSAC + least-squares fixed point must give bitwise the same frame every time,
    also when called concurrently (the engine estimates from several threads)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(21)
    pts = _apply(_T(-30.0, (7.0, -2.0, 0.15)), _room(rng, n_floor=20000))
    first = SceneFrame.estimate(pts)
    assert first.floor_method == "plane"
    with ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda _: SceneFrame.estimate(pts), range(20)))
    for f in frames:
        assert f.floor_method == "plane"
        np.testing.assert_array_equal(f.T_scene_world, first.T_scene_world)
    assert abs(float(np.median(first.to_scene(pts)[:20000, 2]))) < 0.003


def test_boxes_map_exactly_for_a_z_up_world() -> None:
    frame = SceneFrame.estimate(_apply(_T(25.0, (18.0, 3.0, 0.0)), _room(np.random.default_rng(3))))
    centers = np.array([[0.5, -1.0, 0.4], [2.0, 1.5, 1.0]])
    sizes = np.array([[0.3, 0.6, 0.8], [1.0, 0.2, 2.0]])
    cw, sw = frame.boxes_to_world(centers, sizes)
    for k in range(2):
        corners_world = frame.to_world(_box_corners(centers[k], sizes[k]))
        np.testing.assert_allclose(cw[k], corners_world.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(sw[k], corners_world.max(axis=0) - corners_world.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(sw, sizes, atol=1e-12)  # exactly the same box, only moved
    cs, ss = frame.boxes_to_scene(cw, sw)
    np.testing.assert_allclose(cs, centers, atol=1e-9)
    np.testing.assert_allclose(ss, sizes, atol=1e-12)
    c1, s1 = frame.boxes_to_world(centers[0], sizes[0])  # a single box as [3] vectors
    assert c1.shape == (3,) and s1.shape == (3,)


def test_up_vector_alignment() -> None:
    """A y-up world (e.g. a graphics / camera-style frame): the scene frame puts that y on +z."""
    rng = np.random.default_rng(4)
    room = _room(rng)
    R_world_zup = Rotation.from_euler("x", -90, degrees=True).as_matrix()  # maps +z onto +y
    up_world = R_world_zup @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(up_world, [0, 1, 0], atol=1e-12)
    pts_world = room @ R_world_zup.T + np.array([5.0, 2.0, -7.0])
    frame = SceneFrame.estimate(pts_world, up_world=(0.0, 2.0, 0.0))  # any length
    np.testing.assert_allclose(frame.T_scene_world[:3, :3] @ up_world, [0, 0, 1], atol=1e-12)
    scene = frame.to_scene(pts_world)
    assert abs(float(np.median(scene[:6000, 2]))) < 0.003  # floor at z = 0
    assert abs(float(np.median(scene[-800:, 2])) - 0.8) < 0.005  # table top 0.8 m above it
    # Boxes through a tilt: the world box is the axis-aligned hull of the rotated scene box.
    c, s = np.array([0.2, 0.1, 0.5]), np.array([0.4, 0.6, 1.0])
    cw, sw = frame.boxes_to_world(c, s)
    corners = frame.to_world(_box_corners(c, s))
    np.testing.assert_allclose(cw, corners.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(sw, corners.max(axis=0) - corners.min(axis=0), atol=1e-9)


def test_upside_down_up_vector() -> None:
    frame = SceneFrame.estimate(np.random.default_rng(5).normal(size=(100, 3)), up_world=(0, 0, -1))
    np.testing.assert_allclose(frame.T_scene_world[:3, :3] @ np.array([0, 0, -1.0]), [0, 0, 1], atol=1e-12)


def test_floor_fallbacks() -> None:
    rng = np.random.default_rng(6)
    # Only a tilted surface seen (a ramp, no floor plane): the lowest percentile is used.
    xy = rng.uniform(-1, 1, size=(2000, 2))
    ramp = np.column_stack([xy, 2.0 + 0.7 * xy[:, 0]])
    f = SceneFrame.estimate(ramp)
    assert f.floor_method == "percentile"
    assert abs(f.to_scene(np.array([0.0, 0.0, np.percentile(ramp[:, 2], 1.0)]))[2]) < 1e-9
    # A known floor height wins over the estimate.
    g = SceneFrame.estimate(ramp, floor_z=1.25)
    assert g.floor_method == "given"
    assert g.to_scene(np.array([0.0, 0.0, 1.25]))[2] == pytest.approx(0.0, abs=1e-12)


def test_range_warnings_name_axis_value_and_bound() -> None:
    pts = np.array([[18.34, 0.0, 0.0], [0.0, -16.0, 0.0], [0.0, 0.0, 6.2], [1.0, 1.0, 1.0]])
    warnings = range_warnings(pts)
    assert warnings == [
        "scene extends to x=18.3 m, beyond the model's +15 m range; coordinates are clamped (25.0 % of points)",
        "scene extends to y=-16.0 m, beyond the model's -15 m range; coordinates are clamped (25.0 % of points)",
        "scene extends to z=6.2 m, beyond the model's +5 m range; coordinates are clamped (25.0 % of points)",
    ]
    assert SceneFrame.range_warnings(pts, min_xyz=(-20, -20, -10), max_xyz=(20, 20, 10)) == []
    assert range_warnings(np.array([[14.9, -14.9, 4.9]])) == []


def test_bad_input_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="points_world"):
        SceneFrame.estimate(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 3"):
        SceneFrame.estimate(np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="up_world"):
        SceneFrame.estimate(np.zeros((10, 3)), up_world=(0, 0, 0))
    with pytest.raises(ValueError, match="T_scene_world"):
        SceneFrame(np.diag([2.0, 1.0, 1.0, 1.0]))
    frame = SceneFrame.identity()
    with pytest.raises(ValueError, match="size_xyz"):
        frame.boxes_to_world(np.zeros(3), np.array([0.1, -0.2, 0.3]))
    with pytest.raises(ValueError, match="same shape"):
        frame.boxes_to_world(np.zeros((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="min_xyz"):
        range_warnings(np.zeros((1, 3)), min_xyz=(1, 1, 1), max_xyz=(0, 0, 0))


def test_optional_yaw_rotates_about_up_only_and_boxes_become_hulls() -> None:
    pts = _apply(_T(30.0, (4.0, -2.0, 0.5)), _room(np.random.default_rng(7)))
    frame = SceneFrame.estimate(pts, yaw_rad=np.radians(-30.0))
    assert not frame.is_pure_translation
    # Rotation about +z only: up stays up, heights are untouched.
    np.testing.assert_allclose(frame.T_scene_world[:3, :3] @ np.array([0, 0, 1.0]), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(frame.T_scene_world[2, :3], [0, 0, 1], atol=1e-12)
    # The yaw undoes the room's 30 degrees: its walls are axis-aligned again (x = +-3 m).
    scene = frame.to_scene(pts)
    np.testing.assert_allclose(np.abs(scene[6000:8000, 0]), 3.0, atol=0.06)
    c, s = np.array([0.5, 0.5, 0.4]), np.array([1.0, 0.5, 0.8])
    cw, sw = frame.boxes_to_world(c, s)
    corners = frame.to_world(_box_corners(c, s))
    np.testing.assert_allclose(sw, corners.max(axis=0) - corners.min(axis=0), atol=1e-9)
    assert sw[0] > s[0] and sw[1] > s[1] and sw[2] == pytest.approx(s[2])


def _rendered_room_points(turn_deg: float) -> np.ndarray:
    """Fused points of rendered room 1 (4 frames of 16 at 320x240) turned by turn_deg about up in the world."""
    import dataclasses

    from video3dllm_core.ingest import FrameIngestor
    from video3dllm_core.proposals import fuse_points
    from video3dllm_core.synthetic import make_scene, render_frames

    T = _T(turn_deg, (20.0, -12.0, 0.3))
    ingestor = FrameIngestor()
    frames = [ingestor.ingest(dataclasses.replace(f, T_world_cam=T @ f.T_world_cam))
              for f in render_frames(make_scene(1), 16, 320, 240)[::4]]
    return fuse_points(frames, stride=4).points


@pytest.mark.parametrize("turn_deg", [30.0, -20.0, 5.0, 44.0])
def test_wall_yaw_turns_a_turned_room_back(turn_deg: float) -> None:
    """The room's walls leave the map's axes by turn_deg; the estimate turns the scene frame back (modulo 90)."""
    wall = estimate_wall_yaw(_rendered_room_points(turn_deg))
    assert wall.strength > 0.9 and wall.vertical_points > 1000
    assert np.degrees(wall.yaw_rad) == pytest.approx(-turn_deg, abs=0.3)
    assert np.degrees(wall.walls_rad) == pytest.approx(turn_deg, abs=0.3)
    frame = SceneFrame.estimate(_rendered_room_points(turn_deg), yaw_rad=wall.yaw_rad)
    R = frame.T_scene_world[:3, :3]
    assert np.degrees(np.arctan2(R[1, 0], R[0, 0])) == pytest.approx(-turn_deg, abs=0.3)


def test_wall_yaw_keeps_an_aligned_map_exact_and_needs_walls() -> None:
    for turn_deg in (0.0, 1.0):  # within the 2 degree snap: the world's axes, so world boxes stay exact
        wall = estimate_wall_yaw(_rendered_room_points(turn_deg))
        assert wall.yaw_rad == 0.0 and abs(np.degrees(wall.walls_rad) - turn_deg) < 0.3
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(20000, 3))
    ball = 1.5 * ball / np.linalg.norm(ball, axis=1, keepdims=True)  # a sphere: every direction alike
    round_room = estimate_wall_yaw(ball + (0.0, 0.0, 1.5))
    assert round_room.yaw_rad == 0.0 and round_room.strength < 0.3
    assert estimate_wall_yaw(np.zeros((2, 3))).yaw_rad == 0.0  # too few points
    floor_only = np.column_stack([rng.uniform(-2, 2, 5000), rng.uniform(-2, 2, 5000), np.zeros(5000)])
    assert estimate_wall_yaw(floor_only).vertical_points < 200  # no vertical surface: the world's axes
    with pytest.raises(ValueError, match="points_world must be an array of shape"):
        estimate_wall_yaw(np.zeros((4, 2)))


def test_yaw_rad_reads_the_turn_about_up_back() -> None:
    points = _room(np.random.default_rng(1))
    assert SceneFrame.estimate(points).yaw_rad == 0.0 and SceneFrame.identity().yaw_rad == 0.0
    assert SceneFrame.estimate(points, yaw_rad=0.3).yaw_rad == pytest.approx(0.3, abs=1e-12)
    assert SceneFrame.estimate(points, yaw_rad=-1.2).yaw_rad == pytest.approx(-1.2, abs=1e-12)
    tilted = SceneFrame.estimate(points, up_world=(0.0, 0.2, 1.0))
    assert tilted.yaw_rad is None  # not a turn about up alone
