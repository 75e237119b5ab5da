"""Write posed RGB-D frames as a robot-style rosbag2 (RealSense topics + a TF tree).

The bag looks like what a robot with an Intel RealSense (realsense-ros 4.x, default namespace
/camera/camera, `align_depth.enable:=true`) and a localisation stack records:

    /camera/camera/color/image_raw                      sensor_msgs/Image rgb8
      or /camera/camera/color/image_raw/compressed      sensor_msgs/CompressedImage
                                                        (format "rgb8; jpeg compressed bgr8", what
                                                        image_transport's compressed plugin writes)
    /camera/camera/color/camera_info                    sensor_msgs/CameraInfo
    /camera/camera/aligned_depth_to_color/image_raw     sensor_msgs/Image 16UC1 (mm, 0 = invalid)
                                                        or 32FC1 (m, NaN = invalid)
    /camera/camera/aligned_depth_to_color/camera_info   sensor_msgs/CameraInfo (plumb_bob, zeros)
    /tf_static   map->odom, base_link->camera_link->camera_color_frame->camera_color_optical_frame
    /tf          odom->base_link at twice the image rate

All images carry frame_id camera_color_optical_frame (aligned depth lives in the colour frame).

Frames. The robot is not ScanNet: the scene's world frame is placed in `map` by `T_map_world`
(default: 20 m away, rotated 35 degrees about z), and map->odom is a fixed non-identity
transform too. odom->base_link is computed from the frame poses so that the composed chain
map->...->camera_color_optical_frame equals `T_map_world @ T_world_cam` at every image stamp.

TF interpolation is exercised on purpose: odom->base_link is published at t_i - d and t_i + d
around each image stamp t_i (d = a quarter of the smaller gap to a neighbouring image), never at
t_i itself. The two samples are the image pose pushed backward / forward along the motion
(translation -v, +v; rotation R exp(-w), R exp(+w)), so linear interpolation of the translation
and slerp of the rotation at the midpoint t_i give the frame pose exactly (to float rounding),
as tf2 does.

Stamps: image stamps are `frame.stamp_ns + stamp_offset_ns` (default offset: a 2023 epoch time,
so that all stamps are positive and realistic); `BagSummary.image_stamps_ns` lists them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from video3dllm_core.frame import PosedFrame

__all__ = [
    "SceneBagTopics",
    "BagSummary",
    "write_scene_bag",
    "make_transform",
    "DEFAULT_T_MAP_WORLD",
    "DEFAULT_T_MAP_ODOM",
    "T_BASE_CAMERA_LINK",
    "T_CAMERA_LINK_COLOR",
    "T_COLOR_OPTICAL",
    "DEFAULT_STAMP_OFFSET_NS",
    "COMPRESSED_FORMAT",
]

COMPRESSED_FORMAT = "rgb8; jpeg compressed bgr8"  # image_transport compressed plugin, rgb8 input
DEFAULT_STAMP_OFFSET_NS = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z


def make_transform(
    translation: Sequence[float], yaw_deg: float = 0.0, quat_xyzw: Sequence[float] | None = None
) -> np.ndarray:
    """4x4 rigid transform from a translation and either a yaw angle or an xyzw quaternion."""
    T = np.eye(4)
    rot = Rotation.from_quat(quat_xyzw) if quat_xyzw is not None else Rotation.from_euler("z", yaw_deg, degrees=True)
    T[:3, :3] = rot.as_matrix()
    T[:3, 3] = translation
    return T


# The scene (world) frame as seen from the robot's map: far from the origin and rotated.
DEFAULT_T_MAP_WORLD = make_transform([20.0, -12.0, 0.0], yaw_deg=35.0)
# Where odometry started in the map.
DEFAULT_T_MAP_ODOM = make_transform([1.5, -0.8, 0.0], yaw_deg=-20.0)
# Camera mount on the robot base (base_link -> camera_link), RealSense colour offset, optical rotation.
T_BASE_CAMERA_LINK = make_transform([0.12, 0.0, 0.30])
T_CAMERA_LINK_COLOR = make_transform([0.0, 0.015, 0.0])
T_COLOR_OPTICAL = make_transform([0.0, 0.0, 0.0], quat_xyzw=[-0.5, 0.5, -0.5, 0.5])


@dataclass(frozen=True)
class SceneBagTopics:
    """Topic and frame names of the bag (realsense-ros 4.x defaults); readers use them as defaults."""

    rgb_topic: str = "/camera/camera/color/image_raw"
    rgb_compressed_topic: str = "/camera/camera/color/image_raw/compressed"
    rgb_info_topic: str = "/camera/camera/color/camera_info"
    depth_topic: str = "/camera/camera/aligned_depth_to_color/image_raw"
    info_topic: str = "/camera/camera/aligned_depth_to_color/camera_info"
    tf_topic: str = "/tf"
    tf_static_topic: str = "/tf_static"
    world_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_link_frame: str = "camera_link"
    color_frame: str = "camera_color_frame"
    optical_frame: str = "camera_color_optical_frame"

    def color_topic(self, compressed: bool) -> str:
        """The colour topic actually written: raw or image_transport's /compressed."""
        return self.rgb_compressed_topic if compressed else self.rgb_topic


