"""RosbagSource on real rosbag2 files (MCAP and sqlite3), written by rosbags and by the bag writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation, Slerp

from video3dllm_core.bag_writer import write_scene_bag
from video3dllm_core.image_codec import encode_camera_info, encode_depth_image, encode_rgb_image
from video3dllm_core.sources import open_source
from video3dllm_core.sources.rosbag import RosbagError, RosbagSource
from video3dllm_core.synthetic import make_scene, render_frames

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
S = 1_000_000_000
MS = 1_000_000
RGB, DEPTH, INFO = ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
                    "/camera/camera/aligned_depth_to_color/camera_info")
IMG, CINFO, TFM = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage"
OPT = "camera_color_optical_frame"
W, H = 32, 24
K = np.array([[30.0, 0, 16.0], [0, 30.0, 12.0], [0, 0, 1]])
T0 = 100 * S  # bag epoch


def header(stamp: int, frame: str):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // S, nanosec=stamp % S), frame_id=frame)


def tf_msg(stamp: int, parent: str, child: str, t, q):
    V, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    ts = T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](translation=V(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                                                   rotation=Q(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))
    return T[TFM](transforms=[ts])


def image(stamp: int, fields: dict):
    return T[IMG](header=header(stamp, OPT), **fields)


def info(stamp: int, K_: np.ndarray = K, w: int = W, h: int = H):
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T[CINFO](header=header(stamp, OPT), roi=roi, **encode_camera_info(K_, w, h))


def write_bag(path: Path, events: list, storage: str = "mcap") -> Path:
    """events: (log time ns, topic, msgtype, message or raw bytes)."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as w:
        conns = {}
        for logtime, topic, msgtype, msg in sorted(events, key=lambda e: e[0]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=TS)
            w.write(conns[topic], logtime, msg if isinstance(msg, bytes) else TS.serialize_cdr(msg, msgtype))
    return path


# A robot moving for 2 s: map->odom from a slow, late localiser (5 Hz, recorded 0.3 s after its stamp),
# odom->base_link at 50 Hz, a static camera mount; images at 10 Hz, depth jittered by up to 3 ms.
def map_odom(k: int):
    return [0.3 * k, -0.1 * k, 0.0], Rotation.from_euler("z", 5 * k, degrees=True)


def odom_base(k: int):
    return [0.05 * k, 0.02 * k * np.sin(k / 7), 0.0], Rotation.from_euler("zy", [2.0 * k, 0.2 * k], degrees=True)


T_BASE_OPT = np.eye(4)
T_BASE_OPT[:3, :3] = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_matrix()
T_BASE_OPT[:3, 3] = [0.2, 0.0, 1.0]
MO_STAMPS = [T0 + k * 200 * MS for k in range(11)]  # 0 .. 2 s
OB_STAMPS = [T0 + k * 20 * MS for k in range(101)]
IMAGE_STAMPS = [T0 + 50 * MS + k * 100 * MS for k in range(20)]  # 0.05 .. 1.95 s


def interp(stamps: list[int], sample, stamp: int) -> np.ndarray:
    ts = np.array([sample(k)[0] for k in range(len(stamps))], dtype=float)
    rots = Rotation.concatenate([sample(k)[1] for k in range(len(stamps))])
    M = np.eye(4)
    M[:3, 3] = [np.interp(stamp, stamps, ts[:, i]) for i in range(3)]
    M[:3, :3] = Slerp(np.array(stamps, dtype=float), rots)([float(stamp)])[0].as_matrix()
    return M


def expected_pose(stamp: int) -> np.ndarray:
    return interp(MO_STAMPS, map_odom, stamp) @ interp(OB_STAMPS, odom_base, stamp) @ T_BASE_OPT


