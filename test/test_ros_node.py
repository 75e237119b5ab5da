"""video3dllm_node for real under rclpy: synthetic RGB-D over topics in, markers/answers/diagnostics out.

The node runs in-process with a MultiThreadedExecutor in a thread, on its own rclpy context and
ROS_DOMAIN_ID (discovery is OFF, see conftest.py), with the parameters of config/video3dllm.yaml
plus a few overrides, and the tiny parity checkpoint as its model. Poses come from
~/camera_pose (pose_source:=topic) because tf2_msgs has no wheel here; the TF path and the real
generated video3dllm/srv/Query are exercised by test_ros_built_interfaces.py.
"""

from __future__ import annotations

import os

os.environ["ROS_DOMAIN_ID"] = "41"  # unique per ROS test module

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseArray, PoseStamped
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from _ros_support import wait_for
from video3dllm_core.synthetic import make_scene, render_frames
from video3dllm_ros import convert
from video3dllm_ros.factory import RclpyFactory
from video3dllm_ros.node import Video3DLLMNode

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "test" / "fixtures" / "reference_parity" / "checkpoint"
CONFIG = ROOT / "config" / "video3dllm.yaml"
F = RclpyFactory()
STAMP0 = 1_700_000_000 * 10**9
SCENE = make_scene(seed=1)
FRAMES = render_frames(SCENE, 8, width=64, height=48)
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Rig:
    """The node under test, a driver node publishing sensors and recording outputs, the executor."""

    node: Video3DLLMNode
    driver: Node
    pubs: dict[str, Any]
    received: dict[str, list[Any]] = field(default_factory=dict)

    def publish_frame(self, i: int, with_pose: bool = True, stamp_ns: int | None = None) -> int:
        frame = FRAMES[i]
        stamp = STAMP0 + frame.stamp_ns if stamp_ns is None else stamp_ns
        h, w = frame.depth_m.shape
        if with_pose:
            self.pubs["pose"].publish(PoseStamped(header=convert.header_msg(F, stamp, "map"),
                                                  pose=convert.matrix_to_pose(F, frame.T_world_cam)))
        self.pubs["info"].publish(convert.camera_info_msg(F, frame.K_depth, w, h, stamp, "camera_color_optical_frame"))
        if self.node.settings.rgb_transport == "compressed":
            self.pubs["rgb"].publish(convert.compressed_image_msg(F, frame.rgb, stamp, "camera_color_optical_frame", "png"))
        else:
            self.pubs["rgb"].publish(convert.image_msg(F, frame.rgb, stamp, "camera_color_optical_frame", "bgr8"))
        if self.node.settings.depth_transport == "compressedDepth":
            self.pubs["depth"].publish(convert.compressed_image_msg(F, frame.depth_m, stamp, "camera_color_optical_frame", "16UC1"))
        else:
            self.pubs["depth"].publish(convert.image_msg(F, frame.depth_m, stamp, "camera_color_optical_frame", "16UC1"))
        return stamp

    def publish_all(self, count: int = len(FRAMES), first: int = 0) -> None:
        """Publish frames first..count-1, each after the previous one is ingested: sensor QoS is best effort
        with a shallow queue, as on a robot, so a burst on a loaded machine would overflow it."""
        for i in range(first, count):
            before = self.node.stats()["counts"].get("ingested", 0)
            self.publish_frame(i)
            wait_for(lambda: self.node.stats()["counts"].get("ingested", 0) > before, what=f"frame {i} ingested")

    def latest(self, topic: str) -> Any:
        return self.received[topic][-1] if self.received.get(topic) else None


