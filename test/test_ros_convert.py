"""video3dllm_ros.convert with two real message libraries: rosbags (CDR round trips) and rclpy's classes.

Every message built here is serialised and read back; where rclpy has the type, its CDR bytes
are also decoded by rosbags, so both factories produce wire-identical messages.
"""

from __future__ import annotations

import dataclasses

from typing import Any

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation

from _ros_support import cdr_roundtrip, interface_typestore
from video3dllm_core.answer import Answer, GroundedObject
from video3dllm_core.image_codec import CameraInfoSizeError, ImageCodecError, intrinsics_for_depth
from video3dllm_ros import convert
from video3dllm_ros.factory import (
    MessageTypeError,
    PlainFactory,
    RclpyFactory,
    TypestoreFactory,
    normalise_type_name,
)

STORE = interface_typestore()
TS = TypestoreFactory(STORE)
RCL = RclpyFactory()
STAMP = 1_700_000_123_456_789_012


def rclpy_roundtrip(msg: Any) -> Any:
    return deserialize_message(serialize_message(msg), type(msg))


def via_rosbags(msg: Any, type_name: str) -> Any:
    """An rclpy message's CDR bytes decoded by rosbags: the two libraries agree on the wire format."""
    return STORE.deserialize_cdr(bytes(serialize_message(msg)), type_name)


def rgb_image(h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def depth_image(h: int = 12, w: int = 16) -> np.ndarray:
    d = np.random.default_rng(1).uniform(0.3, 6.0, size=(h, w)).astype(np.float32)
    d[0, 0] = 0.0
    return d


def random_rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.uniform(-30, 30, 3)
    return T


ANSWER = Answer(
    question="where are the chairs?",
    task="ground_multi",
    text="two chairs next to the table",
    objects=(
        GroundedObject(center_xyz=(1.0, 2.0, 0.5), size_xyz=(0.4, 0.6, 1.0), score=0.8, label="chair", proposal_index=3),
        GroundedObject(center_xyz=(-2.0, 0.5, 0.45), size_xyz=(0.5, 0.5, 0.9), score=0.15, label="", proposal_index=7),
    ),
    keyframe_stamps_ns=(STAMP - 2_000_000_000, STAMP - 1_000_000_000),
    coverage=0.93,
    proposal_stamps_ns=(STAMP - 3_000_000_000, STAMP - 2_000_000_000, STAMP - 1_500_000_000, STAMP - 1_000_000_000),
)


# ----------------------------------------------------------------------------- factories
def test_type_names_are_normalised_and_checked() -> None:
    assert normalise_type_name("sensor_msgs/Image") == "sensor_msgs/msg/Image"
    assert normalise_type_name("/std_srvs/srv/Trigger") == "std_srvs/srv/Trigger"
    with pytest.raises(ValueError, match="pkg/msg/Name"):
        normalise_type_name("Image")


def test_typestore_factory_fills_defaults_and_names_bad_fields() -> None:
    marker = TS.new("visualization_msgs/msg/Marker", ns="x")
    assert marker.ns == "x" and marker.points == [] and marker.header.frame_id == ""
    assert marker.pose.orientation.w == 0.0  # rosbags drops .msg defaults: convert always sets orientations
    info = TS.new("sensor_msgs/msg/CameraInfo")
    assert info.k.shape == (9,) and info.k.dtype == np.float64 and info.d.size == 0
    with pytest.raises(ValueError, match=r"no field\(s\) \['colour'\]"):
        TS.new("visualization_msgs/msg/Marker", colour=None)
    with pytest.raises(MessageTypeError, match="get_types_from_msg"):
        TS.new("nonexistent_msgs/msg/Thing")
    with pytest.raises(ValueError, match="needs 9 values"):
        TS.new("sensor_msgs/msg/CameraInfo", k=[1.0, 2.0])


def test_rclpy_factory_names_the_missing_package() -> None:
    assert RCL.has("sensor_msgs/msg/Image")
    assert not RCL.has("nonexistent_msgs/msg/Thing")
    with pytest.raises(MessageTypeError, match="ros-\\$ROS_DISTRO-nonexistent-msgs"):
        RCL.new("nonexistent_msgs/msg/Thing")


def test_plain_factory_carries_fields() -> None:
    obj = PlainFactory().new("video3dllm/GroundedObject", label="cup", score=0.5)
    assert (obj.msg_type, obj.label, obj.score) == ("video3dllm/msg/GroundedObject", "cup", 0.5)


# ------------------------------------------------------------------------------- images
COLOUR = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]
DEPTH = ["16UC1", "mono16", "32FC1"]


