"""Run video3dllm_node with the REAL generated interfaces on a robot-style bag (used by test_ros_built_interfaces.py).

Run in a subprocess whose PYTHONPATH/LD_LIBRARY_PATH point at a CMake install of the
`video3dllm` package (interfaces ON) and of the test-only vision_msgs / tf2_msgs builds, so
`video3dllm.srv.Query`, `vision_msgs.msg.Detection3DArray` and `tf2_msgs.msg.TFMessage` are the
rosidl-generated rclpy types. Steps:

1. write a RealSense-style rosbag2 of a synthetic room (`bag_writer.write_scene_bag`: /tf with
   interpolation, /tf_static, map 20 m from the scene frame and rotated 35 degrees);
2. start the node from the installed package (default topics, pose_source tf: the core TfBuffer
   fed by /tf and /tf_static, since tf2_ros has no wheel; proposal_source external);
3. play the bag: raw CDR from the bag -> rclpy.deserialize_message into the real classes -> publish;
4. publish the scene's true objects as oriented vision_msgs boxes in map on ~/external_detections;
5. call ~/query (caption at a chair, single and multi-object grounding) with a real Query
   client; for every answer, the ~/markers (visualization_msgs/MarkerArray) and ~/detections
   (the built vision_msgs/Detection3DArray) that arrive with the response's stamp must carry
   exactly the response's boxes, in map;
6. call ~/reset with a real std_srvs/Trigger client: the markers are cleared and a query then
   fails with "no frames"; print a JSON summary on the last line.

Exit code 0 with the summary, or an AssertionError traceback.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from scipy.spatial.transform import Rotation
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

import _ros_support as ros_support
import video3dllm_ros.node
from video3dllm import msg as generated_msg
from video3dllm.srv import Query
from video3dllm_core.bag_writer import DEFAULT_T_MAP_WORLD, write_scene_bag
from video3dllm_core.geometry import apply_transform
from video3dllm_core.synthetic import make_scene, render_frames
from video3dllm_ros import convert
from video3dllm_ros.factory import RclpyFactory

F = RclpyFactory()


wait_for = partial(ros_support.wait_for, timeout=20.0)  # the installed node, on a machine shared with other jobs


def call(node: Node, client, request):  # type: ignore[no-untyped-def]
    assert client.wait_for_service(timeout_sec=10), f"service {client.srv_name} not available"
    future = client.call_async(request)
    return wait_for(lambda: future.result() if future.done() else None, what=f"{client.srv_name} response")


def response_boxes(response) -> list[tuple[str, np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    """(label, center, size) of every GroundedObject of a Query response."""
    return [(o.label, np.array([o.bbox.center.position.x, o.bbox.center.position.y, o.bbox.center.position.z]),
             np.array([o.bbox.size.x, o.bbox.size.y, o.bbox.size.z])) for o in response.objects]


def check_published_answer(response, markers: list, detections: list) -> int:  # type: ignore[no-untyped-def]
    """The MarkerArray and Detection3DArray published for `response` (same stamp) carry its boxes in map.

    Markers: a DELETEALL first, then per object one LINE_LIST of box edges whose extent is the
    object's box (the fill cube and label come with it). Detections: one per object, same box
    and label. Returns the number of objects.
    """
    stamp = response.header.stamp
    want = response_boxes(response)
    arr = wait_for(lambda: next((m for m in reversed(markers) if m.markers and m.markers[0].header.stamp == stamp), None),
                   what="~/markers of the answer")
    assert all(m.header.frame_id == "map" for m in arr.markers), [m.header.frame_id for m in arr.markers]
    assert arr.markers[0].action == Marker.DELETEALL
    edges = sorted((m for m in arr.markers if m.action == Marker.ADD and m.type == Marker.LINE_LIST), key=lambda m: m.id)
    assert len(edges) == len(want), (len(edges), len(want))
    for marker, (_, center, size) in zip(edges, want):
        points = np.array([[p.x, p.y, p.z] for p in marker.points])
        lo, hi = points.min(axis=0), points.max(axis=0)
        assert np.allclose((lo + hi) / 2, center, atol=1e-5) and np.allclose(hi - lo, size, atol=1e-5), (lo, hi, center, size)
    det = wait_for(lambda: next((d for d in reversed(detections) if d.header.stamp == stamp), None),
                   what="~/detections of the answer")
    assert isinstance(det, Detection3DArray) and det.header.frame_id == "map", det.header.frame_id
    assert len(det.detections) == len(want), (len(det.detections), len(want))
    for d, (label, center, size) in zip(det.detections, want):
        c, s = d.bbox.center.position, d.bbox.size
        assert np.allclose([c.x, c.y, c.z], center, atol=1e-6) and np.allclose([s.x, s.y, s.z], size, atol=1e-6)
        assert d.results[0].hypothesis.class_id == (label or "object"), (d.results[0].hypothesis.class_id, label)
    return len(want)


def main(checkpoint: str, install_site: str) -> dict:
    assert video3dllm_ros.node.__file__.startswith(install_site), (
        f"the node must come from the CMake install, got {video3dllm_ros.node.__file__}")
    scene = make_scene(seed=1)
    frames = render_frames(scene, 8, width=64, height=48)
    bag = Path(tempfile.mkdtemp()) / "scene_bag"
    summary = write_scene_bag(frames, bag)

    rclpy.init()
    node = video3dllm_ros.node.Video3DLLMNode(parameter_overrides=[
        Parameter("model_path", value=checkpoint), Parameter("proposal_source", value="external"),
        Parameter("max_new_tokens", value=6), Parameter("tf_timeout_s", value=2.0)])
    assert node.query_service_available and node.pose_backend == "/tf (core TfBuffer)", node.pose_backend
    player = Node("bag_player")
    detections: list = []
    markers: list = []
    latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # as RViz asks for them
    player.create_subscription(Detection3DArray, "/video3dllm/detections", detections.append, latched)
    player.create_subscription(MarkerArray, "/video3dllm/markers", markers.append, latched)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(player)
    threading.Thread(target=executor.spin, daemon=True).start()

    # --- play the bag through the real message classes
    publishers = {}
    with Reader(bag) as reader:
        for conn in reader.connections:
            qos = qos_profile_sensor_data if "camera" in conn.topic else QoSProfile(
                depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL if conn.topic == "/tf_static" else DurabilityPolicy.VOLATILE)
            publishers[conn.topic] = (player.create_publisher(F.get_class(conn.msgtype), conn.topic, qos),
                                      F.get_class(conn.msgtype))
        assert TFMessage is publishers["/tf"][1]
        wanted = {node.settings.rgb_topic, node.settings.depth_topic, node.settings.info_topic, "/tf"}
        wait_for(lambda: all(p.get_subscription_count() > 0 for t, (p, _) in publishers.items() if t in wanted),
                 what="node subscriptions")
        for conn, _, raw in reader.messages():
            pub, cls = publishers[conn.topic]
            pub.publish(deserialize_message(raw, cls))
            time.sleep(0.01)
    n = len(frames)
    wait_for(lambda: node.stats()["counts"].get("ingested", 0) == n, what=f"{n} frames ingested over /tf")
    stats = node.stats()
    assert stats["dropped"] == {}, stats

    # --- true objects as oriented boxes in map -> axis-aligned hulls in the engine
    yaw = Rotation.from_matrix(DEFAULT_T_MAP_WORLD[:3, :3])
    q = yaw.as_quat()
    dets = []
    for obj in scene.objects:
        center = apply_transform(DEFAULT_T_MAP_WORLD, np.array([obj.center]))[0]
        pose = F.new("geometry_msgs/msg/Pose", position=F.new("geometry_msgs/msg/Point", x=center[0], y=center[1], z=center[2]),
                     orientation=F.new("geometry_msgs/msg/Quaternion", x=q[0], y=q[1], z=q[2], w=q[3]))
        hyp = F.new("vision_msgs/msg/ObjectHypothesisWithPose",
                    hypothesis=F.new("vision_msgs/msg/ObjectHypothesis", class_id=obj.label, score=1.0))
        dets.append(F.new("vision_msgs/msg/Detection3D", results=[hyp], id=str(obj.id),
                          bbox=F.new("vision_msgs/msg/BoundingBox3D", center=pose,
                                     size=F.new("geometry_msgs/msg/Vector3", x=obj.size[0], y=obj.size[1], z=obj.size[2]))))
    ext_pub = player.create_publisher(Detection3DArray, "/video3dllm/external_detections", 10)
    wait_for(lambda: ext_pub.get_subscription_count() > 0, what="external detections subscription")
    ext_pub.publish(Detection3DArray(header=convert.header_msg(F, summary.image_stamps_ns[-1], "map"), detections=dets))
    hulls = {obj.label: np.abs(yaw.as_matrix()) @ np.array(obj.size) for obj in scene.objects}

    # --- caption at the chair through the real Query service
    client = player.create_client(Query, "/video3dllm/query")
    chair = next(o for o in scene.objects if o.label == "chair")
    chair_map = apply_transform(DEFAULT_T_MAP_WORLD, np.array([chair.center]))[0]

    def caption():  # type: ignore[no-untyped-def]
        req = Query.Request(question="Describe the object here.", task="caption", use_target=True,
                            target=F.new("geometry_msgs/msg/Point", x=chair_map[0], y=chair_map[1], z=chair_map[2]))
        res = call(player, client, req)
        return res if res.objects and res.objects[0].label == "chair" else None

    response = wait_for(caption, what="caption answered with the external chair box")  # boxes arrive asynchronously
    assert isinstance(response, Query.Response) and isinstance(response.objects[0], generated_msg.GroundedObject)
    assert response.success and response.header.frame_id == "map", response.message
    box = response.objects[0].bbox
    got_center = np.array([box.center.position.x, box.center.position.y, box.center.position.z])
    got_size = np.array([box.size.x, box.size.y, box.size.z])
    assert np.allclose(got_center, chair_map, atol=1e-6), (got_center, chair_map)
    assert np.allclose(got_size, hulls["chair"], atol=1e-6), (got_size, hulls["chair"])
    stamps = [convert.stamp_to_ns(t) for t in response.keyframe_stamps]
    assert response.keyframe_count == len(stamps) > 0 and set(stamps) <= set(summary.image_stamps_ns)
    assert list(response.proposal_stamps) == []  # external boxes: no frames fused for candidates
    assert response.decoding == "greedy"  # an upstream-layout checkpoint (no caption key) decodes as upstream
    assert check_published_answer(response, markers, detections) == 1

    # --- grounding: one of the external boxes, on ~/markers and ~/detections (real vision_msgs type)
    grounded = call(player, client, Query.Request(question="Where is the chair?"))
    assert grounded.success and grounded.header.frame_id == "map" and len(grounded.objects) == 1, grounded.message
    label = grounded.objects[0].label
    assert label in hulls
    assert np.allclose(response_boxes(grounded)[0][2], hulls[label], atol=1e-6)
    assert check_published_answer(grounded, markers, detections) == 1

    # --- multi-object grounding: zero or more boxes, the same ones on every output
    multi = call(player, client, Query.Request(question="Find every chair and table.", task="ground_multi"))
    assert multi.success and multi.header.frame_id == "map", multi.message
    assert all(o.label in hulls for o in multi.objects), [o.label for o in multi.objects]
    multi_count = check_published_answer(multi, markers, detections)

    # --- reset through std_srvs/Trigger
    published = len(markers)
    reset = call(player, player.create_client(Trigger, "/video3dllm/reset"), Trigger.Request())
    assert reset.success, reset.message
    cleared = wait_for(lambda: markers[-1] if len(markers) > published else None, what="~/markers after reset")
    assert [m.action for m in cleared.markers] == [Marker.DELETEALL], "reset must clear the answer boxes in RViz"
    after = call(player, client, Query.Request(question="what is here?"))
    assert not after.success and "no frames" in after.message, after.message

    executor.shutdown()
    node.destroy_node()
    player.destroy_node()
    rclpy.shutdown()
    return {"ingested": n, "caption_label": response.objects[0].label, "caption_answer": response.answer,
            "grounded_label": label, "grounded_objects": len(grounded.objects), "multi_objects": multi_count,
            "keyframes": response.keyframe_count, "latency_s": response.latency_s, "reset": reset.message}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