@pytest.fixture(scope="module")
def context() -> Iterator[rclpy.Context]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def make_rig(ctx: rclpy.Context, **overrides: Any) -> tuple[Rig, Callable[[], None]]:
    params = {"model_path": str(CHECKPOINT), "pose_source": "topic", "world_frame": "map", "max_new_tokens": 6,
              "rgb_topic": "/test/rgb", "depth_topic": "/test/depth", "info_topic": "/test/info",
              "tf_timeout_s": 0.3, "diagnostics_period_s": 0.2, **overrides}
    node = Video3DLLMNode(context=ctx, cli_args=["--ros-args", "--params-file", str(CONFIG)],
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    driver = Node("driver", context=ctx)
    rgb_type = CompressedImage if node.settings.rgb_transport == "compressed" else Image
    depth_type = CompressedImage if node.settings.depth_transport == "compressedDepth" else Image
    pubs = {
        "rgb": driver.create_publisher(rgb_type, params["rgb_topic"], qos_profile_sensor_data),
        "depth": driver.create_publisher(depth_type, params["depth_topic"], qos_profile_sensor_data),
        "info": driver.create_publisher(CameraInfo, params["info_topic"], qos_profile_sensor_data),
        "pose": driver.create_publisher(PoseStamped, "/video3dllm/camera_pose", 50),
        "clicked": driver.create_publisher(PointStamped, "/clicked_point", 10),
    }
    rig = Rig(node, driver, pubs)
    for topic, kind, qos in (("/video3dllm/markers", MarkerArray, LATCHED), ("/video3dllm/keyframes", PoseArray, LATCHED),
                             ("/video3dllm/coverage", PointCloud2, LATCHED), ("/video3dllm/answer", String, 10),
                             ("/diagnostics", DiagnosticArray, 10)):
        rig.received[topic] = []
        driver.create_subscription(kind, topic, rig.received[topic].append, qos)
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    executor.add_node(driver)
    stop = threading.Event()

    def spin() -> None:
        # spin_once in a loop, not executor.spin(): shutting an executor down while another thread
        # is inside spin() races with pending tasks' guard conditions (rclpy InvalidHandle).
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), what="subscriptions matched")

    def teardown() -> None:
        for timer in list(node.timers):  # no timer callback may be in flight when the executor shuts down
            node.destroy_timer(timer)
        time.sleep(0.2)
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "executor thread did not stop"
        executor.shutdown()
        node.destroy_node()
        driver.destroy_node()

    return rig, teardown


@pytest.fixture
def rig(context: rclpy.Context) -> Iterator[Rig]:
    rig, teardown = make_rig(context)
    yield rig
    teardown()


def test_parameters_come_from_the_yaml_with_descriptions(rig: Rig) -> None:
    node = rig.node
    assert node.settings.sync_slop_s == 0.02 and node.settings.keyframe_strategy == "mc-ratio95"  # from the yaml
    assert node.settings.pose_source == "topic" and node.settings.tf_timeout_s == 0.3  # overrides
    (descriptor,) = node.describe_parameters(["sync_slop_s"])
    assert "colour/depth stamp difference" in descriptor.description and descriptor.read_only
    (result,) = node.set_parameters([Parameter("voxel_size_m", value=0.5)])
    assert not result.successful and "read-only" in result.reason
    assert node.sync_backend == "core RgbdSynchronizer" and node.query_service_available is False


def test_frames_are_ingested_and_reported_on_diagnostics(rig: Rig) -> None:
    rig.publish_all()
    stats = rig.node.stats()
    assert stats["counts"]["ingested"] == len(FRAMES) and stats["dropped"] == {}
    engine = stats["engine"]
    assert engine.frames_added == len(FRAMES) and engine.pool_size == len(FRAMES)

    def diag_with_all() -> Any:
        for msg in reversed(rig.received["/diagnostics"]):
            values = {kv.key: kv.value for kv in msg.status[0].values}
            if values.get("frames_ingested") == str(len(FRAMES)):
                return msg.status[0], values
        return None

    status, values = wait_for(diag_with_all, what="diagnostics reporting the frames")
    assert status.name == "video3dllm: scene engine" and status.level in (b"\x00", b"\x01")
    assert values["pool_size"] == str(len(FRAMES)) and values["frames_dropped"] == "0"
    assert {"ingest_rate_hz", "gpu_memory_mb", "voxels_total", "pending_tf"} <= set(values)
    # ~/coverage carries exactly the engine's voxel centres.
    cloud = wait_for(lambda: [m for m in rig.received["/video3dllm/coverage"] if m.width == engine.voxels_total],
                     what="coverage cloud")[-1]
    assert cloud.header.frame_id == "map"
    assert np.allclose(np.sort(convert.pointcloud2_to_points(cloud), axis=0),
                       np.sort(rig.node.engine.coverage_points(), axis=0))