@pytest.mark.parametrize("encoding", COLOUR)
@pytest.mark.parametrize("lib", ["rosbags", "rclpy"])
def test_colour_images_roundtrip(encoding: str, lib: str) -> None:
    rgb = rgb_image()
    if lib == "rosbags":
        msg = cdr_roundtrip(STORE, convert.image_msg(TS, rgb, STAMP, "cam", encoding))
    else:
        msg = rclpy_roundtrip(convert.image_msg(RCL, rgb, STAMP, "cam", encoding))
    assert convert.stamp_to_ns(msg.header.stamp) == STAMP and msg.header.frame_id == "cam"
    out = convert.decode_rgb(msg)
    if encoding == "mono8":  # grey = ITU-R 601 luma, replicated
        grey = np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(out[..., 0].astype(float) - grey).max() <= 1.0
        assert np.array_equal(out[..., 0], out[..., 2])
    else:
        assert np.array_equal(out, rgb)


@pytest.mark.parametrize("encoding", DEPTH)
@pytest.mark.parametrize("lib", ["rosbags", "rclpy"])
def test_depth_images_roundtrip(encoding: str, lib: str) -> None:
    depth = depth_image()
    factory, rt = (TS, lambda m: cdr_roundtrip(STORE, m)) if lib == "rosbags" else (RCL, rclpy_roundtrip)
    out = convert.decode_depth_m(rt(convert.image_msg(factory, depth, STAMP, "cam", encoding)))
    tol = 0.0005 if encoding != "32FC1" else 0.0
    assert out.dtype == np.float32 and np.abs(out - depth).max() <= tol + 1e-7


@pytest.mark.parametrize("fmt", ["jpeg", "png", "16UC1", "32FC1"])
@pytest.mark.parametrize("lib", ["rosbags", "rclpy"])
def test_compressed_images_roundtrip(fmt: str, lib: str) -> None:
    factory, rt = (TS, lambda m: cdr_roundtrip(STORE, m)) if lib == "rosbags" else (RCL, rclpy_roundtrip)
    if fmt in ("jpeg", "png"):
        y, x = np.mgrid[0:24, 0:32]
        rgb = np.stack([x * 7, y * 9, (x + y) * 3], axis=2).astype(np.uint8)
        out = convert.decode_rgb(rt(convert.compressed_image_msg(factory, rgb, STAMP, "cam", fmt)))
        assert np.abs(out.astype(int) - rgb).max() <= (0 if fmt == "png" else 12)
    else:
        depth = depth_image()
        msg = rt(convert.compressed_image_msg(factory, depth, STAMP, "cam", fmt))
        assert msg.format == f"{fmt}; compressedDepth png"
        out = convert.decode_depth_m(msg)
        valid = depth > 0
        # 16UC1: millimetres; 32FC1: inverse-depth quantisation error grows with depth^2 (<= ~4 cm at 6 m).
        tol = 0.0005 if fmt == "16UC1" else 0.045
        assert np.abs(out[valid] - depth[valid]).max() <= tol
        assert out[0, 0] == 0 or np.isnan(out[0, 0])


