"""`video3dllm_node`: the ROS 2 shell around `video3dllm_core`'s scene engine.

Inputs (sensor-data QoS):
  rgb_topic (Image or CompressedImage), depth_topic (Image or compressedDepth CompressedImage),
  info_topic (CameraInfo of the depth image), camera pose from TF (/tf, /tf_static) or from
  ~/camera_pose (geometry_msgs/PoseStamped, pose_source:=topic), /clicked_point
  (geometry_msgs/PointStamped: caption the object there), ~/external_detections
  (vision_msgs/Detection3DArray, proposal_source:=external).
Services: ~/query (video3dllm/srv/Query), ~/reset (std_srvs/Trigger).
Outputs: ~/markers (MarkerArray, DELETEALL before every new answer), ~/detections
  (vision_msgs/Detection3DArray), ~/answer (std_msgs/String), ~/keyframes (PoseArray),
  ~/coverage (PointCloud2 of the observed voxels), /diagnostics (DiagnosticArray).

Threading: sensor callbacks run in a Reentrant callback group, queries (service, clicked point)
in a MutuallyExclusive one, under a MultiThreadedExecutor: ingestion (decode + engine.add_frame,
a few ms) never waits for a query on the GPU, and queries run one at a time.

Pieces without PyPI wheels are optional imports: message_filters and tf2_ros are used when
importable (sync_backend / tf_backend "auto"), otherwise the core's own implementations of the
same policies (video3dllm_core.sync.RgbdSynchronizer, video3dllm_core.tf_buffer.TfBuffer fed by
/tf and /tf_static through tf2_msgs). Without tf2_msgs as well, pose_source:=topic is the way to
give poses. vision_msgs (detections) and the generated video3dllm/srv/Query are also optional:
when missing the node runs without those endpoints and says so in its log.

Frames whose pose is not available within tf_timeout_s are dropped as "no_tf"; every drop is
counted by reason (node.stats(), /diagnostics) and warned about at most every 5 s.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, qos_profile_sensor_data
from rcl_interfaces.msg import ParameterDescriptor

from video3dllm_core.answer import Answer
from video3dllm_core.frame import FrameError
from video3dllm_core.geometry import apply_transform
from video3dllm_core.image_codec import ImageCodecError
from video3dllm_core.sync import RgbdSet, RgbdSynchronizer
from video3dllm_core.tf_buffer import ExtrapolationError, TfBuffer, TransformError
from video3dllm_ros import convert
from video3dllm_ros.factory import MessageFactory, PlainFactory, RclpyFactory
from video3dllm_ros.params import PARAMETERS, NodeSettings, engine_config_kwargs
from video3dllm_ros.query import EngineLike, QueryOutcome, QueryRequest, run_query

__all__ = ["Video3DLLMNode", "main", "load_engine", "POSE_TOPIC_CHILD_FRAME"]

NS_PER_S = 1_000_000_000
WARN_THROTTLE_S = 5.0
PENDING_RETRY_PERIOD_S = 0.05
POSE_TOPIC_CHILD_FRAME = "video3dllm_camera_pose"  # TfBuffer child frame of ~/camera_pose samples


def _optional_import(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def load_engine(settings: NodeSettings) -> EngineLike:
    """SceneEngine.load with the node's settings (model_path empty: the embedded default model)."""
    from video3dllm_core.engine import EngineConfig, SceneEngine

    engine: EngineLike = SceneEngine.load(EngineConfig(**engine_config_kwargs(settings)))
    return engine


@dataclass
class _Pending:
    """A synchronised colour/depth pair waiting for its pose."""

    rgbd: RgbdSet
    deadline: float  # time.monotonic() after which it is dropped
    last_error: str = ""