@dataclass
class BagSummary:
    """What `write_scene_bag` wrote."""

    path: Path
    storage: str
    depth_encoding: str
    compressed: bool
    topics: SceneBagTopics
    message_counts: dict[str, int]
    image_stamps_ns: list[int]
    frame_names: list[str | None]
    T_map_world: np.ndarray
    T_map_odom: np.ndarray
    tf_stamps_ns: list[int] = field(default_factory=list)


def _load_frames(scene: str | Path | Iterable[PosedFrame]) -> list[PosedFrame]:
    if isinstance(scene, (str, Path)):
        from video3dllm_core.sources.posed_images import PosedImagesSource

        return list(PosedImagesSource(scene))
    return list(scene)


def _base_poses(frames: list[PosedFrame], T_map_world: np.ndarray, T_map_odom: np.ndarray) -> np.ndarray:
    """odom->base_link at each frame such that the TF chain gives T_map_world @ T_world_cam."""
    T_base_optical = T_BASE_CAMERA_LINK @ T_CAMERA_LINK_COLOR @ T_COLOR_OPTICAL
    left = np.linalg.inv(T_map_odom) @ T_map_world
    right = np.linalg.inv(T_base_optical)
    return np.stack([left @ np.asarray(f.T_world_cam, dtype=np.float64) @ right for f in frames])