def test_unknown_encodings_are_refused_with_the_supported_list() -> None:
    with pytest.raises(ImageCodecError, match="rgb8"):
        convert.image_msg(TS, rgb_image(), STAMP, "cam", "yuv422")
    with pytest.raises(ImageCodecError, match="jpeg/png"):
        convert.compressed_image_msg(TS, rgb_image(), STAMP, "cam", "webp")


def test_camera_info_intrinsics_and_size_check() -> None:
    K = np.array([[525.0, 0, 319.5], [0, 526.0, 239.5], [0, 0, 1]])
    for msg in (cdr_roundtrip(STORE, convert.camera_info_msg(TS, K, 640, 480, STAMP, "cam")),
                rclpy_roundtrip(convert.camera_info_msg(RCL, K, 640, 480, STAMP, "cam"))):
        assert np.array_equal(intrinsics_for_depth(msg, (480, 640)), K)
        with pytest.raises(CameraInfoSizeError, match=r"640x480 but the depth image is 320x240.*info_topic"):
            intrinsics_for_depth(msg, (240, 320))
        depth = convert.image_msg(TS, np.ones((240, 320), np.float32), STAMP, "cam", "32FC1")
        with pytest.raises(CameraInfoSizeError, match=r"^camera_info is 640x480 but the depth image is 320x240"):
            convert.posed_frame_from_messages(convert.image_msg(TS, rgb_image(240, 320), STAMP, "cam", "rgb8"),
                                              depth, msg, np.eye(4))
    uncalibrated = TS.new("sensor_msgs/msg/CameraInfo", width=640, height=480)
    with pytest.raises(ImageCodecError, match="not calibrated"):
        intrinsics_for_depth(uncalibrated)


def test_posed_frame_from_messages_matches_the_source_frame() -> None:
    from video3dllm_core.synthetic import make_scene, render_frames

    frame = render_frames(make_scene(seed=2), 1, width=48, height=36)[0]
    h, w = frame.depth_m.shape
    color = rclpy_roundtrip(convert.image_msg(RCL, frame.rgb, STAMP, "cam", "bgr8"))
    depth = rclpy_roundtrip(convert.image_msg(RCL, frame.depth_m, STAMP + 5, "cam", "32FC1"))
    info = rclpy_roundtrip(convert.camera_info_msg(RCL, frame.K_depth, w, h, STAMP, "cam"))
    out = convert.posed_frame_from_messages(color, depth, info, frame.T_world_cam)
    assert out.stamp_ns == STAMP
    assert np.array_equal(out.rgb, frame.rgb) and np.array_equal(out.depth_m, frame.depth_m)
    assert np.array_equal(out.K_depth, frame.K_depth) and np.array_equal(out.T_world_cam, frame.T_world_cam)
    wrong = rclpy_roundtrip(convert.camera_info_msg(RCL, frame.K_depth, 2 * w, 2 * h, STAMP, "cam"))
    with pytest.raises(CameraInfoSizeError, match=rf"^camera_info is {2 * w}x{2 * h} but the depth image is {w}x{h}: "
                                                  r"pass the depth image's own camera_info"):
        convert.posed_frame_from_messages(color, depth, wrong, frame.T_world_cam)


# -------------------------------------------------------------------------------- poses
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transforms_and_poses_roundtrip(seed: int) -> None:
    T = random_rigid(seed)
    for factory, rt in ((TS, lambda m: cdr_roundtrip(STORE, m)), (RCL, rclpy_roundtrip)):
        ts = rt(convert.matrix_to_transform_stamped(factory, T, "map", "camera_optical", STAMP))
        assert (ts.header.frame_id, ts.child_frame_id) == ("map", "camera_optical")
        assert ts.transform.rotation.w >= 0
        assert np.allclose(convert.transform_to_matrix(ts), T, atol=1e-12)
        assert np.allclose(convert.pose_to_matrix(rt(convert.matrix_to_pose(factory, T))), T, atol=1e-12)
    # Independent check of the quaternion convention (x, y, z, w) against scipy.
    q = Rotation.from_matrix(T[:3, :3]).as_quat()
    pose = convert.matrix_to_pose(RCL, T)
    got = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w])
    assert np.allclose(got, q if q[3] >= 0 else -q)