class _CorePoses:
    """Camera poses from video3dllm_core.tf_buffer.TfBuffer (fed by /tf, /tf_static or ~/camera_pose)."""

    def __init__(self, cache_s: float) -> None:
        self.buffer = TfBuffer(cache_duration_s=cache_s)
        self.lock = threading.Lock()
        self.rejected = 0

    def lookup(self, target: str, source: str, stamp_ns: int | None) -> np.ndarray:
        """T_target_source at stamp_ns (None: the latest common time, tf2's Time(0))."""
        with self.lock:
            return self.buffer.lookup(target, source, stamp_ns)

    @staticmethod
    def permanent(exc: Exception) -> bool:
        """A stamp older than the TF history can never be resolved: drop at once."""
        return isinstance(exc, ExtrapolationError) and exc.direction == "past"

    def add_tf(self, msg: Any, static: bool) -> str | None:
        """Add a TFMessage; returns the first rejection message (malformed transform), if any."""
        first = None
        with self.lock:
            for ts in msg.transforms:
                tr, rot = ts.transform.translation, ts.transform.rotation
                try:
                    self.buffer.set_transform(ts.header.frame_id, ts.child_frame_id, convert.stamp_to_ns(ts.header.stamp),
                                              (tr.x, tr.y, tr.z), (rot.x, rot.y, rot.z, rot.w), static=static)
                except ValueError as exc:
                    self.rejected += 1
                    first = first or str(exc)
        return first

    def add_pose(self, msg: Any) -> None:
        """A PoseStamped of the camera optical frame in msg.header.frame_id."""
        p, q = msg.pose.position, msg.pose.orientation
        with self.lock:
            self.buffer.set_transform(msg.header.frame_id, POSE_TOPIC_CHILD_FRAME, convert.stamp_to_ns(msg.header.stamp),
                                      (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


class _RosPoses:
    """Camera poses from tf2_ros.Buffer + TransformListener (used on a robot when tf2_ros imports)."""

    def __init__(self, node: Node, cache_s: float, tf2_ros: Any) -> None:
        from rclpy.duration import Duration

        self._tf2_ros = tf2_ros
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)

    def lookup(self, target: str, source: str, stamp_ns: int | None) -> np.ndarray:
        from rclpy.time import Time

        when = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
        try:
            ts = self.buffer.lookup_transform(target, source, when)
        except self._tf2_ros.TransformException as exc:
            raise TransformError(f"tf2 lookup {target} <- {source}: {exc}") from None
        return convert.transform_to_matrix(ts)

    @staticmethod
    def permanent(exc: Exception) -> bool:
        return False


class Video3DLLMNode(Node):
    """The perception node. `engine` may be given (tests, embedding); by default it is loaded
    from the node's parameters (model_path, device, dtype, ...)."""

    def __init__(self, engine: EngineLike | None = None, *, node_name: str = "video3dllm", **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        self.settings = self._declare_parameters()
        s = self.settings
        self.factory: MessageFactory = RclpyFactory()

        self._lock = threading.Lock()  # synchroniser, pending queue, counters
        self._drops: Counter[str] = Counter()
        self._last_drop: dict[str, str] = {}  # reason -> message of the latest drop (warnings are throttled)
        self._counts: Counter[str] = Counter()
        self._pending: list[_Pending] = []
        self._max_pending = 4 * s.sync_queue_size  # frames waiting for TF (raw messages, bounded memory)
        self._last_ingested_stamp: int | None = None
        self._last_warn: dict[str, float] = {}
        self._published_frames = -1
        self._latest_info: Any = None
        self._last_answer: Answer | None = None

        self._sensor_group = ReentrantCallbackGroup()
        self._query_group = MutuallyExclusiveCallbackGroup()

        # --- outputs
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import String
        from visualization_msgs.msg import MarkerArray

        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", latched)
        self._answer_pub = self.create_publisher(String, "~/answer", 10)
        self._keyframes_pub = self.create_publisher(PoseArray, "~/keyframes", latched)
        self._coverage_pub = self.create_publisher(PointCloud2, "~/coverage", latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._detections_pub = None
        vision_msgs = _optional_import("vision_msgs.msg")
        if vision_msgs is not None:
            self._detections_pub = self.create_publisher(vision_msgs.Detection3DArray, "~/detections", latched)
        else:
            self.get_logger().warning(
                "vision_msgs is not installed: ~/detections and ~/external_detections are disabled "
                "(apt install ros-$ROS_DISTRO-vision-msgs)"
            )

        # --- poses, sensors, services (checked before the model loads: a bad setup fails fast)
        self._poses = self._make_pose_backend()
        self._sync: RgbdSynchronizer | None = None
        self.sync_backend = self._make_sync()
        self._make_query_endpoints(vision_msgs)
        self.engine: EngineLike = engine if engine is not None else load_engine(s)

        from std_srvs.srv import Trigger

        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._query_group)
        self._retry_timer = self.create_timer(PENDING_RETRY_PERIOD_S, self._retry_pending, callback_group=self._sensor_group)
        self._diag_timer = self.create_timer(s.diagnostics_period_s, self._on_diagnostics_timer,
                                             callback_group=self._sensor_group)
        self.get_logger().info(
            f"video3dllm ready: rgb={s.rgb_topic} ({s.rgb_transport}), depth={s.depth_topic} ({s.depth_transport}), "
            f"info={s.info_topic}, world_frame={s.world_frame}, poses from {self.pose_backend}, sync={self.sync_backend}"
        )

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> NodeSettings:
        values = {}
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(description=spec.description, read_only=True)
            if spec.choices:
                descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
            values[spec.name] = self.declare_parameter(spec.name, spec.default, descriptor).value
        return NodeSettings.from_values(values)

    # ------------------------------------------------------------------ poses
    def _make_pose_backend(self) -> _CorePoses | _RosPoses:
        s = self.settings
        if s.pose_source == "topic":
            from geometry_msgs.msg import PoseStamped

            poses = _CorePoses(s.tf_cache_s)
            self.create_subscription(PoseStamped, "~/camera_pose", self._on_camera_pose, 50,
                                     callback_group=self._sensor_group)
            self.pose_backend = "~/camera_pose (core TfBuffer)"
            return poses
        tf2_ros = _optional_import("tf2_ros") if s.tf_backend in ("auto", "ros") else None
        if tf2_ros is not None:
            self.pose_backend = "tf2_ros"
            return _RosPoses(self, s.tf_cache_s, tf2_ros)
        if s.tf_backend == "ros":
            raise ValueError("tf_backend is 'ros' but tf2_ros is not importable: install ros-$ROS_DISTRO-tf2-ros "
                             "or set tf_backend:=core")
        tf2_msgs = _optional_import("tf2_msgs.msg")
        if tf2_msgs is None:
            raise ValueError(
                "pose_source is 'tf' but neither tf2_ros nor tf2_msgs is importable: install ros-$ROS_DISTRO-tf2-ros, "
                "or publish the camera pose as geometry_msgs/PoseStamped on ~/camera_pose and set pose_source:=topic"
            )
        poses = _CorePoses(s.tf_cache_s)
        tf_qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
        static_qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(tf2_msgs.TFMessage, "/tf", lambda m: self._on_tf(m, False), tf_qos,
                                 callback_group=self._sensor_group)
        self.create_subscription(tf2_msgs.TFMessage, "/tf_static", lambda m: self._on_tf(m, True), static_qos,
                                 callback_group=self._sensor_group)
        self.pose_backend = "/tf (core TfBuffer)"
        return poses

    def _on_tf(self, msg: Any, static: bool) -> None:
        assert isinstance(self._poses, _CorePoses)
        error = self._poses.add_tf(msg, static)
        if error:
            self._warn("tf_rejected", f"ignored a malformed transform on {'/tf_static' if static else '/tf'}: {error}")
        self._retry_pending()

    def _on_camera_pose(self, msg: Any) -> None:
        assert isinstance(self._poses, _CorePoses)
        try:
            self._poses.add_pose(msg)
        except ValueError as exc:
            self._count_drop("bad_pose", f"ignored a camera pose on ~/camera_pose: {exc}")
            return
        self._retry_pending()

    def _camera_frame(self, rgbd: RgbdSet) -> str:
        if self.settings.pose_source == "topic":
            return POSE_TOPIC_CHILD_FRAME
        return str(rgbd.depth.header.frame_id or rgbd.color.header.frame_id)

    def lookup_world(self, frame_id: str, stamp_ns: int | None, latest_fallback: bool = False) -> np.ndarray:
        """T_world_frame at stamp_ns (identity for the world frame itself); raises TransformError.

        latest_fallback: when the stamp cannot be resolved, use the latest transform (for
        clicked points and detections, whose stamps need not match the TF history).
        """
        if not frame_id or frame_id.lstrip("/") == self.settings.world_frame.lstrip("/"):
            return np.eye(4)
        try:
            return self._poses.lookup(self.settings.world_frame, frame_id, stamp_ns)
        except TransformError:
            if not latest_fallback or stamp_ns is None:
                raise
            return self._poses.lookup(self.settings.world_frame, frame_id, None)

    # ------------------------------------------------------------------ sensors
    def _image_types(self) -> tuple[Any, Any]:
        from sensor_msgs.msg import CompressedImage, Image

        s = self.settings
        return (CompressedImage if s.rgb_transport == "compressed" else Image,
                CompressedImage if s.depth_transport == "compressedDepth" else Image)

    def _make_sync(self) -> str:
        from sensor_msgs.msg import CameraInfo

        s = self.settings
        rgb_type, depth_type = self._image_types()
        mf = _optional_import("message_filters") if s.sync_backend in ("auto", "ros") else None
        if mf is None and s.sync_backend == "ros":
            raise ValueError("sync_backend is 'ros' but message_filters is not importable: install "
                             "ros-$ROS_DISTRO-message-filters or set sync_backend:=core")
        if mf is not None:
            self._mf_subs = [
                mf.Subscriber(self, rgb_type, s.rgb_topic, qos_profile=qos_profile_sensor_data,
                              callback_group=self._sensor_group),
                mf.Subscriber(self, depth_type, s.depth_topic, qos_profile=qos_profile_sensor_data,
                              callback_group=self._sensor_group),
            ]
            self._mf_sync = mf.ApproximateTimeSynchronizer(self._mf_subs, s.sync_queue_size, s.sync_slop_s)
            self._mf_sync.registerCallback(self._on_mf_pair)
            self.create_subscription(CameraInfo, s.info_topic, self._on_info_latest, qos_profile_sensor_data,
                                     callback_group=self._sensor_group)
            return "message_filters"
        self._sync = RgbdSynchronizer(s.sync_slop_s, s.sync_queue_size)
        self.create_subscription(rgb_type, s.rgb_topic, self._on_color, qos_profile_sensor_data,
                                 callback_group=self._sensor_group)
        self.create_subscription(depth_type, s.depth_topic, self._on_depth, qos_profile_sensor_data,
                                 callback_group=self._sensor_group)
        self.create_subscription(CameraInfo, s.info_topic, self._on_info, qos_profile_sensor_data,
                                 callback_group=self._sensor_group)
        return "core RgbdSynchronizer"

    def _on_color(self, msg: Any) -> None:
        assert self._sync is not None
        with self._lock:
            self._counts["color_received"] += 1
            sets = self._sync.add_color(convert.stamp_to_ns(msg.header.stamp), msg)
        self._resolve(sets)

    def _on_depth(self, msg: Any) -> None:
        assert self._sync is not None
        with self._lock:
            self._counts["depth_received"] += 1
            sets = self._sync.add_depth(convert.stamp_to_ns(msg.header.stamp), msg)
        self._resolve(sets)

    def _on_info(self, msg: Any) -> None:
        assert self._sync is not None
        with self._lock:
            sets = self._sync.add_info(convert.stamp_to_ns(msg.header.stamp), msg)
        self._resolve(sets)

    def _on_info_latest(self, msg: Any) -> None:
        with self._lock:
            self._latest_info = msg

    def _on_mf_pair(self, color: Any, depth: Any) -> None:
        with self._lock:
            self._counts["color_received"] += 1
            info = self._latest_info
        if info is None:
            self._count_drop("no_camera_info", f"no camera_info on {self.settings.info_topic} yet: frame dropped")
            return
        stamp = convert.stamp_to_ns(color.header.stamp)
        self._resolve([RgbdSet(stamp, color, depth, info, convert.stamp_to_ns(depth.header.stamp))])

    def _resolve(self, sets: list[RgbdSet]) -> None:
        """Look up the pose of each new pair; pairs without one yet wait up to tf_timeout_s."""
        ready: list[tuple[RgbdSet, np.ndarray]] = []
        for rgbd in sets:
            try:
                ready.append((rgbd, self.lookup_world(self._camera_frame(rgbd), rgbd.stamp_ns)))
            except TransformError as exc:
                if self._poses.permanent(exc) or self.settings.tf_timeout_s == 0:
                    self._count_drop("no_tf", f"frame at {rgbd.stamp_ns / NS_PER_S:.3f} s dropped: {exc}")
                    continue
                with self._lock:
                    self._pending.append(_Pending(rgbd, time.monotonic() + self.settings.tf_timeout_s, str(exc)))
                    overflow = self._pending[: max(0, len(self._pending) - self._max_pending)]
                    del self._pending[: len(overflow)]
                for item in overflow:
                    self._count_drop("no_tf", f"frame at {item.rgbd.stamp_ns / NS_PER_S:.3f} s dropped: more than "
                                              f"{self._max_pending} frames waiting for TF ({item.last_error})")
        for rgbd, T in ready:
            self._ingest(rgbd, T)

    def _retry_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        now = time.monotonic()
        keep, ready = [], []
        for item in pending:
            try:
                ready.append((item.rgbd, self.lookup_world(self._camera_frame(item.rgbd), item.rgbd.stamp_ns)))
            except TransformError as exc:
                item.last_error = str(exc)
                if now >= item.deadline or self._poses.permanent(exc):
                    self._count_drop("no_tf", f"frame at {item.rgbd.stamp_ns / NS_PER_S:.3f} s dropped after "
                                              f"{self.settings.tf_timeout_s} s without a pose: {exc}")
                else:
                    keep.append(item)
        with self._lock:
            self._pending = keep + self._pending
        for rgbd, T in sorted(ready, key=lambda r: r[0].stamp_ns):
            self._ingest(rgbd, T)

    def _ingest(self, rgbd: RgbdSet, T_world_cam: np.ndarray) -> None:
        period_ns = int(self.settings.ingest_period_s * NS_PER_S)
        with self._lock:
            last = self._last_ingested_stamp
            if period_ns and last is not None and abs(rgbd.stamp_ns - last) < period_ns:
                self._counts["skipped_rate"] += 1
                return
            self._last_ingested_stamp = rgbd.stamp_ns
        try:
            frame = convert.posed_frame_from_messages(rgbd.color, rgbd.depth, rgbd.info, T_world_cam, rgbd.stamp_ns)
        except (ImageCodecError, FrameError) as exc:
            self._count_drop("invalid_frame", f"frame at {rgbd.stamp_ns / NS_PER_S:.3f} s dropped: {exc}")
            return
        if self.engine.add_frame(frame):
            with self._lock:
                self._counts["ingested"] += 1
        else:
            self._count_drop("engine_rejected", f"the engine rejected the frame at {rgbd.stamp_ns / NS_PER_S:.3f} s "
                                                "(see /diagnostics frames_dropped)")

    # ------------------------------------------------------------------ queries
    def _make_query_endpoints(self, vision_msgs: Any) -> None:
        from geometry_msgs.msg import PointStamped

        self.create_subscription(PointStamped, "/clicked_point", self._on_clicked_point, 10,
                                 callback_group=self._query_group)
        if vision_msgs is not None:
            self.create_subscription(vision_msgs.Detection3DArray, "~/external_detections", self._on_external_detections,
                                     10, callback_group=self._sensor_group)
        srv = _optional_import("video3dllm.srv")
        self.query_service_available = srv is not None and hasattr(srv, "Query")
        if self.query_service_available:
            assert srv is not None
            self._query_srv = self.create_service(srv.Query, "~/query", self._on_query, callback_group=self._query_group)
            self._response_factory: MessageFactory = self.factory
        else:
            self._response_factory = PlainFactory()
            self.get_logger().warning(
                "video3dllm/srv/Query is not importable (interfaces not built or not sourced): ~/query is disabled; "
                "build the package with colcon (VIDEO3DLLM_BUILD_INTERFACES=ON) and source install/setup.bash. "
                "/clicked_point captions still work."
            )

    def handle_query(self, request: Any) -> dict[str, Any]:
        """Run one query from Query request fields (message, dict or namespace); publish the answer.

        Returns the response fields of video3dllm/srv/Query (see convert.answer_to_query_fields);
        `objects` are GroundedObject messages when the interfaces are built, plain namespaces
        with the same fields otherwise. Never raises for bad requests: success=False, message.
        """
        try:
            outcome = run_query(self.engine, QueryRequest.from_fields(request))
        except ValueError as exc:
            question = str(request.get("question", "") if isinstance(request, dict) else getattr(request, "question", ""))
            outcome = QueryOutcome(Answer(question=question, task="auto", error=f"bad request: {exc}"), 0.0)
        stamp = self.get_clock().now().nanoseconds
        self._publish_answer(outcome.answer, stamp)
        return convert.answer_to_query_fields(
            self._response_factory, outcome.answer, self.settings.world_frame, stamp, outcome.latency_s
        )

    def _on_query(self, request: Any, response: Any) -> Any:
        fields = self.handle_query(request)
        for name, value in fields.items():
            setattr(response, name, value)
        return response

    def _on_clicked_point(self, msg: Any) -> None:
        p = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
        try:
            T = self.lookup_world(str(msg.header.frame_id), convert.stamp_to_ns(msg.header.stamp), latest_fallback=True)
        except TransformError as exc:
            self._warn("clicked_point", f"ignored /clicked_point in frame '{msg.header.frame_id}': {exc}")
            return
        target = apply_transform(T, p[None])[0]
        fields = self.handle_query({"question": self.settings.caption_question, "task": "caption",
                                    "use_target": True, "target": target.tolist()})
        self.get_logger().info(f"caption at {np.round(target, 2).tolist()}: {fields['answer'] or fields['message']}")

    def _on_external_detections(self, msg: Any) -> None:
        try:
            boxes = convert.detections_to_boxes(msg)
            T = self.lookup_world(boxes.frame_id, convert.stamp_to_ns(msg.header.stamp), latest_fallback=True)
        except (ValueError, TransformError) as exc:
            self._warn("external_detections", f"ignored ~/external_detections: {exc}")
            return
        centers = apply_transform(T, boxes.centers) if len(boxes.centers) else boxes.centers
        sizes = boxes.sizes @ np.abs(T[:3, :3]).T
        self.engine.set_external_boxes(centers, sizes, list(boxes.labels))

    def _publish_answer(self, answer: Answer, stamp_ns: int) -> None:
        from std_msgs.msg import String

        frame = self.settings.world_frame
        self._last_answer = answer
        self._markers_pub.publish(convert.answer_to_marker_array(
            self.factory, answer, frame, stamp_ns, lifetime_s=self.settings.marker_lifetime_s))
        if self._detections_pub is not None:
            self._detections_pub.publish(convert.answer_to_detection_array(self.factory, answer, frame, stamp_ns))
        self._answer_pub.publish(String(data=answer.text if answer.ok else f"error: {answer.error}"))
        self._publish_scene(stamp_ns, force=True)

    def _on_reset(self, request: Any, response: Any) -> Any:
        before = self.engine.stats()
        self.engine.reset()
        with self._lock:
            if self._sync is not None:
                self._sync = RgbdSynchronizer(self.settings.sync_slop_s, self.settings.sync_queue_size)
            self._pending.clear()
            self._last_ingested_stamp = None
        stamp = self.get_clock().now().nanoseconds
        self._markers_pub.publish(convert.answer_to_marker_array(
            self.factory, Answer(question="", task="auto"), self.settings.world_frame, stamp))
        self._publish_scene(stamp, force=True)
        response.success = True
        response.message = f"scene cleared ({before.pool_size} pooled frames, {before.voxels_total} voxels dropped)"
        return response

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, Any]:
        """Counters of the node (received, ingested, drops by reason with the latest message each, pending) and the
        engine's stats."""
        with self._lock:
            drops = Counter(self._drops)
            if self._sync is not None:
                drops.update({k: v for k, v in self._sync.stats.items() if v})
            counts = dict(self._counts)
            pending = len(self._pending)
            last_drop = dict(self._last_drop)
        return {"counts": counts, "dropped": dict(drops), "last_drop": last_drop, "pending_tf": pending,
                "engine": self.engine.stats()}

    def _publish_scene(self, stamp_ns: int, force: bool = False) -> None:
        engine_stats = self.engine.stats()
        if not force and engine_stats.frames_added == self._published_frames:
            return
        self._published_frames = engine_stats.frames_added
        frame = self.settings.world_frame
        self._coverage_pub.publish(convert.points_to_pointcloud2(self.factory, self.engine.coverage_points(), frame, stamp_ns))
        poses = [T for _, T in self.engine.keyframe_poses()]
        self._keyframes_pub.publish(convert.poses_to_pose_array(self.factory, poses, frame, stamp_ns))

    def _on_diagnostics_timer(self) -> None:
        stamp = self.get_clock().now().nanoseconds
        stats = self.stats()
        e = stats["engine"]
        dropped = Counter(stats["dropped"])
        dropped.update({f"engine_{k}": v for k, v in e.frames_dropped.items()})
        values: dict[str, Any] = {
            "ingest_rate_hz": f"{e.ingest_rate_hz:.2f}",
            "frames_ingested": e.frames_added,
            "frames_dropped": sum(dropped.values()),
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
            "pending_tf": stats["pending_tf"],
            "pool_size": e.pool_size,
            "pool_mb": f"{e.pool_bytes / 1e6:.1f}",
            "voxels_total": e.voxels_total,
            "queries": e.queries,
            "last_coverage": f"{e.last_coverage:.3f}",
            "gpu_memory_mb": _gpu_memory_mb(),
        }
        if e.frames_added == 0:
            level, message = convert.DIAGNOSTIC_WARN, "no frame ingested yet"
        elif e.ingest_rate_hz == 0:
            level, message = convert.DIAGNOSTIC_WARN, "no frame ingested recently"
        else:
            level, message = convert.DIAGNOSTIC_OK, f"ingesting at {e.ingest_rate_hz:.1f} Hz"
        self._diag_pub.publish(convert.diagnostic_array(
            self.factory, stamp, f"{self.get_name()}: scene engine", level, message, values, hardware_id=self.get_name()))
        self._publish_scene(stamp)

    def _count_drop(self, reason: str, message: str) -> None:
        with self._lock:
            self._drops[reason] += 1
            self._last_drop[reason] = message
        self._warn(reason, message)

    def _warn(self, key: str, message: str) -> None:
        """Warn at most every WARN_THROTTLE_S per kind of problem."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_warn.get(key, -1e9) < WARN_THROTTLE_S:
                return
            self._last_warn[key] = now
        self.get_logger().warning(message)


def _gpu_memory_mb() -> str:
    """Allocated CUDA memory of this process, when torch is loaded and a GPU is in use."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return "n/a"
    return f"{torch.cuda.memory_allocated() / 2**20:.0f}"


def spin(node: Node, num_threads: int | None = None, stop: Callable[[], bool] | None = None) -> None:
    """Spin `node` in a MultiThreadedExecutor (sensor and query groups run in parallel)."""
    executor = MultiThreadedExecutor(num_threads=num_threads or max(4, os.cpu_count() or 1))
    executor.add_node(node)
    try:
        if stop is None:
            executor.spin()
        else:
            while rclpy.ok() and not stop():
                executor.spin_once(timeout_sec=0.1)
    finally:
        executor.remove_node(node)
        executor.shutdown()


def main(args: list[str] | None = None) -> int:
    """Entry point of `video3dllm_node` (ros2 run / launch / console script)."""
    rclpy.init(args=args)
    node: Video3DLLMNode | None = None
    try:
        node = Video3DLLMNode()
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, OSError) as exc:
        rclpy.logging.get_logger("video3dllm").error(f"video3dllm_node cannot start: {exc}")
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