def test_frames_without_a_pose_are_dropped_and_counted(rig: Rig) -> None:
    rig.publish_all(3)
    late = rig.publish_frame(3, with_pose=False, stamp_ns=STAMP0 + 10**12)  # far beyond any pose sample
    wait_for(lambda: rig.node.stats()["dropped"].get("no_tf", 0) == 1, what="no_tf drop after tf_timeout_s")
    assert late > 0 and rig.node.stats()["pending_tf"] == 0
    assert "dropped after 0.3 s without a pose" in rig.node.stats()["last_drop"]["no_tf"]
    # A frame older than the pose history (cache 10 s) is dropped at once, without waiting for tf_timeout_s:
    # the drop comes from the first lookup (message without "after ... s"), not from the retry timer.
    old = STAMP0 - 60 * 10**9
    rig.publish_frame(4, with_pose=False, stamp_ns=old)
    wait_for(lambda: rig.node.stats()["dropped"].get("no_tf", 0) == 2, what="immediate no_tf drop")
    stats = rig.node.stats()
    assert stats["last_drop"]["no_tf"].startswith(f"frame at {old / 1e9:.3f} s dropped: ")
    assert "extrapolation into the past" in stats["last_drop"]["no_tf"]
    assert stats["counts"]["ingested"] == 3 and stats["pending_tf"] == 0


def test_a_frame_waits_for_a_pose_that_arrives_later(rig: Rig) -> None:
    stamp = rig.publish_frame(0, with_pose=False)
    wait_for(lambda: rig.node.stats()["pending_tf"] == 1, what="frame waiting for its pose")
    time.sleep(0.1)
    frame = FRAMES[0]
    rig.pubs["pose"].publish(PoseStamped(header=convert.header_msg(F, stamp, "map"),
                                         pose=convert.matrix_to_pose(F, frame.T_world_cam)))
    wait_for(lambda: rig.node.stats()["counts"].get("ingested", 0) == 1, what="late-posed frame ingested")
    assert rig.node.stats()["dropped"] == {} and rig.node.stats()["pending_tf"] == 0
    ((stamp_ns, T),) = rig.node.engine.keyframe_poses()
    assert stamp_ns == stamp and np.allclose(T, frame.T_world_cam, atol=1e-9)


def test_query_publishes_markers_keyframes_and_answer(rig: Rig) -> None:
    rig.publish_all()
    fields = rig.node.handle_query({"question": "Where is the chair?"})
    assert fields["success"], fields["message"]
    assert fields["header"].frame_id == "map" and fields["keyframe_count"] >= 1
    assert 0 < fields["coverage"] <= 1 and fields["latency_s"] > 0
    objects = fields["objects"]
    assert len(objects) == 1  # "where is" -> single-object grounding

    markers = wait_for(lambda: rig.latest("/video3dllm/markers") if rig.latest("/video3dllm/markers") and
                       len(rig.latest("/video3dllm/markers").markers) > 1 else None, what="answer markers").markers
    assert markers[0].action == convert.MARKER_DELETEALL
    box = next(m for m in markers if m.ns == "video3dllm/fill")
    center = objects[0].bbox.center.position
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == pytest.approx((center.x, center.y, center.z))
    keyframes = wait_for(lambda: [m for m in rig.received["/video3dllm/keyframes"]
                                  if len(m.poses) == fields["keyframe_count"]], what="keyframes")[-1]
    assert keyframes.header.frame_id == "map"
    first = dict(rig.node.engine.keyframe_poses())
    assert any(np.allclose(convert.pose_to_matrix(p), T, atol=1e-6) for p in keyframes.poses for T in first.values())
    answer = wait_for(lambda: rig.latest("/video3dllm/answer"), what="~/answer")
    assert answer.data == fields["answer"]