def test_pose_array_of_keyframes() -> None:
    poses = [random_rigid(s) for s in range(3)]
    msg = via_rosbags(convert.poses_to_pose_array(RCL, poses, "map", STAMP), "geometry_msgs/msg/PoseArray")
    assert msg.header.frame_id == "map" and len(msg.poses) == 3
    for p, T in zip(msg.poses, poses):
        assert np.allclose(convert.pose_to_matrix(p), T, atol=1e-12)


# ------------------------------------------------------------------------------ markers
def _corners(center: tuple[float, ...], size: tuple[float, ...]) -> set[tuple[float, ...]]:
    c, h = np.array(center), np.array(size) / 2
    return {tuple(np.round(c + h * np.array([sx, sy, sz]), 9)) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)}


@pytest.mark.parametrize("lib", ["rosbags", "rclpy"])
def test_answer_markers(lib: str) -> None:
    if lib == "rosbags":
        msg = cdr_roundtrip(STORE, convert.answer_to_marker_array(TS, ANSWER, "map", STAMP, lifetime_s=2.5))
    else:
        msg = via_rosbags(convert.answer_to_marker_array(RCL, ANSWER, "map", STAMP, lifetime_s=2.5),
                          "visualization_msgs/msg/MarkerArray")
    markers = msg.markers
    assert len(markers) == 1 + 3 * len(ANSWER.objects)
    assert markers[0].action == convert.MARKER_DELETEALL
    for m in markers:
        assert m.header.frame_id == "map" and convert.stamp_to_ns(m.header.stamp) == STAMP
        assert (m.lifetime.sec, m.lifetime.nanosec) == (2, 500_000_000)
        assert m.pose.orientation.w == 1.0
    for i, obj in enumerate(ANSWER.objects):
        box, fill, label = (next(m for m in markers if m.ns == f"video3dllm/{kind}" and m.id == i)
                            for kind in ("box", "fill", "label"))
        assert box.type == convert.MARKER_LINE_LIST and len(box.points) == 24
        pts = np.array([[p.x, p.y, p.z] for p in box.points])
        assert {tuple(np.round(p, 9)) for p in pts} == _corners(obj.center_xyz, obj.size_xyz)
        seg = pts[1::2] - pts[0::2]  # 12 edges, each along one axis with that axis' box size
        assert np.all(np.count_nonzero(np.abs(seg) > 1e-9, axis=1) == 1)
        assert sorted(np.round(np.abs(seg).sum(axis=1), 9)) == sorted(np.round(np.repeat(obj.size_xyz, 4), 9))
        assert fill.type == convert.MARKER_CUBE and 0 < fill.color.a < 1
        assert np.allclose([fill.pose.position.x, fill.pose.position.y, fill.pose.position.z], obj.center_xyz)
        assert np.allclose([fill.scale.x, fill.scale.y, fill.scale.z], obj.size_xyz)
        assert label.type == convert.MARKER_TEXT_VIEW_FACING
        assert label.pose.position.z > obj.center_xyz[2] + obj.size_xyz[2] / 2
        assert f"({obj.score:.2f})" in label.text
    first_label = next(m for m in markers if m.ns == "video3dllm/label" and m.id == 0).text
    second_label = next(m for m in markers if m.ns == "video3dllm/label" and m.id == 1).text
    assert first_label.startswith("chair (0.80)") and "two chairs next to the table" in first_label
    assert second_label == "object 2 (0.15)"


def _turned_answer() -> Answer:
    """One object in a scene frame turned by 30 degrees: its tight box (0.4 x 0.6 x 1.0 m) and its map hull."""
    yaw, (a, b, h) = np.radians(30.0), (0.4, 0.6, 1.0)
    c, s = np.cos(yaw), np.sin(yaw)
    hull = (c * a + s * b, s * a + c * b, h)
    obj = GroundedObject(center_xyz=(1.0, 2.0, 0.5), size_xyz=hull, score=0.7, label="chair", proposal_index=0,
                         box_size_xyz=(a, b, h), yaw_rad=yaw)
    return Answer(question="where is the chair?", task="ground", text="1 object", objects=(obj,))


