"""ScanNet posed-images directories: round trips, axis alignment, invalid poses, clear errors, dispatch."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from video3dllm_core.sources import FrameSource, PosedImagesSource, open_source, stamp_from_index, write_posed_images
from video3dllm_core.synthetic import make_scene, render_frames, scannet_like_axis_alignment, write_synthetic_scene

W, H = 64, 48


@pytest.fixture(scope="module")
def frames():
    return render_frames(make_scene(9), 5, width=W, height=H)


@pytest.fixture
def scene_dir(tmp_path, frames):
    d = tmp_path / "scene0000_00"
    write_posed_images(d, frames, axis_align_matrix=scannet_like_axis_alignment(9))
    return d


def test_round_trip_restores_poses_depth_names_and_stamps(scene_dir, frames):
    src = PosedImagesSource(scene_dir)
    got = list(src)
    assert isinstance(src, FrameSource) and len(src) == 5
    assert [f.name for f in got] == ["00000", "00010", "00020", "00030", "00040"]
    assert [f.stamp_ns for f in got] == [stamp_from_index(i) for i in (0, 10, 20, 30, 40)]
    assert got[1].stamp_ns == 333_333_333
    for a, b in zip(got, frames):
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, atol=1e-12)
        np.testing.assert_allclose(a.K_depth, b.K_depth)
        assert a.depth_m.dtype == np.float32
        assert np.abs(a.depth_m - b.depth_m).max() <= 0.0005 + 1e-6  # millimetre rounding
        assert np.array_equal(a.depth_m == 0, b.depth_m == 0)
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 3.0  # JPEG quality 95
    assert src.stats.frames_yielded == 5 and src.stats.dropped == {}
    assert "5 frames" in src.describe() and "axis_align_matrix.txt" in src.describe()


def test_files_follow_the_scannet_layout(scene_dir, frames):
    with Image.open(scene_dir / "00010.png") as img:
        mm = np.asarray(img)
    assert mm.dtype == np.uint16
    assert np.array_equal(mm, np.rint(frames[1].depth_m.astype(np.float64) * 1000).astype(np.uint16))
    pose = np.loadtxt(scene_dir / "00010.txt")
    A = np.loadtxt(scene_dir / "axis_align_matrix.txt")
    # pose files hold raw-scan poses; upstream applies axis_align_matrix @ pose
    np.testing.assert_allclose(A @ pose, frames[1].T_world_cam, atol=1e-12)
    assert not np.allclose(pose, frames[1].T_world_cam, atol=1e-3)
    np.testing.assert_allclose(np.loadtxt(scene_dir / "depth_intrinsic.txt")[:3, :3], frames[0].K_depth)
    assert np.loadtxt(scene_dir / "intrinsic.txt").shape == (4, 4)


def test_axis_alignment_off_gives_raw_poses(scene_dir):
    raw = list(PosedImagesSource(scene_dir, use_axis_align=False))
    np.testing.assert_allclose(raw[2].T_world_cam, np.loadtxt(scene_dir / "00020.txt"), atol=1e-15)
    assert "axis alignment off" in PosedImagesSource(scene_dir, use_axis_align=False).describe()


def test_axis_alignment_from_scannet_meta_file_in_upstream_tree(tmp_path, frames):
    """data/scannet/posed_images/<scene>/ + data/scannet/scans/<scene>/<scene>.txt (axisAlignment line)."""
    A = scannet_like_axis_alignment(3)
    scene = tmp_path / "scannet" / "posed_images" / "scene0001_00"
    write_posed_images(scene, frames[:2])  # world poses written as the raw ones
    meta = tmp_path / "scannet" / "scans" / "scene0001_00" / "scene0001_00.txt"
    meta.parent.mkdir(parents=True)
    meta.write_text("colorHeight = 968\naxisAlignment = " + " ".join(f"{v:.17g}" for v in A.reshape(-1)) + "\nnumDepthFrames = 2\n")
    src = PosedImagesSource(scene)
    assert src.axis_align_file == meta
    np.testing.assert_allclose(list(src)[1].T_world_cam, A @ frames[1].T_world_cam, atol=1e-12)


def test_invalid_poses_are_dropped_and_counted(scene_dir):
    (scene_dir / "00020.txt").write_text("-inf -inf -inf -inf\n" * 4)
    (scene_dir / "00030.txt").write_text("nan nan nan nan\n" * 4)
    src = PosedImagesSource(scene_dir)
    names = [f.name for f in src]
    assert names == ["00000", "00010", "00040"]
    assert src.stats.frames_yielded == 3 and src.stats.dropped == {"invalid_pose": 2}
    assert "dropped 2 (invalid_pose: 2)" in src.stats.summary()
    assert len(list(src)) == 3 and src.stats.dropped == {"invalid_pose": 2}, "stats describe the latest pass"


def test_empty_depth_frames_are_dropped(scene_dir):
    Image.fromarray(np.zeros((H, W), np.uint16)).save(scene_dir / "00000.png")
    src = PosedImagesSource(scene_dir)
    assert [f.name for f in src][0] == "00010"
    assert src.stats.dropped == {"empty_depth": 1}


def test_numeric_order_stride_and_sizes(tmp_path, frames):
    named = [dataclasses.replace(f, name=n) for f, n in zip(frames[:3], ["5", "100", "10"])]
    d = tmp_path / "s"
    write_posed_images(d, named)
    assert [f.name for f in PosedImagesSource(d)] == ["5", "10", "100"]
    assert [f.name for f in PosedImagesSource(d, frame_stride=2)] == ["5", "100"]
    with pytest.raises(ValueError, match="frame_stride"):
        PosedImagesSource(d, frame_stride=0)


def test_colour_and_depth_of_different_sizes_are_both_kept(tmp_path):
    out = tmp_path / "scannet_like"
    write_synthetic_scene(out, seed=4, num_frames=2, width=W, height=H, color_size=(2 * W, 2 * H))
    src = PosedImagesSource(out)
    frame = next(iter(src))
    assert frame.rgb.shape == (2 * H, 2 * W, 3) and frame.depth_m.shape == (H, W)
    assert frame.K_depth[0, 2] == W / 2 and src.K_color is not None and src.K_color[0, 2] == W
    with pytest.raises(ValueError, match="K_color is required"):
        write_posed_images(tmp_path / "x", render_frames(make_scene(4), 1, width=W, height=H, color_size=(2 * W, 2 * H)))


def test_clear_errors_name_the_file(tmp_path, scene_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PosedImagesSource(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no frames in .*NNNNN.jpg"):
        PosedImagesSource(empty)

    broken = tmp_path / "broken"
    shutil.copytree(scene_dir, broken)
    (broken / "00010.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00010\.jpg has no depth image .*00010\.png"):
        PosedImagesSource(broken)

    broken2 = tmp_path / "broken2"
    shutil.copytree(scene_dir, broken2)
    (broken2 / "00020.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 zero\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"00020\.txt: line 3 is not a row of numbers"):
        list(PosedImagesSource(broken2))
    (broken2 / "00020.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(ValueError, match=r"00020\.txt: has 3 rows, expected 4"):
        list(PosedImagesSource(broken2))
    (broken2 / "00020.txt").write_text("1 0 0 0\n0 1 0 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"00020\.txt: line 2 has 5 values"):
        list(PosedImagesSource(broken2))

    no_k = tmp_path / "no_k"
    shutil.copytree(scene_dir, no_k)
    (no_k / "depth_intrinsic.txt").unlink()
    with pytest.raises(FileNotFoundError, match="depth_intrinsic.txt is missing"):
        PosedImagesSource(no_k)

    sheared = tmp_path / "sheared"
    shutil.copytree(scene_dir, sheared)
    (sheared / "00000.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"00000.*T_world_cam.*rotation is not rigid"):
        list(PosedImagesSource(sheared))

    with pytest.raises(FileExistsError, match="already holds posed-image files"):
        write_posed_images(scene_dir, render_frames(make_scene(9), 1, width=W, height=H))


def test_open_source_dispatch(tmp_path, scene_dir, monkeypatch):
    src = open_source(scene_dir, frame_stride=2)
    assert isinstance(src, PosedImagesSource) and len(src) == 3
    with pytest.raises(ValueError, match="rgb_topic do not apply to a posed-images directory"):
        open_source(scene_dir, rgb_topic="/x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="cannot tell what"):
        open_source(other)

    # rosbag2 paths go to video3dllm_core.sources.rosbag.RosbagSource (stand-in module here)
    opened: list[tuple[Path, dict]] = []

    class FakeRosbagSource(FrameSource):
        def __init__(self, path, rgb_topic=None, depth_topic=None, info_topic=None, world_frame="map", sync_slop_s=0.02):
            super().__init__()
            opened.append((Path(path), {"rgb_topic": rgb_topic, "world_frame": world_frame}))

        def _iter_frames(self):
            return iter(())

        def describe(self) -> str:
            return "fake"

    fake = types.ModuleType("video3dllm_core.sources.rosbag")
    fake.RosbagSource = FakeRosbagSource  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "video3dllm_core.sources.rosbag", fake)
    bag_dir = tmp_path / "bag"
    bag_dir.mkdir()
    (bag_dir / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    mcap = tmp_path / "run.mcap"
    mcap.write_bytes(b"")
    db3 = tmp_path / "run.db3"
    db3.write_bytes(b"")
    for p in (bag_dir, mcap, db3):
        assert isinstance(open_source(p, rgb_topic="/rgb", world_frame="odom"), FakeRosbagSource)
    assert opened == [(p, {"rgb_topic": "/rgb", "world_frame": "odom"}) for p in (bag_dir, mcap, db3)]
    with pytest.raises(ValueError, match="frame_stride do not apply to a rosbag2"):
        open_source(bag_dir, frame_stride=2)
