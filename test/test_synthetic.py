"""Synthetic scenes: exact depth, exact boxes, sane placement, determinism, the synth-scene command."""

from __future__ import annotations

import argparse
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from video3dllm_core.geometry import check_rigid
from video3dllm_core.o3d import o3d
from video3dllm_core.synthetic import (
    build_meshes,
    camera_trajectory,
    default_camera,
    make_scene,
    render_frames,
    write_synthetic_scene,
)

W, H = 160, 120


@pytest.fixture(scope="module")
def scene_and_frames():
    spec = make_scene(3)
    return spec, render_frames(spec, 6, width=W, height=H)


def _backproject(frame, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """World points of the valid pixels, pixel (u, v) taken at (u + offset, v + offset)."""
    K = frame.K_depth
    v, u = np.nonzero(frame.depth_m > 0)
    z = frame.depth_m[v, u].astype(np.float64)
    x = (u + offset - K[0, 2]) / K[0, 0] * z
    y = (v + offset - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z, np.ones_like(z)], axis=1)
    return (frame.T_world_cam @ cam.T).T[:, :3], np.stack([v, u], axis=1)


def _reference_scene(spec):
    """An independent query scene of the same meshes, plus the float64 triangles of each mesh."""
    rc = o3d.t.geometry.RaycastingScene()
    owners, triangles = [], []
    for m in build_meshes(spec):
        rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m.mesh))
        owners.append(m.object_id)
        triangles.append(np.asarray(m.mesh.vertices)[np.asarray(m.mesh.triangles)])
    return rc, np.array(owners), triangles


def _distance_to_surface(rc, triangles, pts: np.ndarray) -> np.ndarray:
    """Distance (float64) of each point to the plane of its closest triangle.

    Open3D's closest-point query runs in float32 and is off by up to ~1e-4 m on long thin
    triangles (cylinder sides), so the distance is recomputed in float64 from the triangle.
    """
    closest = rc.compute_closest_points(o3d.core.Tensor(pts.astype(np.float32)))
    geom = closest["geometry_ids"].numpy().astype(np.int64)
    prim = closest["primitive_ids"].numpy().astype(np.int64)
    dist = np.empty(len(pts))
    for g in np.unique(geom):
        sel = geom == g
        tri = triangles[g][prim[sel]]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        dist[sel] = np.abs(np.einsum("ij,ij->i", n, pts[sel] - tri[:, 0]))
    return dist


def test_depth_is_exact_z_depth_through_pixel_centres(scene_and_frames):
    spec, frames = scene_and_frames
    rc, _, triangles = _reference_scene(spec)
    for frame in frames[:3]:
        pts, _ = _backproject(frame, 0.5)
        dist = _distance_to_surface(rc, triangles, pts)
        assert dist.max() < 2e-5, f"back-projected points are {dist.max():.2e} m off the meshes"
        # Without the half-pixel offset the points leave oblique surfaces (floor, walls) clearly.
        off, _ = _backproject(frame, 0.0)
        assert _distance_to_surface(rc, triangles, off).max() > 2e-3


def test_object_pixels_lie_inside_their_boxes(scene_and_frames):
    spec, frames = scene_and_frames
    rc, owners, _ = _reference_scene(spec)
    boxes = {o.id: o for o in spec.objects}
    seen = set()
    for frame in frames:
        pts, _ = _backproject(frame, 0.5)
        closest = rc.compute_closest_points(o3d.core.Tensor(pts.astype(np.float32)))
        owner = owners[closest["geometry_ids"].numpy().astype(np.int64)]
        for oid in np.unique(owner[owner >= 0]):
            p = pts[owner == oid]
            obj = boxes[int(oid)]
            assert np.all(p >= obj.box_min - 2e-4) and np.all(p <= obj.box_max + 2e-4), obj.label
            seen.add(int(oid))
    assert len(seen) >= 3, "the camera loop should see several objects"


def test_room_and_objects_are_sane_for_many_seeds():
    for seed in range(25):
        spec = make_scene(seed)
        lx, ly, lz = spec.room_size
        assert 4.0 <= lx <= 8.0 and 3.0 <= ly <= 7.0 and 2.5 <= lz <= 3.0
        floor = [o for o in spec.objects if o.placement == "floor"]
        assert 5 <= len(floor) <= 10
        assert len({o.label for o in spec.objects}) == len(spec.objects)
        assert len({o.colour for o in spec.objects}) == len(spec.objects)
        assert {o.label for o in spec.objects if o.placement == "wall"} == {"door", "window"}
        for o in spec.objects:
            assert np.all(o.box_min >= [-lx / 2 - 1e-9, -ly / 2 - 1e-9, -1e-9]), (seed, o.label)
            assert np.all(o.box_max <= [lx / 2 + 1e-9, ly / 2 + 1e-9, lz]), (seed, o.label)
            assert min(o.size) > 0
        for o in floor:
            assert abs(o.box_min[2]) < 1e-9, "objects stand on the floor"
            assert o.box_max[2] < 1.3, "objects stay below the camera"
        for a, b in combinations(spec.objects, 2):
            overlap = np.minimum(a.box_max, b.box_max) - np.maximum(a.box_min, b.box_min)
            assert np.any(overlap <= 0), f"seed {seed}: {a.label} and {b.label} overlap"