def test_turned_boxes_are_drawn_and_sent_tight() -> None:
    """Markers, detections and the Query response carry the tight box turned by yaw_rad, not the map hull; read
    back as external boxes, a detection becomes that hull again."""
    answer = _turned_answer()
    obj = answer.objects[0]
    q = (0.0, 0.0, np.sin(obj.yaw_rad / 2), np.cos(obj.yaw_rad / 2))
    markers = cdr_roundtrip(STORE, convert.answer_to_marker_array(TS, answer, "map", STAMP)).markers
    box, fill = (next(m for m in markers if m.ns == f"video3dllm/{kind}") for kind in ("box", "fill"))
    R = Rotation.from_euler("z", obj.yaw_rad).as_matrix()
    corners = {tuple(np.round(np.asarray(obj.center_xyz) + R @ (np.asarray(obj.box_size_xyz) / 2 * np.array([sx, sy, sz])), 9))
               for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)}
    assert {tuple(np.round([p.x, p.y, p.z], 9)) for p in box.points} == corners
    o = fill.pose.orientation
    assert np.allclose([o.x, o.y, o.z, o.w], q) and np.allclose([fill.scale.x, fill.scale.y, fill.scale.z], obj.box_size_xyz)
    detections = cdr_roundtrip(STORE, convert.answer_to_detection_array(TS, answer, "map", STAMP))
    bbox = detections.detections[0].bbox
    o = bbox.center.orientation
    assert np.allclose([o.x, o.y, o.z, o.w], q) and np.allclose([bbox.size.x, bbox.size.y, bbox.size.z], obj.box_size_xyz)
    back = convert.detections_to_boxes(detections)
    assert np.allclose(back.centers[0], obj.center_xyz) and np.allclose(back.sizes[0], obj.size_xyz)
    fields = convert.answer_to_query_fields(TS, answer, "map", STAMP, 0.0)
    response = cdr_roundtrip(STORE, TS.new("video3dllm/msg/Query_Response", **fields))
    o = response.objects[0].bbox.center.orientation
    assert np.allclose([o.x, o.y, o.z, o.w], q)
    assert np.allclose([response.objects[0].bbox.size.x, response.objects[0].bbox.size.y], obj.box_size_xyz[:2])


def test_marker_constants_match_rclpy() -> None:
    from sensor_msgs.msg import PointField
    from visualization_msgs.msg import Marker

    assert (Marker.CUBE, Marker.LINE_LIST, Marker.TEXT_VIEW_FACING, Marker.ADD, Marker.DELETEALL) == (
        convert.MARKER_CUBE, convert.MARKER_LINE_LIST, convert.MARKER_TEXT_VIEW_FACING, convert.MARKER_ADD,
        convert.MARKER_DELETEALL)
    assert (PointField.FLOAT32, PointField.FLOAT64) == (convert.POINTFIELD_FLOAT32, convert.POINTFIELD_FLOAT64)


def test_empty_answer_markers_only_clear() -> None:
    msg = convert.answer_to_marker_array(RCL, Answer(question="q", task="qa", text="a sofa"), "map", STAMP)
    assert [m.action for m in msg.markers] == [convert.MARKER_DELETEALL]


