"""ROS messages <-> numpy and engine results -> ROS messages, for any message library.

Reading works on any object with the standard ROS 2 field names (rclpy messages, `rosbags`
dataclasses, plain namespaces); writing goes through a `factory.MessageFactory`, so the same code
builds rclpy messages in the node and rosbags messages in tests and bag tools.

Images are decoded and encoded by `video3dllm_core.image_codec` (every encoding the bag source
supports: rgb8/bgr8/rgba8/bgra8/mono8, 16UC1/mono16/32FC1 depth, JPEG/PNG CompressedImage and
compressedDepth PNG); this module only adds headers and the message types around it.

Conventions (see DESIGN.md): stamps are integer nanoseconds, `T_world_cam` is a 4x4
camera-to-world transform, boxes are (center_xyz, size_xyz) in the world frame: axis-aligned, except the
answer's outputs (markers, detections, the Query response), which draw each grounded object's tight box,
turned by its `yaw_rad` about up when the engine's scene frame runs along a turned room's walls.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation

from video3dllm_core.answer import Answer, GroundedObject
from video3dllm_core.frame import PosedFrame
from video3dllm_core.geometry import (
    box_edge_points,
    transform_from_translation_quaternion,
    translation_quaternion_from_transform,
)
from video3dllm_core.image_codec import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    ImageCodecError,
    decode_depth_m,
    decode_rgb,
    encode_camera_info,
    encode_depth_compressed,
    encode_depth_image,
    encode_rgb_compressed,
    encode_rgb_image,
    intrinsics_for_depth,
)
from video3dllm_core.tf_buffer import stamp_to_ns
from video3dllm_ros.factory import MessageFactory

__all__ = [
    "NS_PER_S",
    "MARKER_CUBE",
    "MARKER_LINE_LIST",
    "MARKER_TEXT_VIEW_FACING",
    "MARKER_ADD",
    "MARKER_DELETEALL",
    "POINTFIELD_FLOAT32",
    "POINTFIELD_FLOAT64",
    "DIAGNOSTIC_OK",
    "DIAGNOSTIC_WARN",
    "DIAGNOSTIC_ERROR",
    "stamp_to_ns",
    "time_msg",
    "duration_msg",
    "header_msg",
    "decode_rgb",
    "decode_depth_m",
    "image_msg",
    "compressed_image_msg",
    "camera_info_msg",
    "posed_frame_from_messages",
    "transform_to_matrix",
    "pose_to_matrix",
    "matrix_to_pose",
    "matrix_to_transform_stamped",
    "answer_to_marker_array",
    "answer_to_detection_array",
    "grounded_object_msg",
    "answer_to_query_fields",
    "ExternalBoxes",
    "detections_to_boxes",
    "points_to_pointcloud2",
    "pointcloud2_to_points",
    "poses_to_pose_array",
    "diagnostic_array",
]

NS_PER_S = 1_000_000_000

# visualization_msgs/Marker constants (identical in every ROS 2 distribution).
MARKER_CUBE = 1
MARKER_LINE_LIST = 5
MARKER_TEXT_VIEW_FACING = 9
MARKER_ADD = 0
MARKER_DELETEALL = 3
# sensor_msgs/PointField datatypes.
POINTFIELD_FLOAT32 = 7
POINTFIELD_FLOAT64 = 8
# diagnostic_msgs/DiagnosticStatus levels (bytes on the wire).
DIAGNOSTIC_OK = 0
DIAGNOSTIC_WARN = 1
DIAGNOSTIC_ERROR = 2

# Distinct, colour-blind friendly box colours (Okabe-Ito), RGB in 0..1.
_PALETTE = (
    (0.90, 0.62, 0.00),
    (0.34, 0.71, 0.91),
    (0.00, 0.62, 0.45),
    (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70),
    (0.84, 0.37, 0.00),
    (0.80, 0.47, 0.65),
)


# ----------------------------------------------------------------------------- time
def time_msg(factory: MessageFactory, stamp_ns: int) -> Any:
    """builtin_interfaces/Time from integer nanoseconds (must be >= 0)."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"stamp_ns must be >= 0 to fit builtin_interfaces/Time, got {stamp_ns}")
    return factory.new("builtin_interfaces/msg/Time", sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)


