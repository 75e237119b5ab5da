"""The scene bag writer: real rosbag2 files read back with rosbags, pixels and TF checked exactly."""

from __future__ import annotations

import argparse
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rosbags.highlevel import AnyReader
from scipy.spatial.transform import Rotation, Slerp

from video3dllm_core.bag_writer import (
    COMPRESSED_FORMAT,
    DEFAULT_T_MAP_WORLD,
    SceneBagTopics,
    make_transform,
    write_scene_bag,
)
from video3dllm_core.synthetic import make_scene, render_frames, write_synthetic_scene

N = 8
TOPICS = SceneBagTopics()


@pytest.fixture(scope="module")
def frames():
    return render_frames(make_scene(7), N, width=96, height=72)


def _read(path: Path) -> dict[str, list[tuple[int, object, str]]]:
    out: dict[str, list[tuple[int, object, str]]] = {}
    with AnyReader([path]) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, reader.deserialize(raw, conn.msgtype), conn.msgtype))
    return out


def _stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _matrix(tf) -> np.ndarray:
    t, q = tf.transform.translation, tf.transform.rotation
    return make_transform([t.x, t.y, t.z], quat_xyzw=[q.x, q.y, q.z, q.w])


def _chain_at(msgs, stamp: int) -> np.ndarray:
    """map -> camera_color_optical_frame at `stamp`, interpolated like tf2 (lerp + slerp)."""
    static = {tf.child_frame_id: (tf.header.frame_id, _matrix(tf)) for _, m, _ in msgs["/tf_static"] for tf in m.transforms}
    dyn = sorted((_stamp(tf.header), tf) for _, m, _ in msgs["/tf"] for tf in m.transforms)
    times = np.array([s for s, _ in dyn])
    k = int(np.searchsorted(times, stamp))
    assert 0 < k < len(times), "image stamp outside the TF samples"
    (t0, a), (t1, b) = dyn[k - 1], dyn[k]
    assert a.child_frame_id == b.child_frame_id == TOPICS.base_frame and a.header.frame_id == TOPICS.odom_frame
    s = (stamp - t0) / (t1 - t0)
    Ta, Tb = _matrix(a), _matrix(b)
    odom_base = np.eye(4)
    odom_base[:3, 3] = (1 - s) * Ta[:3, 3] + s * Tb[:3, 3]
    odom_base[:3, :3] = Slerp([0, 1], Rotation.from_matrix([Ta[:3, :3], Tb[:3, :3]]))(s).as_matrix()
    # walk up the static tree from the optical frame to base_link, then odom -> map
    T, frame = np.eye(4), TOPICS.optical_frame
    while frame != TOPICS.base_frame:
        parent, T_pc = static[frame]
        T, frame = T_pc @ T, parent
    parent, T_map_odom = static[TOPICS.odom_frame]
    assert parent == TOPICS.world_frame
    return T_map_odom @ odom_base @ T


def test_raw_16uc1_mcap_bag_round_trip(tmp_path, frames):
    out = tmp_path / "bag"
    summary = write_scene_bag(frames, out)
    assert (out / "metadata.yaml").is_file() and list(out.glob("*.mcap"))
    msgs = _read(out)
    assert {t: len(v) for t, v in msgs.items()} == {
        "/tf_static": 1,
        "/tf": 2 * N,
        TOPICS.rgb_topic: N,
        TOPICS.rgb_info_topic: N,
        TOPICS.depth_topic: N,
        TOPICS.info_topic: N,
    }
    assert summary.message_counts == {t: len(v) for t, v in msgs.items()}
    assert TOPICS.depth_topic == "/camera/camera/aligned_depth_to_color/image_raw"
    assert msgs[TOPICS.depth_topic][0][2] == "sensor_msgs/msg/Image"
    assert msgs[TOPICS.info_topic][0][2] == "sensor_msgs/msg/CameraInfo"
    assert msgs["/tf"][0][2] == "tf2_msgs/msg/TFMessage"

    for i, frame in enumerate(frames):
        stamp = summary.image_stamps_ns[i]
        log_time, rgb_msg, _ = msgs[TOPICS.rgb_topic][i]
        assert log_time == stamp == _stamp(rgb_msg.header)
        assert rgb_msg.encoding == "rgb8" and rgb_msg.header.frame_id == TOPICS.optical_frame
        assert (rgb_msg.height, rgb_msg.width, rgb_msg.step) == (72, 96, 96 * 3)
        assert np.array_equal(rgb_msg.data.reshape(72, 96, 3), frame.rgb)

        _, depth_msg, _ = msgs[TOPICS.depth_topic][i]
        assert depth_msg.encoding == "16UC1" and depth_msg.is_bigendian == 0 and depth_msg.step == 96 * 2
        assert _stamp(depth_msg.header) == stamp and depth_msg.header.frame_id == TOPICS.optical_frame
        mm = depth_msg.data.view("<u2").reshape(72, 96)
        assert np.array_equal(mm, np.rint(frame.depth_m.astype(np.float64) * 1000).astype(np.uint16))

        _, info, _ = msgs[TOPICS.info_topic][i]
        assert (info.width, info.height, info.distortion_model) == (96, 72, "plumb_bob")
        assert info.header.frame_id == TOPICS.optical_frame and _stamp(info.header) == stamp
        np.testing.assert_array_equal(info.k.reshape(3, 3), frame.K_depth)
        np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], frame.K_depth)
        assert not info.d.any()