def robot_events(skip_depth: tuple[int, ...] = (), zero_depth: tuple[int, ...] = (), extra_late_image: bool = False,
                 info_K: np.ndarray = K):
    ev: list = []
    q = Rotation.from_matrix(T_BASE_OPT[:3, :3]).as_quat()
    ev.append((T0, "/tf_static", TFM, tf_msg(T0, "base_link", OPT, T_BASE_OPT[:3, 3], q)))
    for k, s in enumerate(MO_STAMPS):
        t, r = map_odom(k)
        ev.append((s + 300 * MS, "/tf", TFM, tf_msg(s, "map", "odom", t, r.as_quat())))
    for k, s in enumerate(OB_STAMPS):
        t, r = odom_base(k)
        ev.append((s + 2 * MS, "/tf", TFM, tf_msg(s, "odom", "base_link", t, r.as_quat())))
    ev.append((T0, INFO, CINFO, info(T0, info_K)))  # latched: once, at the start
    rng = np.random.default_rng(0)
    stamps = IMAGE_STAMPS + ([T0 + 2050 * MS] if extra_late_image else [])
    for k, s in enumerate(stamps):
        rgb = np.full((H, W, 3), k * 10 % 256, dtype=np.uint8)
        ev.append((s + 10 * MS, RGB, IMG, image(s, encode_rgb_image(rgb, "bgr8"))))
        if k in skip_depth:
            continue
        depth = np.full((H, W), 0.0 if k in zero_depth else 1.0 + 0.1 * k, dtype=np.float32)
        ds = s + int(rng.uniform(-3, 3) * MS)
        ev.append((ds + 12 * MS, DEPTH, IMG, image(ds, encode_depth_image(depth, "16UC1"))))
    return ev


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_poses_follow_the_tf_chain_with_late_localisation(tmp_path: Path, storage: str) -> None:
    bag = write_bag(tmp_path / "bag", robot_events(), storage)
    src = RosbagSource(bag)
    frames = list(src)
    assert [f.stamp_ns for f in frames] == IMAGE_STAMPS  # all posed, in time order
    for k, f in enumerate(frames):
        np.testing.assert_allclose(f.T_world_cam, expected_pose(f.stamp_ns), atol=1e-9)
        assert f.rgb.shape == (H, W, 3) and f.rgb[0, 0, 0] == k * 10 % 256
        np.testing.assert_allclose(f.depth_m, 1.0 + 0.1 * k, atol=5e-4)
        np.testing.assert_array_equal(f.K_depth, K)
        assert f.name is None
    assert src.stats.frames_yielded == 20 and src.stats.dropped == {}
    assert src.storage == storage
    # a second pass gives the same frames and fresh statistics
    assert len(list(src)) == 20 and src.stats.frames_yielded == 20


def test_waiting_for_late_tf_is_what_makes_it_work(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events())
    impatient = RosbagSource(bag, tf_wait_s=0.1)  # gives up before the 0.3 s late map->odom arrives
    assert len(list(impatient)) < 20 and impatient.stats.dropped["no_tf"] >= 1
    assert "'map' does not exist" in impatient.drop_examples["no_tf"]  # map->odom not received yet
    tiny_queue = RosbagSource(bag, max_pending=1)  # memory bound forces early resolution
    assert len(list(tiny_queue)) < 20 and tiny_queue.stats.dropped["no_tf"] >= 1


def test_drops_are_counted_by_reason(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events(skip_depth=(3, 11), zero_depth=(5,), extra_late_image=True))
    src = RosbagSource(bag)
    frames = list(src)
    assert [f.stamp_ns for f in frames] == [s for k, s in enumerate(IMAGE_STAMPS) if k not in (3, 5, 11)]
    assert src.stats.dropped == {"unsynced": 2, "invalid_frame": 1, "no_tf": 1}
    assert "no valid pixel" in src.drop_examples["invalid_frame"]
    assert "extrapolation into the future" in src.drop_examples["no_tf"]


def test_tolerance_accepts_a_frame_just_past_the_last_tf(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events(extra_late_image=True))
    assert len(list(RosbagSource(bag, tf_tolerance_s=0.1))) == 21


def test_unknown_world_frame_drops_every_frame_with_the_reason(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events())
    src = RosbagSource(bag, world_frame="world")
    assert list(src) == []
    assert src.stats.dropped == {"no_tf": 20}
    assert "target frame 'world' does not exist" in src.drop_examples["no_tf"]
    # another frame of the tree works as world frame: odom
    frames = list(RosbagSource(bag, world_frame="odom"))
    np.testing.assert_allclose(frames[4].T_world_cam,
                               interp(OB_STAMPS, odom_base, IMAGE_STAMPS[4]) @ T_BASE_OPT, atol=1e-9)


def test_camera_info_size_mismatch_is_an_invalid_frame(tmp_path: Path) -> None:
    ev = [e for e in robot_events() if e[1] != INFO]
    ev.append((T0, INFO, CINFO, info(T0, K * 2, 2 * W, 2 * H)))  # the colour camera_info of a bigger stream
    src = RosbagSource(write_bag(tmp_path / "bag", ev))
    assert list(src) == [] and src.stats.dropped == {"invalid_frame": 20}
    assert "camera_info on /camera/camera/aligned_depth_to_color/camera_info is 64x48 but the depth image is 32x24" in \
        src.drop_examples["invalid_frame"]


def test_uncalibrated_camera_info_is_an_error(tmp_path: Path) -> None:
    src = RosbagSource(write_bag(tmp_path / "bag", robot_events(info_K=np.zeros((3, 3)))))
    with pytest.raises(RosbagError, match="camera_info.k is all zeros: the camera is not calibrated"):
        list(src)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed,depth_encoding", [(False, "16UC1"), (True, "32FC1"), (True, "16UC1")])