def duration_msg(factory: MessageFactory, seconds: float) -> Any:
    """builtin_interfaces/Duration from seconds (>= 0)."""
    if not seconds >= 0:
        raise ValueError(f"duration must be >= 0 seconds, got {seconds}")
    total = int(round(seconds * NS_PER_S))
    return factory.new("builtin_interfaces/msg/Duration", sec=total // NS_PER_S, nanosec=total % NS_PER_S)


def header_msg(factory: MessageFactory, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header."""
    return factory.new("std_msgs/msg/Header", stamp=time_msg(factory, stamp_ns), frame_id=str(frame_id))


# --------------------------------------------------------------------------- images
def image_msg(factory: MessageFactory, array: np.ndarray, stamp_ns: int, frame_id: str, encoding: str) -> Any:
    """sensor_msgs/Image from an RGB uint8 image (colour encodings) or depth in metres (depth encodings)."""
    if encoding in COLOR_ENCODINGS:
        fields = encode_rgb_image(array, encoding)
    elif encoding in DEPTH_ENCODINGS:
        fields = encode_depth_image(array, encoding)
    else:
        raise ImageCodecError(
            f"cannot encode an image as '{encoding}'; supported: {', '.join(COLOR_ENCODINGS + DEPTH_ENCODINGS)}"
        )
    return factory.new("sensor_msgs/msg/Image", header=header_msg(factory, stamp_ns, frame_id), **fields)


def compressed_image_msg(factory: MessageFactory, array: np.ndarray, stamp_ns: int, frame_id: str, fmt: str) -> Any:
    """sensor_msgs/CompressedImage as image_transport writes it.

    fmt: "jpeg" or "png" for an RGB uint8 image; "16UC1" or "32FC1" for depth in metres
    (compressed_depth_image_transport's PNG layout).
    """
    if fmt in ("jpeg", "png"):
        fields = encode_rgb_compressed(array, fmt)
    elif fmt in ("16UC1", "32FC1"):
        fields = encode_depth_compressed(array, fmt)
    else:
        raise ImageCodecError(f"compressed format must be jpeg/png (colour) or 16UC1/32FC1 (depth), got '{fmt}'")
    return factory.new("sensor_msgs/msg/CompressedImage", header=header_msg(factory, stamp_ns, frame_id), **fields)


def camera_info_msg(factory: MessageFactory, K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str) -> Any:
    """sensor_msgs/CameraInfo of a rectified pinhole camera with intrinsics K."""
    return factory.new(
        "sensor_msgs/msg/CameraInfo", header=header_msg(factory, stamp_ns, frame_id), **encode_camera_info(K, width, height)
    )


def posed_frame_from_messages(color: Any, depth: Any, info: Any, T_world_cam: np.ndarray, stamp_ns: int | None = None) -> PosedFrame:
    """Colour + depth + camera_info messages and a pose -> validated PosedFrame.

    The stamp defaults to the colour header stamp; K comes from `image_codec.intrinsics_for_depth`
    (the bag source's check too: camera_info must describe the depth image's resolution). Raises
    ImageCodecError (CameraInfoSizeError for a size mismatch) or FrameError, all ValueError,
    naming the field at fault.
    """
    rgb = decode_rgb(color)
    depth_m = decode_depth_m(depth)
    K = intrinsics_for_depth(info, depth_m.shape)
    stamp = stamp_to_ns(color.header.stamp) if stamp_ns is None else int(stamp_ns)
    return PosedFrame(stamp_ns=stamp, rgb=rgb, depth_m=depth_m, K_depth=K, T_world_cam=np.asarray(T_world_cam, dtype=np.float64))


# ---------------------------------------------------------------------------- poses
def transform_to_matrix(msg: Any) -> np.ndarray:
    """geometry_msgs/Transform or TransformStamped -> 4x4 T_parent_child (float64)."""
    tf = getattr(msg, "transform", msg)
    t, q = tf.translation, tf.rotation
    return transform_from_translation_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def pose_to_matrix(msg: Any) -> np.ndarray:
    """geometry_msgs/Pose or PoseStamped -> 4x4 transform (pose of the body in the header frame)."""
    pose = getattr(msg, "pose", msg)
    p, q = pose.position, pose.orientation
    return transform_from_translation_quaternion((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def _quaternion(factory: MessageFactory, q: ArrayLike) -> Any:
    q = np.asarray(q, dtype=np.float64)
    return factory.new("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def _point(factory: MessageFactory, xyz: ArrayLike) -> Any:
    xyz = np.asarray(xyz, dtype=np.float64)
    return factory.new("geometry_msgs/msg/Point", x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _vector3(factory: MessageFactory, xyz: ArrayLike) -> Any:
    xyz = np.asarray(xyz, dtype=np.float64)
    return factory.new("geometry_msgs/msg/Vector3", x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _identity_pose(factory: MessageFactory, xyz: ArrayLike) -> Any:
    return factory.new("geometry_msgs/msg/Pose", position=_point(factory, xyz), orientation=_quaternion(factory, (0, 0, 0, 1)))


def _box_pose(factory: MessageFactory, obj: GroundedObject) -> Any:
    """Pose of a grounded object's tight box: its centre, turned by `yaw_rad` about up (identity when 0)."""
    half = obj.yaw_rad / 2.0
    return factory.new("geometry_msgs/msg/Pose", position=_point(factory, obj.center_xyz),
                       orientation=_quaternion(factory, (0.0, 0.0, np.sin(half), np.cos(half))))


def _box_edges(obj: GroundedObject) -> np.ndarray:
    """[24, 3] LINE_LIST endpoints of the object's tight box (`box_edge_points` turned by `yaw_rad`)."""
    center = np.asarray(obj.center_xyz, dtype=np.float64)
    local = box_edge_points(np.zeros(3), obj.oriented_size_xyz)
    c, s = np.cos(obj.yaw_rad), np.sin(obj.yaw_rad)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return local @ R.T + center


def matrix_to_pose(factory: MessageFactory, T: np.ndarray) -> Any:
    """4x4 rigid transform -> geometry_msgs/Pose (quaternion with w >= 0)."""
    t, q = translation_quaternion_from_transform(T)
    if q[3] < 0:
        q = -q
    return factory.new("geometry_msgs/msg/Pose", position=_point(factory, t), orientation=_quaternion(factory, q))


def matrix_to_transform_stamped(factory: MessageFactory, T: np.ndarray, parent: str, child: str, stamp_ns: int) -> Any:
    """4x4 T_parent_child -> geometry_msgs/TransformStamped."""
    t, q = translation_quaternion_from_transform(T)
    if q[3] < 0:
        q = -q
    return factory.new(
        "geometry_msgs/msg/TransformStamped",
        header=header_msg(factory, stamp_ns, parent),
        child_frame_id=str(child),
        transform=factory.new("geometry_msgs/msg/Transform", translation=_vector3(factory, t), rotation=_quaternion(factory, q)),
    )


def poses_to_pose_array(factory: MessageFactory, poses: Iterable[np.ndarray], frame_id: str, stamp_ns: int) -> Any:
    """4x4 transforms (e.g. keyframe T_world_cam) -> geometry_msgs/PoseArray."""
    return factory.new(
        "geometry_msgs/msg/PoseArray",
        header=header_msg(factory, stamp_ns, frame_id),
        poses=[matrix_to_pose(factory, T) for T in poses],
    )


# ------------------------------------------------------------------------ answers
def _colour(factory: MessageFactory, index: int, alpha: float) -> Any:
    r, g, b = _PALETTE[index % len(_PALETTE)]
    return factory.new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=float(alpha))


def _label_text(answer: Answer, index: int, obj: GroundedObject, wrap: int = 40, max_lines: int = 4) -> str:
    head = f"{obj.label or f'object {index + 1}'} ({obj.score:.2f})"
    if index != 0 or not answer.text.strip():
        return head
    lines = textwrap.wrap(answer.text.strip(), wrap)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: wrap - 3] + "..."
    return "\n".join([head, *lines])


def answer_to_marker_array(
    factory: MessageFactory,
    answer: Answer,
    frame_id: str,
    stamp_ns: int,
    lifetime_s: float = 0.0,
    ns: str = "video3dllm",
    line_width_m: float = 0.02,
    text_height_m: float = 0.12,
    fill_alpha: float = 0.25,
) -> Any:
    """Answer -> visualization_msgs/MarkerArray for RViz.

    First a DELETEALL marker (clears the previous answer's boxes), then per object i (best
    first): the 12 edges of its tight box (turned by `yaw_rad`) as a LINE_LIST (ns "<ns>/box", id i), a translucent CUBE
    ("<ns>/fill", id i) and a TEXT_VIEW_FACING label above the box ("<ns>/label", id i): the
    object's label (or "object i+1") and score; the best object's label also carries the answer
    text. lifetime_s = 0 keeps markers until the next answer.
    """
    header = header_msg(factory, stamp_ns, frame_id)
    lifetime = duration_msg(factory, lifetime_s)
    white = factory.new("std_msgs/msg/ColorRGBA", r=1.0, g=1.0, b=1.0, a=1.0)

    def marker(**fields: Any) -> Any:
        return factory.new("visualization_msgs/msg/Marker", header=header, lifetime=lifetime, frame_locked=False, **fields)

    markers = [
        marker(ns="", id=0, type=MARKER_CUBE, action=MARKER_DELETEALL, pose=_identity_pose(factory, (0, 0, 0)),
               scale=_vector3(factory, (1, 1, 1)), color=white)
    ]
    for i, obj in enumerate(answer.objects):
        center = np.asarray(obj.center_xyz, dtype=np.float64)
        size = np.asarray(obj.size_xyz, dtype=np.float64)
        markers.append(marker(
            ns=f"{ns}/box", id=i, type=MARKER_LINE_LIST, action=MARKER_ADD, pose=_identity_pose(factory, (0, 0, 0)),
            scale=_vector3(factory, (line_width_m, 0, 0)), color=_colour(factory, i, 1.0),
            points=[_point(factory, p) for p in _box_edges(obj)],
        ))
        markers.append(marker(
            ns=f"{ns}/fill", id=i, type=MARKER_CUBE, action=MARKER_ADD, pose=_box_pose(factory, obj),
            scale=_vector3(factory, np.maximum(np.asarray(obj.oriented_size_xyz, dtype=np.float64), 1e-3)),
            color=_colour(factory, i, fill_alpha),
        ))
        top = center + np.array([0.0, 0.0, size[2] / 2.0 + text_height_m])
        markers.append(marker(
            ns=f"{ns}/label", id=i, type=MARKER_TEXT_VIEW_FACING, action=MARKER_ADD, pose=_identity_pose(factory, top),
            scale=_vector3(factory, (0, 0, text_height_m)), color=white, text=_label_text(answer, i, obj),
        ))
    return factory.new("visualization_msgs/msg/MarkerArray", markers=markers)


def answer_to_detection_array(factory: MessageFactory, answer: Answer, frame_id: str, stamp_ns: int) -> Any:
    """Answer -> vision_msgs/Detection3DArray (vision_msgs 4.x): one detection per grounded object.

    Each detection has one hypothesis (class_id = label or "object", score), the box pose as the
    hypothesis pose, the object's tight BoundingBox3D (turned by its `yaw_rad` about up when the engine's
    scene frame is turned; axis-aligned otherwise), and id = the proposal index.
    """
    header = header_msg(factory, stamp_ns, frame_id)
    detections = []
    for obj in answer.objects:
        center_pose = _box_pose(factory, obj)
        hypothesis = factory.new(
            "vision_msgs/msg/ObjectHypothesisWithPose",
            hypothesis=factory.new("vision_msgs/msg/ObjectHypothesis", class_id=obj.label or "object", score=float(obj.score)),
            pose=factory.new("geometry_msgs/msg/PoseWithCovariance", pose=center_pose, covariance=np.zeros(36)),
        )
        detections.append(factory.new(
            "vision_msgs/msg/Detection3D",
            header=header,
            results=[hypothesis],
            bbox=factory.new("vision_msgs/msg/BoundingBox3D", center=center_pose,
                             size=_vector3(factory, obj.oriented_size_xyz)),
            id=str(obj.proposal_index) if obj.proposal_index >= 0 else "",
        ))
    return factory.new("vision_msgs/msg/Detection3DArray", header=header, detections=detections)


def grounded_object_msg(factory: MessageFactory, obj: GroundedObject) -> Any:
    """GroundedObject (core) -> video3dllm/msg/GroundedObject."""
    return factory.new(
        "video3dllm/msg/GroundedObject",
        bbox=factory.new("vision_msgs/msg/BoundingBox3D", center=_box_pose(factory, obj),
                         size=_vector3(factory, obj.oriented_size_xyz)),
        label=str(obj.label),
        score=float(obj.score),
    )


def answer_to_query_fields(
    factory: MessageFactory, answer: Answer, frame_id: str, stamp_ns: int, latency_s: float
) -> dict[str, Any]:
    """Answer -> the fields of video3dllm/srv/Query's response, as a dict (`Response(**fields)`)."""
    return {
        "success": answer.ok,
        "message": answer.error if answer.error is not None else "; ".join(answer.warnings),
        "answer": answer.text,
        "header": header_msg(factory, stamp_ns, frame_id),
        "objects": [grounded_object_msg(factory, o) for o in answer.objects],
        "keyframe_count": len(answer.keyframe_stamps_ns),
        "keyframe_stamps": [time_msg(factory, s) for s in answer.keyframe_stamps_ns],
        "coverage": float(answer.coverage),
        "proposal_stamps": [time_msg(factory, s) for s in answer.proposal_stamps_ns],
        "decoding": answer.decoding,
        "latency_s": float(latency_s),
    }


@dataclass(frozen=True)
class ExternalBoxes:
    """Boxes from an external detector, axis-aligned in `frame_id`."""

    centers: np.ndarray  # [N, 3] float64
    sizes: np.ndarray  # [N, 3] float64
    labels: tuple[str, ...]
    scores: np.ndarray  # [N] float64
    frame_id: str


def detections_to_boxes(msg: Any) -> ExternalBoxes:
    """vision_msgs/Detection3DArray -> axis-aligned boxes.

    A rotated box becomes its axis-aligned hull (size |R| @ size), since the model's candidate
    boxes are axis-aligned. An all-zero quaternion (an unset orientation) counts as identity.
    The label is the class_id of the highest-scoring hypothesis ("" without hypotheses).
    """
    centers, sizes, labels, scores = [], [], [], []
    for i, det in enumerate(msg.detections):
        box = det.bbox
        c, q, s = box.center.position, box.center.orientation, box.size
        size = np.array([s.x, s.y, s.z], dtype=np.float64)
        if not (np.all(np.isfinite(size)) and np.all(size > 0)):
            raise ValueError(f"detections[{i}].bbox.size must be positive finite metres, got {size.tolist()}")
        quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
        if np.linalg.norm(quat) > 1e-9:
            size = np.abs(Rotation.from_quat(quat).as_matrix()) @ size
        centers.append([c.x, c.y, c.z])
        sizes.append(size)
        best = max(det.results, key=lambda r: r.hypothesis.score, default=None)
        labels.append(str(best.hypothesis.class_id) if best is not None else "")
        scores.append(float(best.hypothesis.score) if best is not None else 0.0)
    return ExternalBoxes(
        centers=np.asarray(centers, dtype=np.float64).reshape(-1, 3),
        sizes=np.asarray(sizes, dtype=np.float64).reshape(-1, 3),
        labels=tuple(labels),
        scores=np.asarray(scores, dtype=np.float64),
        frame_id=str(msg.header.frame_id),
    )


# --------------------------------------------------------------------------- clouds
def points_to_pointcloud2(factory: MessageFactory, xyz: np.ndarray, frame_id: str, stamp_ns: int) -> Any:
    """[N, 3] points -> sensor_msgs/PointCloud2 with float32 fields x, y, z (unorganised, little-endian)."""
    pts = np.asarray(xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {pts.shape}")
    data = np.ascontiguousarray(pts, dtype="<f4").reshape(-1).view(np.uint8)
    fields = [
        factory.new("sensor_msgs/msg/PointField", name=name, offset=4 * k, datatype=POINTFIELD_FLOAT32, count=1)
        for k, name in enumerate("xyz")
    ]
    return factory.new(
        "sensor_msgs/msg/PointCloud2",
        header=header_msg(factory, stamp_ns, frame_id),
        height=1,
        width=len(pts),
        fields=fields,
        is_bigendian=False,
        point_step=12,
        row_step=12 * len(pts),
        data=data,
        is_dense=bool(np.all(np.isfinite(pts))),
    )


def pointcloud2_to_points(msg: Any) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> [N, 3] float32 x, y, z (any point_step/row padding, float32 or float64 fields)."""
    by_name = {str(f.name): f for f in msg.fields}
    missing = [n for n in "xyz" if n not in by_name]
    if missing:
        raise ValueError(f"PointCloud2 has no field(s) {missing}; fields are {sorted(by_name)}")
    order = ">" if msg.is_bigendian else "<"
    kinds = {POINTFIELD_FLOAT32: "f4", POINTFIELD_FLOAT64: "f8"}
    for n in "xyz":
        if int(by_name[n].datatype) not in kinds:
            raise ValueError(f"PointCloud2 field '{n}' has datatype {by_name[n].datatype}; only FLOAT32/FLOAT64 are read")
    dtype = np.dtype({
        "names": list("xyz"),
        "formats": [order + kinds[int(by_name[n].datatype)] for n in "xyz"],
        "offsets": [int(by_name[n].offset) for n in "xyz"],
        "itemsize": int(msg.point_step),
    })
    height, width, row_step = int(msg.height), int(msg.width), int(msg.row_step)
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if raw.size < row_step * height:
        raise ValueError(f"PointCloud2 data has {raw.size} bytes, row_step * height = {row_step * height} are needed")
    rows = raw[: row_step * height].reshape(height, row_step)[:, : width * int(msg.point_step)]
    pts = np.ascontiguousarray(rows).reshape(-1).view(dtype)
    return np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float32)


# ---------------------------------------------------------------------- diagnostics
def diagnostic_array(
    factory: MessageFactory, stamp_ns: int, name: str, level: int, message: str, values: dict[str, Any],
    hardware_id: str = "",
) -> Any:
    """diagnostic_msgs/DiagnosticArray with one DiagnosticStatus (values as KeyValue strings)."""
    kv = [factory.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=str(v)) for k, v in values.items()]
    status = factory.new(
        "diagnostic_msgs/msg/DiagnosticStatus",
        level=int(level),
        name=name, message=message, hardware_id=hardware_id, values=kv,
    )
    return factory.new("diagnostic_msgs/msg/DiagnosticArray", header=header_msg(factory, stamp_ns, ""), status=[status])