def _tf_samples(stamps: list[int], poses: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Two (stamp, translation, quaternion xyzw) samples around each image whose midpoint is the pose."""
    n = len(stamps)
    rots = Rotation.from_matrix(poses[:, :3, :3])
    samples: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in range(n):
        lo, hi = max(i - 1, 0), min(i + 1, n - 1)
        gaps = [stamps[j + 1] - stamps[j] for j in (i - 1, i) if 0 <= j < n - 1]
        d_ns = max(min(gaps) // 4, 1) if gaps else 50_000_000
        if hi > lo:
            scale = d_ns / (stamps[hi] - stamps[lo])
            v = (poses[hi, :3, 3] - poses[lo, :3, 3]) * scale
            w = (rots[lo].inv() * rots[hi]).as_rotvec() * scale  # body-frame rotation over d
        else:
            v, w = np.zeros(3), np.zeros(3)
        p, r = poses[i, :3, 3], rots[i]
        q_minus = (r * Rotation.from_rotvec(-w)).as_quat()
        q_plus = (r * Rotation.from_rotvec(w)).as_quat()
        if np.dot(q_minus, q_plus) < 0:  # same hemisphere, so slerp takes the short way
            q_plus = -q_plus
        samples.append((stamps[i] - d_ns, p - v, q_minus))
        samples.append((stamps[i] + d_ns, p + v, q_plus))
    return samples


def write_scene_bag(
    scene: str | Path | Iterable[PosedFrame],
    out_path: str | Path,
    depth_encoding: str = "16UC1",
    compressed: bool = False,
    storage: str = "mcap",
    *,
    topics: SceneBagTopics | None = None,
    T_map_world: np.ndarray | None = None,
    T_map_odom: np.ndarray | None = None,
    stamp_offset_ns: int = DEFAULT_STAMP_OFFSET_NS,
    version: int = 8,
    jpeg_quality: int = 95,
) -> BagSummary:
    """Write `scene` (a posed-images directory or PosedFrames) as a rosbag2 directory at `out_path`.

    Args:
        depth_encoding: "16UC1" (uint16 millimetres, 0 invalid, RealSense default) or "32FC1"
            (float32 metres, NaN invalid).
        compressed: JPEG colour on .../image_raw/compressed instead of raw rgb8.
        storage: "mcap" (Jazzy default) or "sqlite3".
        T_map_world: pose of the scene's world frame in map (default DEFAULT_T_MAP_WORLD; pass
            np.eye(4) to make map the scene frame). Stored in the bag's custom_data too.
        version: rosbag2 metadata version (8 is readable by Humble and newer, 9 by Jazzy+).

    Colour and depth must have the same size (depth aligned to colour, as the RealSense driver
    publishes it). Frames must have strictly increasing stamps.
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if depth_encoding not in ("16UC1", "32FC1"):
        raise ValueError(f"depth_encoding must be '16UC1' (mm) or '32FC1' (m), got {depth_encoding!r}")
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    out = Path(out_path)
    if out.exists():
        raise FileExistsError(f"{out} already exists; rosbag2 writers never overwrite, choose a new path")
    topics = topics or SceneBagTopics()
    T_mw = DEFAULT_T_MAP_WORLD if T_map_world is None else np.asarray(T_map_world, dtype=np.float64)
    T_mo = DEFAULT_T_MAP_ODOM if T_map_odom is None else np.asarray(T_map_odom, dtype=np.float64)

    frames = _load_frames(scene)
    if not frames:
        raise ValueError("no frames to write: the scene is empty")
    for i, f in enumerate(frames):
        if f.rgb.shape[:2] != f.depth_m.shape:
            raise ValueError(
                f"frame {i} ({f.name}): colour {f.rgb.shape[1]}x{f.rgb.shape[0]} and depth "
                f"{f.depth_m.shape[1]}x{f.depth_m.shape[0]} differ; aligned_depth_to_color needs equal sizes "
                "(render the scene without color_size)"
            )
    stamps = [int(f.stamp_ns) + int(stamp_offset_ns) for f in frames]
    if any(b <= a for a, b in zip(stamps, stamps[1:])):
        raise ValueError("frame stamps must be strictly increasing")
    samples = _tf_samples(stamps, _base_poses(frames, T_mw, T_mo))
    if samples[0][0] <= 0:
        raise ValueError("stamps would be negative or zero; raise stamp_offset_ns")

    ts = get_typestore(Stores.ROS2_JAZZY)
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    ImageMsg = ts.types["sensor_msgs/msg/Image"]
    CompressedImage = ts.types["sensor_msgs/msg/CompressedImage"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    RegionOfInterest = ts.types["sensor_msgs/msg/RegionOfInterest"]
    TFMessage = ts.types["tf2_msgs/msg/TFMessage"]
    TransformStamped = ts.types["geometry_msgs/msg/TransformStamped"]
    Transform = ts.types["geometry_msgs/msg/Transform"]
    Vector3 = ts.types["geometry_msgs/msg/Vector3"]
    Quaternion = ts.types["geometry_msgs/msg/Quaternion"]

    def header(stamp: int, frame_id: str) -> Any:
        return Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)

    def tf(stamp: int, parent: str, child: str, t: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> Any:
        return TransformStamped(
            header=header(stamp, parent),
            child_frame_id=child,
            transform=Transform(
                translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
            ),
        )

    def tf_of(stamp: int, parent: str, child: str, T: np.ndarray) -> Any:
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        q = -q if q[3] < 0 else q
        return tf(stamp, parent, child, T[:3, 3], q)

    def camera_info(stamp: int, frame: PosedFrame) -> Any:
        K = np.asarray(frame.K_depth, dtype=np.float64)
        P = np.zeros((3, 4))
        P[:, :3] = K
        h, w = frame.depth_m.shape
        return CameraInfo(
            header=header(stamp, topics.optical_frame),
            height=h,
            width=w,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=K.reshape(-1).copy(),
            r=np.eye(3).reshape(-1),
            p=P.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def depth_image(stamp: int, frame: PosedFrame) -> Any:
        d = frame.depth_m
        valid = np.isfinite(d) & (d > 0)
        if depth_encoding == "16UC1":
            mm = np.rint(np.where(valid, d.astype(np.float64), 0.0) * 1000.0)
            mm[mm > 65535] = 0
            arr: np.ndarray = mm.astype("<u2")
        else:
            arr = np.where(valid, d, np.float32(np.nan)).astype("<f4")
        h, w = d.shape
        return ImageMsg(
            header=header(stamp, topics.optical_frame),
            height=h,
            width=w,
            encoding=depth_encoding,
            is_bigendian=0,
            step=w * arr.itemsize,
            data=np.frombuffer(arr.tobytes(), dtype=np.uint8),
        )

    def colour_image(stamp: int, frame: PosedFrame) -> Any:
        if compressed:
            buf = BytesIO()
            Image.fromarray(frame.rgb).save(buf, format="JPEG", quality=jpeg_quality)
            return CompressedImage(
                header=header(stamp, topics.optical_frame),
                format=COMPRESSED_FORMAT,
                data=np.frombuffer(buf.getvalue(), dtype=np.uint8),
            )
        h, w = frame.rgb.shape[:2]
        return ImageMsg(
            header=header(stamp, topics.optical_frame),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(frame.rgb).reshape(-1),
        )

    forever = QosTime(sec=9223372036, nsec=854775807)  # rclcpp's "infinite" duration
    latched = Qos(
        QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
        forever, forever, QosLiveliness.AUTOMATIC, forever, False,
    )
    color_topic = topics.color_topic(compressed)
    color_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    counts: dict[str, int] = {}
    events: list[tuple[int, int, str, str, Any]] = []  # (log time, order, topic, type, message)

    t_first = samples[0][0]
    static = [
        tf_of(t_first, topics.world_frame, topics.odom_frame, T_mo),
        tf_of(t_first, topics.base_frame, topics.camera_link_frame, T_BASE_CAMERA_LINK),
        tf_of(t_first, topics.camera_link_frame, topics.color_frame, T_CAMERA_LINK_COLOR),
        tf_of(t_first, topics.color_frame, topics.optical_frame, T_COLOR_OPTICAL),
    ]
    events.append((t_first, 0, topics.tf_static_topic, "tf2_msgs/msg/TFMessage", TFMessage(transforms=static)))
    for stamp, p, q in samples:
        msg = TFMessage(transforms=[tf(stamp, topics.odom_frame, topics.base_frame, p, q)])
        events.append((stamp, 1, topics.tf_topic, "tf2_msgs/msg/TFMessage", msg))
    for stamp, frame in zip(stamps, frames):
        events.append((stamp, 2, color_topic, color_type, colour_image(stamp, frame)))
        events.append((stamp, 3, topics.rgb_info_topic, "sensor_msgs/msg/CameraInfo", camera_info(stamp, frame)))
        events.append((stamp, 4, topics.depth_topic, "sensor_msgs/msg/Image", depth_image(stamp, frame)))
        events.append((stamp, 5, topics.info_topic, "sensor_msgs/msg/CameraInfo", camera_info(stamp, frame)))
    events.sort(key=lambda e: (e[0], e[1]))

    with Writer(out, version=version, storage_plugin=plugins[storage]) as writer:  # type: ignore[arg-type]
        writer.set_custom_data("video3dllm.T_map_world", json.dumps(T_mw.tolist()))
        writer.set_custom_data("video3dllm.generator", "video3dllm_core.bag_writer")
        connections: dict[str, Any] = {}
        for topic, msgtype in (
            (topics.tf_static_topic, "tf2_msgs/msg/TFMessage"),
            (topics.tf_topic, "tf2_msgs/msg/TFMessage"),
            (color_topic, color_type),
            (topics.rgb_info_topic, "sensor_msgs/msg/CameraInfo"),
            (topics.depth_topic, "sensor_msgs/msg/Image"),
            (topics.info_topic, "sensor_msgs/msg/CameraInfo"),
        ):
            qos = [latched] if topic == topics.tf_static_topic else []
            connections[topic] = writer.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=qos)
            counts[topic] = 0
        for stamp, _, topic, msgtype, msg in events:
            writer.write(connections[topic], stamp, ts.serialize_cdr(msg, msgtype))
            counts[topic] += 1

    return BagSummary(
        path=out,
        storage=storage,
        depth_encoding=depth_encoding,
        compressed=compressed,
        topics=topics,
        message_counts=counts,
        image_stamps_ns=stamps,
        frame_names=[f.name for f in frames],
        T_map_world=T_mw.copy(),
        T_map_odom=T_mo.copy(),
        tf_stamps_ns=[s for s, _, _ in samples],
    )