# --------------------------------------------------------------------------- detections
def test_detections_roundtrip_and_back_to_boxes() -> None:
    msg = cdr_roundtrip(STORE, convert.answer_to_detection_array(TS, ANSWER, "map", STAMP))
    assert msg.header.frame_id == "map" and len(msg.detections) == 2
    det = msg.detections[0]
    assert det.id == "3" and det.results[0].hypothesis.class_id == "chair"
    assert det.results[0].hypothesis.score == pytest.approx(0.8)
    assert msg.detections[1].results[0].hypothesis.class_id == "object"
    boxes = convert.detections_to_boxes(msg)
    assert boxes.frame_id == "map" and boxes.labels == ("chair", "object")
    assert np.allclose(boxes.centers, [o.center_xyz for o in ANSWER.objects])
    assert np.allclose(boxes.sizes, [o.size_xyz for o in ANSWER.objects])
    assert np.allclose(boxes.scores, [0.8, 0.15])


def test_rotated_detections_become_axis_aligned_hulls() -> None:
    def det(yaw_deg: float, size: tuple[float, float, float]) -> Any:
        q = Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()
        pose = TS.new("geometry_msgs/msg/Pose", position=TS.new("geometry_msgs/msg/Point", x=1.0, y=2.0, z=3.0),
                      orientation=TS.new("geometry_msgs/msg/Quaternion", x=q[0], y=q[1], z=q[2], w=q[3]))
        box = TS.new("vision_msgs/msg/BoundingBox3D", center=pose,
                     size=TS.new("geometry_msgs/msg/Vector3", x=size[0], y=size[1], z=size[2]))
        return TS.new("vision_msgs/msg/Detection3D", bbox=box)

    msg = TS.new("vision_msgs/msg/Detection3DArray", detections=[det(90, (2.0, 1.0, 0.5)), det(45, (1.0, 1.0, 0.5))])
    boxes = convert.detections_to_boxes(cdr_roundtrip(STORE, msg))
    assert np.allclose(boxes.sizes[0], [1.0, 2.0, 0.5])
    assert np.allclose(boxes.sizes[1], [np.sqrt(2), np.sqrt(2), 0.5])
    assert boxes.labels == ("", "") and np.allclose(boxes.centers, [[1, 2, 3], [1, 2, 3]])
    bad = TS.new("vision_msgs/msg/Detection3DArray", detections=[det(0, (1.0, 0.0, 1.0))])
    with pytest.raises(ValueError, match=r"detections\[0\]\.bbox\.size"):
        convert.detections_to_boxes(bad)


# ------------------------------------------------------------------------- query fields
def test_query_response_fields_build_the_real_response_type() -> None:
    fields = convert.answer_to_query_fields(TS, ANSWER, "map", STAMP, latency_s=0.25)
    msg = cdr_roundtrip(STORE, TS.new("video3dllm/msg/Query_Response", **fields))
    assert msg.success and msg.answer == ANSWER.text and msg.message == ""
    assert msg.header.frame_id == "map" and msg.keyframe_count == 2
    assert [convert.stamp_to_ns(t) for t in msg.keyframe_stamps] == list(ANSWER.keyframe_stamps_ns)
    assert [convert.stamp_to_ns(t) for t in msg.proposal_stamps] == list(ANSWER.proposal_stamps_ns)
    assert msg.coverage == pytest.approx(0.93) and msg.latency_s == pytest.approx(0.25)
    assert [o.label for o in msg.objects] == ["chair", ""]
    assert msg.objects[0].score == pytest.approx(0.8)
    b = msg.objects[0].bbox
    assert (b.center.position.x, b.center.position.y, b.center.position.z) == (1.0, 2.0, 0.5)
    assert (b.size.x, b.size.y, b.size.z) == pytest.approx((0.4, 0.6, 1.0))
    assert b.center.orientation.w == 1.0
    assert msg.decoding == ""  # a grounding answer
    caption = dataclasses.replace(ANSWER, task="caption", decoding="listener")
    fields = convert.answer_to_query_fields(TS, caption, "map", STAMP, latency_s=0.25)
    assert cdr_roundtrip(STORE, TS.new("video3dllm/msg/Query_Response", **fields)).decoding == "listener"