def test_bag_writer_bags_give_back_the_scene(tmp_path: Path, storage: str, compressed: bool, depth_encoding: str) -> None:
    scene = render_frames(make_scene(2), 6, 64, 48)
    summary = write_scene_bag(scene, tmp_path / "bag", depth_encoding=depth_encoding, compressed=compressed, storage=storage)
    src = RosbagSource(tmp_path / "bag")
    assert src.rgb_topic.endswith("/compressed") == compressed  # default falls back to image_transport's topic
    frames = list(src)
    assert [f.stamp_ns for f in frames] == summary.image_stamps_ns
    for got, ref in zip(frames, scene):
        np.testing.assert_allclose(got.T_world_cam, summary.T_map_world @ ref.T_world_cam, atol=1e-9)
        np.testing.assert_allclose(got.K_depth, ref.K_depth)
        tol = 0.0 if depth_encoding == "32FC1" else 0.0005 + 1e-6
        valid = ref.depth_m > 0
        assert np.abs(got.depth_m[valid] - ref.depth_m[valid]).max() <= tol
        diff = np.abs(got.rgb.astype(int) - ref.rgb)
        assert (diff.max() == 0) if not compressed else (diff.mean() < 4)


def test_bare_storage_file_and_open_source_options(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events())
    mcap_file = next(bag.glob("*.mcap"))
    assert len(list(RosbagSource(mcap_file))) == 20
    src = open_source(bag, rgb_topic=RGB, depth_topic=DEPTH, info_topic=INFO, world_frame="map", sync_slop_s=0.01)
    assert isinstance(src, RosbagSource) and src.sync_slop_s == 0.01
    assert "rosbag2" in src.describe() and RGB in src.describe()
    # a 1 ms slop is tighter than the depth jitter: most frames become unsynced
    tight = RosbagSource(bag, sync_slop_s=0.001)
    n = len(list(tight))
    assert n < 20 and tight.stats.dropped["unsynced"] == 20 - n


def test_missing_and_wrong_topics_list_what_the_bag_has(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", robot_events())
    with pytest.raises(RosbagError, match=r"rgb topic \(--rgb-topic\) '/nope' is not in bag .*topics of type "
                                          r"sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage: "
                                          r"/camera/camera/aligned_depth_to_color/image_raw, /camera/camera/color/image_raw") as exc:
        RosbagSource(bag, rgb_topic="/nope")
    assert "/tf [tf2_msgs/msg/TFMessage, 112 msgs]" in str(exc.value)
    with pytest.raises(RosbagError, match="depth topic .* has type sensor_msgs/msg/CameraInfo, expected sensor_msgs/msg/Image"):
        RosbagSource(bag, depth_topic=INFO)
    with pytest.raises(RosbagError, match="rgb topic and depth topic are both"):
        RosbagSource(bag, rgb_topic=DEPTH)
    no_tf = write_bag(tmp_path / "notf", [e for e in robot_events() if not e[1].startswith("/tf")])
    with pytest.raises(RosbagError, match="has neither /tf nor /tf_static"):
        RosbagSource(no_tf)


def test_not_a_bag_empty_bag_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RosbagSource(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RosbagError, match="plain is not a rosbag2: the directory has no metadata.yaml"):
        RosbagSource(tmp_path / "plain")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RosbagError, match="notes.txt is not a rosbag2"):
        RosbagSource(tmp_path / "notes.txt")
    (tmp_path / "junk.mcap").write_bytes(b"\x00" * 100)
    with pytest.raises(RosbagError, match=r"cannot read .*junk.mcap as a rosbag2: junk.mcap \(100 bytes\)"):
        RosbagSource(tmp_path / "junk.mcap")
    with Writer(tmp_path / "empty", version=8, storage_plugin=StoragePlugin.MCAP) as w:
        w.add_connection(RGB, IMG, typestore=TS)
    with pytest.raises(RosbagError, match="empty: it holds no messages"):
        RosbagSource(tmp_path / "empty")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_names_the_file(tmp_path: Path, storage: str) -> None:
    bag = write_bag(tmp_path / "bag", robot_events(), storage)
    f = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(RosbagError, match=rf"cannot read .* as a rosbag2: {f.name} \({len(data) // 2} bytes\)"):
        list(RosbagSource(bag))


def test_corrupt_message_reports_index_and_topic(tmp_path: Path) -> None:
    ev = robot_events()
    bad_log = IMAGE_STAMPS[7] + 12 * MS + 1
    ev.append((bad_log, DEPTH, IMG, b"\x00\x01\x00\x00garbage"))
    src = RosbagSource(write_bag(tmp_path / "bag", ev))
    with pytest.raises(RosbagError, match=r"is corrupt: bag.mcap \(\d+ bytes\): message #\d+ on "
                                          r"/camera/camera/aligned_depth_to_color/image_raw \(log time 100.762000 s"):
        list(src)