def test_tf_chain_reproduces_frame_poses_by_interpolation(tmp_path, frames):
    out = tmp_path / "bag"
    summary = write_scene_bag(frames, out)
    msgs = _read(out)
    tf_stamps = {_stamp(tf.header) for _, m, _ in msgs["/tf"] for tf in m.transforms}
    assert not tf_stamps & set(summary.image_stamps_ns), "image stamps must need TF interpolation"
    static_frames = {tf.child_frame_id for tf in msgs["/tf_static"][0][1].transforms}
    assert static_frames == {TOPICS.odom_frame, TOPICS.camera_link_frame, TOPICS.color_frame, TOPICS.optical_frame}
    # REP 103 / RealSense: optical z forward = camera x, optical x = camera -y, optical y = camera -z.
    optical = next(tf for tf in msgs["/tf_static"][0][1].transforms if tf.child_frame_id == TOPICS.optical_frame)
    assert optical.header.frame_id == TOPICS.color_frame
    np.testing.assert_allclose(_matrix(optical)[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    for stamp, frame in zip(summary.image_stamps_ns, frames):
        expected = DEFAULT_T_MAP_WORLD @ frame.T_world_cam
        np.testing.assert_allclose(_chain_at(msgs, stamp), expected, atol=1e-6)
    # the scene is far from the map origin: robots are not ScanNet
    assert np.linalg.norm(DEFAULT_T_MAP_WORLD[:2, 3]) > 15
    assert json.loads(_custom_data(out)["video3dllm.T_map_world"]) == DEFAULT_T_MAP_WORLD.tolist()


def _custom_data(bag: Path) -> dict[str, str]:
    import yaml

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    return meta["rosbag2_bagfile_information"]["custom_data"]


def test_32fc1_compressed_sqlite3_from_scene_directory(tmp_path):
    scene_dir = tmp_path / "scene"
    write_synthetic_scene(scene_dir, seed=2, num_frames=4, width=96, height=72)
    out = tmp_path / "bag"
    summary = write_scene_bag(scene_dir, out, depth_encoding="32FC1", compressed=True, storage="sqlite3",
                              T_map_world=np.eye(4))
    assert list(out.glob("*.db3"))
    from video3dllm_core.sources import PosedImagesSource

    frames = list(PosedImagesSource(scene_dir))
    msgs = _read(out)
    assert TOPICS.rgb_topic not in msgs
    assert len(msgs[TOPICS.rgb_compressed_topic]) == 4
    assert summary.frame_names == ["00000", "00010", "00020", "00030"]
    for i, frame in enumerate(frames):
        _, c, msgtype = msgs[TOPICS.rgb_compressed_topic][i]
        assert msgtype == "sensor_msgs/msg/CompressedImage" and c.format == COMPRESSED_FORMAT
        decoded = np.asarray(Image.open(BytesIO(c.data.tobytes())).convert("RGB")).astype(int)
        assert np.abs(decoded - frame.rgb.astype(int)).mean() < 4.0  # JPEG quality 95
        _, d, _ = msgs[TOPICS.depth_topic][i]
        assert d.encoding == "32FC1" and d.step == 96 * 4
        depth = d.data.view("<f4").reshape(72, 96)
        valid = frame.depth_m > 0
        assert np.array_equal(depth[valid], frame.depth_m[valid])
        assert np.isnan(depth[~valid]).all()
    # with T_map_world = I, map is the scene's aligned world frame
    np.testing.assert_allclose(_chain_at(msgs, summary.image_stamps_ns[2]), frames[2].T_world_cam, atol=1e-6)


def test_irregular_stamps_still_interpolate_exactly(tmp_path, frames):
    import dataclasses

    stamps = [0, 100_000_000, 150_000_000, 900_000_000, 910_000_000, 2_000_000_000, 2_500_000_000, 2_600_000_000]
    moved = [dataclasses.replace(f, stamp_ns=s) for f, s in zip(frames, stamps)]
    summary = write_scene_bag(moved, tmp_path / "bag", storage="sqlite3")
    msgs = _read(tmp_path / "bag")
    for stamp, frame in zip(summary.image_stamps_ns, moved):
        np.testing.assert_allclose(_chain_at(msgs, stamp), DEFAULT_T_MAP_WORLD @ frame.T_world_cam, atol=1e-6)


def test_bad_inputs_give_clear_errors(tmp_path, frames):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        write_scene_bag(frames, tmp_path / "exists")
    with pytest.raises(ValueError, match="depth_encoding"):
        write_scene_bag(frames, tmp_path / "a", depth_encoding="mono16")
    with pytest.raises(ValueError, match="storage"):
        write_scene_bag(frames, tmp_path / "b", storage="rosbag1")
    with pytest.raises(ValueError, match="strictly increasing"):
        write_scene_bag([frames[1], frames[0]], tmp_path / "c")
    big = render_frames(make_scene(7), 1, width=48, height=36, color_size=(96, 72))
    with pytest.raises(ValueError, match="aligned_depth_to_color needs equal sizes"):
        write_scene_bag(big, tmp_path / "d")


def test_bag_from_scene_command(tmp_path, capsys):
    from video3dllm_core.commands import bag_from_scene

    scene_dir = tmp_path / "scene"
    write_synthetic_scene(scene_dir, seed=1, num_frames=3, width=64, height=48)
    parser = argparse.ArgumentParser()
    bag_from_scene.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bag-from-scene", str(scene_dir), str(tmp_path / "bag"), "--depth-encoding", "32FC1",
                              "--compressed", "--storage", "sqlite3"])
    assert bag_from_scene.run(args) == 0
    assert "3 frames" in capsys.readouterr().out
    msgs = _read(tmp_path / "bag")
    assert len(msgs[TOPICS.rgb_compressed_topic]) == 3 and msgs[TOPICS.depth_topic][0][1].encoding == "32FC1"