def test_camera_loop_is_rigid_inside_the_room_and_smooth():
    spec = make_scene(4)
    poses = camera_trajectory(spec, 40)
    lx, ly, _ = spec.room_size
    for T in poses:
        check_rigid(T, tol=1e-9)
        assert np.linalg.det(T[:3, :3]) > 0
        x, y, z = T[:3, 3]
        assert abs(x) < lx / 2 - 0.5 and abs(y) < ly / 2 - 0.5 and 1.3 <= z <= 1.6
        # optical convention: camera y (down) points below the horizon, z looks slightly down
        assert T[2, 1] < 0 and T[2, 2] < 0
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.5 and steps.max() < 2 * steps.min() + 0.05
    assert np.linalg.norm(poses[0, :3, 3] - poses[-1, :3, 3]) < 0.5, "the loop closes"


def test_same_seed_same_scene_and_pixels_other_seed_differs():
    a, b, c = make_scene(11), make_scene(11), make_scene(12)
    assert a == b
    assert a != c
    fa = render_frames(a, 2, width=64, height=48, noise_std=3.0)
    fb = render_frames(b, 2, width=64, height=48, noise_std=3.0)
    fc = render_frames(c, 2, width=64, height=48, noise_std=3.0)
    for x, y in zip(fa, fb):
        assert np.array_equal(x.rgb, y.rgb) and np.array_equal(x.depth_m, y.depth_m)
        assert np.array_equal(x.T_world_cam, y.T_world_cam)
    assert not np.array_equal(fa[0].depth_m, fc[0].depth_m)


def test_frame_metadata_and_colour_at_another_size():
    spec = make_scene(2)
    frames = render_frames(spec, 3, width=W, height=H, color_size=(2 * W, 2 * H))
    assert [f.name for f in frames] == ["00000", "00010", "00020"]
    assert [f.stamp_ns for f in frames] == [0, 333_333_333, 666_666_666]
    f = frames[0]
    assert f.rgb.shape == (2 * H, 2 * W, 3) and f.depth_m.shape == (H, W)
    np.testing.assert_allclose(f.K_depth, default_camera(W, H).K)
    # The colour image sees the same view: downsampled, the sky (no hit -> black) matches the invalid depth.
    small_black = f.rgb.reshape(H, 2, W, 2, 3).max(axis=(1, 3, 4)) == 0
    assert np.mean(small_black == (f.depth_m == 0)) > 0.99


def _synth_args(out: Path, *extra: str) -> argparse.Namespace:
    from video3dllm_core.commands import synth_scene

    parser = argparse.ArgumentParser()
    synth_scene.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["synth-scene", str(out), *extra])


def test_synth_scene_command_writes_layout_objects_and_settings(tmp_path, capsys):
    from video3dllm_core.commands import synth_scene

    out = tmp_path / "scene"
    t0 = time.perf_counter()
    assert synth_scene.run(_synth_args(out, "--seed", "5", "--frames", "20")) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 8.0, f"20 frames took {elapsed:.1f} s"
    assert "wrote 20 frames" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert {"objects.json", "scene.json", "intrinsic.txt", "depth_intrinsic.txt", "axis_align_matrix.txt"} <= set(names)
    assert len([n for n in names if n.endswith(".jpg")]) == 20
    objects = json.loads((out / "objects.json").read_text())
    spec = make_scene(5)
    assert objects["room"]["size"] == list(spec.room_size)
    assert [o["label"] for o in objects["objects"]] == [o.label for o in spec.objects]
    first = objects["objects"][0]
    assert set(first) >= {"id", "label", "colour", "rgb", "shape", "box"}
    assert first["box"]["center"] == list(spec.objects[0].center)
    info = json.loads((out / "scene.json").read_text())
    assert info["seed"] == 5 and info["num_frames"] == 20 and info["generator_version"]
    # A second run must not mix frames into an existing scene.
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_scene(out, seed=5, num_frames=2)


def test_synth_scene_rejects_bad_frame_count(tmp_path):
    from video3dllm_core.commands import synth_scene

    with pytest.raises(ValueError, match="--frames"):
        synth_scene.run(_synth_args(tmp_path / "x", "--frames", "0"))
