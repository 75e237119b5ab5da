"""TfBuffer against independently composed matrices (scipy Rotation / Slerp), and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation, Slerp

from video3dllm_core.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    TfBuffer,
    TransformError,
    UnknownFrameError,
)

S = 1_000_000_000


def mat(t, rot: Rotation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rot.as_matrix()
    T[:3, 3] = t
    return T


# A RealSense-on-a-robot tree: map -> odom -> base_link -> camera_link -> camera_color_optical_frame,
# plus a sibling laser under base_link.
R_OPT = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True)  # REP-103 body -> optical
T_BASE_CAM = mat([0.2, 0.0, 1.1], Rotation.from_euler("y", 15, degrees=True))
T_CAM_OPT = mat([0.0, 0.015, 0.0], R_OPT)
T_BASE_LASER = mat([0.1, -0.05, 0.3], Rotation.from_euler("z", 180, degrees=True))
MAP_ODOM = {0: ([1.0, 2.0, 0.0], Rotation.from_euler("z", 10, degrees=True)),
            2 * S: ([1.2, 2.1, 0.0], Rotation.from_euler("z", 14, degrees=True))}
ODOM_BASE = {k * S // 2: ([0.5 * k, 0.1 * k * k, 0.0], Rotation.from_euler("zy", [20 * k, 2 * k], degrees=True))
             for k in range(5)}  # 0 .. 2 s every 0.5 s


def make_buffer(**kw) -> TfBuffer:
    buf = TfBuffer(**kw)
    for stamp, (t, r) in MAP_ODOM.items():
        buf.set_transform("map", "odom", stamp, t, r.as_quat())
    for stamp, (t, r) in ODOM_BASE.items():
        buf.set_transform("/odom", "base_link", stamp, t, r.as_quat())  # leading slash is dropped, as in tf2
    for parent, child, T in (("base_link", "camera_link", T_BASE_CAM), ("camera_link", "camera_color_optical_frame", T_CAM_OPT),
                             ("base_link", "laser", T_BASE_LASER)):
        buf.set_transform(parent, child, 0, T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_quat(), static=True)
    return buf


def interp(samples: dict, stamp: int) -> np.ndarray:
    """Independent interpolation: numpy interp for translation, scipy Slerp for rotation."""
    stamps = sorted(samples)
    ts = np.array([samples[s][0] for s in stamps], dtype=float)
    t = np.array([np.interp(stamp, stamps, ts[:, i]) for i in range(3)])
    rots = Rotation.concatenate([samples[s][1] for s in stamps])
    return mat(t, Slerp(np.array(stamps, dtype=float), rots)([float(stamp)])[0])


def test_full_chain_at_samples_and_between_matches_composed_matrices() -> None:
    buf = make_buffer()
    for stamp in (0, S // 2, 7 * S // 10, 1_234_567_891, 2 * S):
        expected = interp(MAP_ODOM, stamp) @ interp(ODOM_BASE, stamp) @ T_BASE_CAM @ T_CAM_OPT
        got = buf.lookup("map", "camera_color_optical_frame", stamp)
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_interpolation_is_lerp_and_slerp_at_the_midpoint() -> None:
    buf = TfBuffer()
    buf.set_transform("a", "b", 0, [0, 0, 0], Rotation.identity().as_quat())
    buf.set_transform("a", "b", 10, [1, 2, 3], Rotation.from_euler("z", 90, degrees=True).as_quat())
    T = buf.lookup("a", "b", 5)
    np.testing.assert_allclose(T[:3, 3], [0.5, 1.0, 1.5])
    np.testing.assert_allclose(T[:3, :3], Rotation.from_euler("z", 45, degrees=True).as_matrix(), atol=1e-12)


def test_down_and_across_the_tree_and_inverse() -> None:
    buf = make_buffer()
    stamp = S
    T_map_opt = buf.lookup("map", "camera_color_optical_frame", stamp)
    # down the tree: optical <- map is the inverse
    np.testing.assert_allclose(buf.lookup("camera_color_optical_frame", "map", stamp), np.linalg.inv(T_map_opt), atol=1e-12)
    # across: laser seen from the optical frame, common ancestor base_link
    expected = np.linalg.inv(T_BASE_CAM @ T_CAM_OPT) @ T_BASE_LASER
    np.testing.assert_allclose(buf.lookup("camera_color_optical_frame", "laser", stamp), expected, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("laser", "laser", stamp), np.eye(4))


def test_static_only_chain_holds_at_any_time() -> None:
    buf = make_buffer()
    for stamp in (0, 10**18):
        np.testing.assert_allclose(buf.lookup("base_link", "camera_color_optical_frame", stamp), T_BASE_CAM @ T_CAM_OPT, atol=1e-12)


def test_latest_stamp_when_none() -> None:
    buf = make_buffer()
    buf.set_transform("odom", "base_link", 3 * S, [9, 9, 9], [0, 0, 0, 1])  # odom->base newer than map->odom
    assert buf.latest_common_stamp("map", "base_link") == 2 * S
    np.testing.assert_allclose(buf.lookup("map", "base_link"), buf.lookup("map", "base_link", 2 * S))


def test_unknown_frame_names_the_frame_and_known_frames() -> None:
    buf = make_buffer()
    with pytest.raises(UnknownFrameError, match=r"target frame 'world' does not exist.*known frames: base_link") as exc:
        buf.lookup("world", "camera_link", S)
    assert isinstance(exc.value, LookupError)


def test_not_connected_names_both_roots() -> None:
    buf = make_buffer()
    buf.set_transform("other_map", "tag", 0, [0, 0, 0], [0, 0, 0, 1], static=True)
    with pytest.raises(ConnectivityError, match=r"not connected.*rooted at 'map'.*rooted at 'other_map'"):
        buf.lookup("other_map", "camera_link", S)


def test_extrapolation_future_and_past_report_the_range() -> None:
    buf = make_buffer()
    with pytest.raises(ExtrapolationError, match=r"'camera_link' -> 'map' at 2.050000000 s: extrapolation into the future: transform 'odom' -> 'base_link' is only known from 0.000000000 s to 2.000000000 s") as exc:
        buf.lookup("map", "camera_link", 2 * S + 50_000_000)
    assert exc.value.direction == "future" and exc.value.available_ns == (0, 2 * S)
    assert "0.050000 s after the newest" in str(exc.value)
    with pytest.raises(ExtrapolationError, match="into the past") as exc:
        buf.lookup("map", "camera_link", -1)
    assert exc.value.direction == "past"


def test_tolerance_holds_the_nearest_sample() -> None:
    buf = make_buffer(tolerance_s=0.1)
    late = buf.lookup("map", "camera_link", 2 * S + 50_000_000)
    np.testing.assert_allclose(late, buf.lookup("map", "camera_link", 2 * S))
    with pytest.raises(ExtrapolationError, match="tolerance 0.100000 s"):
        buf.lookup("map", "camera_link", 2 * S + 150_000_000)
    # per-call override
    with pytest.raises(ExtrapolationError):
        buf.lookup("map", "camera_link", 2 * S + 50_000_000, tolerance_ns=0)


def test_single_sample_edge_only_at_its_stamp() -> None:
    buf = TfBuffer()
    buf.set_transform("a", "b", 5 * S, [1, 0, 0], [0, 0, 0, 1])
    assert buf.lookup("a", "b", 5 * S)[0, 3] == 1.0
    with pytest.raises(ExtrapolationError):
        buf.lookup("a", "b", 5 * S + 1)


def test_cache_duration_bounds_history() -> None:
    buf = TfBuffer(cache_duration_s=2.0)
    for k in range(100):  # 0 .. 9.9 s at 10 Hz
        buf.set_transform("odom", "base_link", k * S // 10, [k, 0, 0], [0, 0, 0, 1])
    first, last = buf.time_range("base_link")  # type: ignore[misc]
    assert last == 99 * S // 10 and last - first <= 2 * S and len(buf._edges["base_link"].stamps) == 21
    with pytest.raises(ExtrapolationError, match="into the past"):
        buf.lookup("odom", "base_link", S)
    buf.set_transform("odom", "base_link", S, [0, 0, 0], [0, 0, 0, 1])  # too old on arrival: ignored
    assert buf.ignored_old == 1
    with pytest.raises(ValueError, match="cache_duration_s"):
        TfBuffer(cache_duration_s=0)


def test_out_of_order_and_repeated_samples() -> None:
    buf = TfBuffer()
    buf.set_transform("a", "b", 20, [2, 0, 0], [0, 0, 0, 1])
    buf.set_transform("a", "b", 0, [0, 0, 0], [0, 0, 0, 1])
    buf.set_transform("a", "b", 20, [99, 0, 0], [0, 0, 0, 1])  # repeated stamp: first one kept, like tf2
    assert buf.ignored_repeated == 1
    assert buf.lookup("a", "b", 10)[0, 3] == pytest.approx(1.0)


def test_bad_transforms_are_rejected_with_the_frame_names() -> None:
    buf = make_buffer()
    with pytest.raises(ValueError, match="odom -> base_link has a non-unit quaternion"):
        buf.set_transform("odom", "base_link", 0, [0, 0, 0], [0, 0, 0, 2])
    with pytest.raises(ValueError, match="loop"):
        buf.set_transform("camera_link", "odom", 0, [0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="parent == child"):
        buf.set_transform("a", "a", 0, [0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="child_frame_id is empty"):
        buf.set_transform("a", "", 0, [0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        buf.set_transform("a", "b", 0, [np.nan, 0, 0], [0, 0, 0, 1])
    # a nearly-unit quaternion is normalised
    buf.set_transform("x", "y", 0, [0, 0, 0], [0, 0, 0, 1.005], static=True)
    np.testing.assert_allclose(buf.lookup("x", "y", 0), np.eye(4), atol=1e-12)


def test_add_tf_message_from_rosbags_types() -> None:
    ts = get_typestore(Stores.ROS2_JAZZY)
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    TransformStamped = ts.types["geometry_msgs/msg/TransformStamped"]
    Transform = ts.types["geometry_msgs/msg/Transform"]
    Vector3 = ts.types["geometry_msgs/msg/Vector3"]
    Quaternion = ts.types["geometry_msgs/msg/Quaternion"]
    TFMessage = ts.types["tf2_msgs/msg/TFMessage"]
    q = Rotation.from_euler("z", 30, degrees=True).as_quat()
    msg = TFMessage(transforms=[
        TransformStamped(header=Header(stamp=Time(sec=3, nanosec=5), frame_id="odom"), child_frame_id="base_link",
                         transform=Transform(translation=Vector3(x=1.0, y=2.0, z=3.0),
                                             rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))),
    ])
    msg = ts.deserialize_cdr(ts.serialize_cdr(msg, TFMessage.__msgtype__), TFMessage.__msgtype__)
    buf = TfBuffer()
    assert buf.add_tf_message(msg) == 1
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 3 * S + 5), mat([1, 2, 3], Rotation.from_quat(q)), atol=1e-12)
    assert buf.time_range("base_link") == (3 * S + 5, 3 * S + 5)
    assert "odom -> base_link: 1 samples" in buf.describe()
    assert not buf.can_transform("odom", "base_link", 0)
    assert issubclass(ExtrapolationError, TransformError)