def test_clicked_point_captions_the_object_there(rig: Rig) -> None:
    rig.publish_all()
    target = next(o for o in SCENE.objects if o.label == "chair")
    rig.received["/video3dllm/answer"].clear()
    rig.pubs["clicked"].publish(PointStamped(header=convert.header_msg(F, STAMP0, "map"),
                                             point=F.new("geometry_msgs/msg/Point", x=target.center[0], y=target.center[1], z=target.center[2])))
    answer = wait_for(lambda: rig.latest("/video3dllm/answer"), what="caption answer")
    assert not answer.data.startswith("error"), answer.data
    markers = wait_for(lambda: rig.latest("/video3dllm/markers") if rig.latest("/video3dllm/markers") and
                       len(rig.latest("/video3dllm/markers").markers) == 4 else None, what="caption markers").markers
    fill = next(m for m in markers if m.ns == "video3dllm/fill")
    lo = np.array([fill.pose.position.x, fill.pose.position.y, fill.pose.position.z]) - np.array(
        [fill.scale.x, fill.scale.y, fill.scale.z]) / 2
    hi = lo + np.array([fill.scale.x, fill.scale.y, fill.scale.z])
    assert np.all(lo - 1e-6 <= target.center) and np.all(np.array(target.center) <= hi + 1e-6), "box is not at the click"
    label = next(m for m in markers if m.ns == "video3dllm/label").text
    assert answer.data.strip()[:20] in label.replace("\n", " ")
    assert rig.node.engine.stats().queries == 1


def test_ingestion_continues_while_a_query_runs(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries (query callback group) never block sensor callbacks (reentrant group)."""
    rig.publish_all(2)
    started, release = threading.Event(), threading.Event()
    real_query = rig.node.engine.query

    def slow_query(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(timeout=20), "test did not release the query"
        return real_query(*args, **kwargs)

    monkeypatch.setattr(rig.node.engine, "query", slow_query)
    rig.pubs["clicked"].publish(PointStamped(header=convert.header_msg(F, STAMP0, "map"),
                                             point=F.new("geometry_msgs/msg/Point", x=0.0, y=0.0, z=0.5)))
    assert started.wait(timeout=10), "the clicked point did not start a query"
    rig.publish_all(6, first=2)  # published and ingested while the query is blocked
    assert rig.node.stats()["counts"]["ingested"] == 6
    assert not release.is_set()
    release.set()
    wait_for(lambda: rig.latest("/video3dllm/answer"), what="the blocked query's answer")


def test_reset_through_the_trigger_service(rig: Rig) -> None:
    rig.publish_all(4)
    client = rig.driver.create_client(Trigger, "/video3dllm/reset")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(Trigger.Request())
    response = wait_for(lambda: future.result() if future.done() else None, what="reset response")
    assert response.success and "4 pooled frames" in response.message
    assert rig.node.engine.stats().pool_size == 0
    markers = rig.latest("/video3dllm/markers")
    assert markers is not None and [m.action for m in markers.markers] == [convert.MARKER_DELETEALL]
    fields = rig.node.handle_query({"question": "what is on the table?"})
    assert fields["success"] is False and "no frames" in fields["message"]


def test_bad_requests_and_engine_failures_answer_with_an_error(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.publish_all(3)
    fields = rig.node.handle_query({"question": "hello", "task": "dance"})
    assert fields["success"] is False and "caption" in fields["message"]  # the valid tasks are listed
    fields = rig.node.handle_query({"question": "hello", "use_target": True, "target": [1.0, 2.0]})
    assert fields["success"] is False and "3 coordinates" in fields["message"]

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(rig.node.engine, "query", boom)
    fields = rig.node.handle_query({"question": "what is this?"})
    assert fields["success"] is False and "RuntimeError: CUDA out of memory" in fields["message"]
    wait_for(lambda: any(m.data.startswith("error: internal error in the engine: RuntimeError")
                         for m in rig.received["/video3dllm/answer"]), what="error on ~/answer")


def test_compressed_transports(context: rclpy.Context) -> None:
    rig, teardown = make_rig(context, rgb_transport="compressed", depth_transport="compressedDepth",
                             rgb_topic="/test/rgb/compressed", depth_topic="/test/depth/compressedDepth")
    try:
        rig.publish_all(5)
        assert rig.node.stats()["dropped"] == {}
        assert rig.node.handle_query({"question": "what is in the room?", "task": "qa"})["success"]
    finally:
        teardown()


def test_pose_source_tf_without_tf2_refuses_to_start_with_the_fix(context: rclpy.Context,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from video3dllm_ros import node as node_module

    real = node_module._optional_import
    monkeypatch.setattr(node_module, "_optional_import",
                        lambda name: None if name.startswith("tf2") else real(name))
    with pytest.raises(ValueError, match="pose_source:=topic"):
        Video3DLLMNode(context=context, node_name="refused",
                       parameter_overrides=[Parameter("model_path", value=str(CHECKPOINT))])