def test_error_answer_becomes_unsuccessful_response() -> None:
    answer = Answer(question="q", task="auto", error="no frames yet: publish RGB-D first")
    fields = convert.answer_to_query_fields(TS, answer, "map", STAMP, 0.0)
    assert fields["success"] is False and fields["message"] == "no frames yet: publish RGB-D first"
    assert fields["objects"] == [] and fields["keyframe_count"] == 0 and fields["proposal_stamps"] == []


# ------------------------------------------------------------------------------- clouds
@pytest.mark.parametrize("lib", ["rosbags", "rclpy"])
def test_pointcloud_roundtrip(lib: str) -> None:
    pts = np.random.default_rng(3).uniform(-5, 5, (100, 3)).astype(np.float32)
    if lib == "rosbags":
        msg = cdr_roundtrip(STORE, convert.points_to_pointcloud2(TS, pts, "map", STAMP))
    else:
        msg = via_rosbags(convert.points_to_pointcloud2(RCL, pts, "map", STAMP), "sensor_msgs/msg/PointCloud2")
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 100, 12, 1200)
    assert [f.name for f in msg.fields] == ["x", "y", "z"] and msg.is_dense
    assert np.array_equal(convert.pointcloud2_to_points(msg), pts)
    empty = convert.points_to_pointcloud2(RCL, np.zeros((0, 3)), "map", STAMP)
    assert convert.pointcloud2_to_points(rclpy_roundtrip(empty)).shape == (0, 3)


def test_pointcloud_reader_handles_padding_float64_and_big_endian() -> None:
    pts = np.random.default_rng(4).normal(size=(5, 3))
    rec = np.zeros(5, dtype=np.dtype({"names": ["x", "y", "z", "i"], "formats": [">f8", ">f8", ">f8", ">f4"],
                                      "offsets": [0, 8, 16, 24], "itemsize": 32}))
    rec["x"], rec["y"], rec["z"] = pts.T
    fields = [TS.new("sensor_msgs/msg/PointField", name=n, offset=8 * k, datatype=convert.POINTFIELD_FLOAT64, count=1)
              for k, n in enumerate("xyz")]
    msg = TS.new("sensor_msgs/msg/PointCloud2", height=1, width=5, fields=fields, is_bigendian=True, point_step=32,
                 row_step=160, data=rec.view(np.uint8).reshape(-1))
    assert np.allclose(convert.pointcloud2_to_points(cdr_roundtrip(STORE, msg)), pts.astype(np.float32))
    no_z = TS.new("sensor_msgs/msg/PointCloud2", fields=fields[:2])
    with pytest.raises(ValueError, match=r"no field\(s\) \['z'\]"):
        convert.pointcloud2_to_points(no_z)


# -------------------------------------------------------------------------- diagnostics
def test_diagnostics_in_both_libraries() -> None:
    values = {"ingest_rate_hz": "14.50", "pool_size": 12}
    rcl = convert.diagnostic_array(RCL, STAMP, "video3dllm: scene engine", convert.DIAGNOSTIC_WARN, "slow", values)
    assert rcl.status[0].level == b"\x01"  # rclpy maps `byte` to bytes
    decoded = via_rosbags(rcl, "diagnostic_msgs/msg/DiagnosticArray")
    status = decoded.status[0]
    assert (status.level, status.name, status.message) == (1, "video3dllm: scene engine", "slow")
    assert {kv.key: kv.value for kv in status.values} == {"ingest_rate_hz": "14.50", "pool_size": "12"}
    bag = cdr_roundtrip(STORE, convert.diagnostic_array(TS, STAMP, "n", convert.DIAGNOSTIC_OK, "", values))
    assert bag.status[0].level == 0


def test_time_and_duration_fields() -> None:
    t = convert.time_msg(RCL, STAMP)
    assert (t.sec, t.nanosec) == (STAMP // 10**9, STAMP % 10**9)
    with pytest.raises(ValueError, match="stamp_ns must be >= 0"):
        convert.time_msg(RCL, -1)
    d = convert.duration_msg(TS, 0.25)
    assert (d.sec, d.nanosec) == (0, 250_000_000)
