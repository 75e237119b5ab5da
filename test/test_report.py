"""Report outputs from hand-made answers: files written, HTML links, latency statistics, markers bag read back."""

from __future__ import annotations

import re
from itertools import combinations, product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rosbags.highlevel import AnyReader

from video3dllm_core.answer import Answer, GroundedObject, Timings
from video3dllm_core.report import (
    latency_stats,
    plot_birdseye,
    read_jsonl,
    top_view_corners,
    write_jsonl,
    write_markers_bag,
    write_report,
)

ORIGIN_NS = 1_700_000_000 * 1_000_000_000


def make_rows() -> list[dict]:
    """Answers of three tasks (one grounding two boxes) and one failure, as answers.jsonl rows."""
    pose = np.eye(4)
    pose[:3, 3] = (20.0, -12.0, 1.4)
    answers = [
        Answer("Where is the <red> chair?", "ground", "", (GroundedObject((21.0, -11.0, 0.45), (0.5, 0.5, 0.9), 0.8, "chair", 2),),
               (1, 2), (pose, pose), 0.91, Timings(0.002, 0.30, 0.05, 0.40, 0.0, 0.01, 0.80)),
        Answer("Find all boxes.", "ground_multi", "", (
            GroundedObject((19.0, -13.0, 0.2), (0.4, 0.4, 0.4), 0.6, "", 0),
            GroundedObject((22.0, -10.5, 0.2), (0.3, 0.3, 0.4), 0.5, "", 1),
        ), (1,), (pose,), 0.5, Timings(0.001, 0.10, 0.05, 0.20, 0.0, 0.02, 0.40)),
        Answer("What colour is the sofa?", "qa", "blue", (), (1, 2, 3), (pose, pose, pose), 0.95,
               Timings(0.003, 0.20, 0.0, 0.30, 0.50, 0.0, 1.00)),
        Answer("Describe this.", "caption", error="caption needs a target_xyz"),
    ]
    rows = []
    for i, a in enumerate(answers):
        row = a.to_dict()
        row.update(index=i, at_s=None if i else 0.5, asked_at_s=0.5 if i == 0 else 3.0,
                   stamp_ns=ORIGIN_NS + (500_000_000 if i == 0 else 3_000_000_000), frames_seen=4 + 6 * bool(i),
                   latency_s=a.timings.total_s + 0.01, requested_task="auto", target=None, situation=None)
        rows.append(row)
    return rows


def summary_for(rows: list[dict]) -> dict:
    return {
        "source": "hand-made",
        "rate": "max",
        "frames": {"read": 10, "added": 9, "dropped_by_source": {"no_tf": 1}, "dropped_by_engine": {"depth_m": 1},
                   "duration_s": 3.0},
        "ingest": {"rate_fps": 50.0, "stream_rate_fps": 40.0, "max_lag_s": None},
        "queries": {"ok": 3, "failed": 1},
        "latency_s": latency_stats(rows),
        "memory": {"max_rss_bytes": 2**30, "pool_bytes": 2**22, "pool_bytes_peak": 2**23},
        "coverage_series": {"t_s": [0.0, 1.0, 2.0, 3.0], "frames": [1, 4, 7, 9], "voxels": [100, 300, 450, 500]},
        "wall_s": 5.0,
    }


def box_edges(center: list[float], size: list[float]) -> set[frozenset]:
    """The 12 edges of a box as corner pairs, computed independently of the code under test:
    the pairs of its 8 corners that differ along exactly one axis."""
    corners = {tuple(np.asarray(center) + np.array(sign) * np.asarray(size) / 2) for sign in product((-1, 1), repeat=3)}
    return {frozenset((a, b)) for a, b in combinations(corners, 2) if np.count_nonzero(np.subtract(a, b)) == 1}


def line_list_edges(marker) -> set[frozenset]:
    pts = [(p.x, p.y, p.z) for p in marker.points]
    assert len(pts) == 24  # 12 edges, two points each, no edge twice
    return {frozenset((a, b)) for a, b in zip(pts[0::2], pts[1::2])}


def test_latency_stats_per_stage_over_successful_queries() -> None:
    rows = make_rows()
    stats = latency_stats(rows)
    totals = [0.80, 0.40, 1.00]  # the failed caption (all zeros) does not count
    assert stats["total_s"]["n"] == 3
    assert stats["total_s"]["p50"] == pytest.approx(0.80)
    assert stats["total_s"]["p90"] == pytest.approx(np.percentile(totals, 90))
    assert stats["total_s"]["max"] == pytest.approx(1.00)
    # decode ran only for the qa answer; proposals for the two grounding ones
    assert stats["decode_s"] == {"p50": 0.5, "p90": 0.5, "max": 0.5, "n": 1}
    assert stats["proposals_s"]["n"] == 2
    assert stats["end_to_end_s"]["max"] == pytest.approx(1.01)
    assert latency_stats([rows[3]]) == {}


def test_report_files_and_html_links(tmp_path: Path) -> None:
    rows = make_rows()
    rows[0]["ground_truth"] = [{"label": "red chair", "center_xyz": [21.0, -11.1, 0.45], "size_xyz": [0.5, 0.5, 0.9]}]
    rows[0]["objects"][0]["iou"] = 0.8
    points = np.random.default_rng(0).uniform((18, -14, 0), (23, -9, 2.5), (3000, 3)).astype(np.float32)
    poses = [np.asarray(p) for p in rows[2]["keyframe_poses"]]
    files = write_report(tmp_path / "out", rows, summary_for(rows), points, poses, title="test <report>",
                         notes=["untrained model"])
    assert set(files) == {"birdseye", "coverage", "latency", "html"}
    page = files["html"].read_text()
    links = re.findall(r"<img src='([^']+)'", page)
    assert sorted(links) == ["birdseye.png", "coverage.png", "latency.png"]
    for link in links:  # relative links to PNGs that exist next to the page
        with Image.open(files["html"].parent / link) as png:
            assert png.format == "PNG" and png.size[0] >= 600
    # escaped text, every question, the error, the note and the truth
    assert "test &lt;report&gt;" in page and "Where is the &lt;red&gt; chair?" in page
    for row in rows[1:]:
        assert row["question"] in page
    assert "caption needs a target_xyz" in page and "untrained model" in page and "IoU 0.80 (correct)" in page
    assert "truth red chair" in page
    assert page.count("<tr>") == 1 + 12 + 1 + 4 + 1 + len(latency_stats(rows))  # run + answers + latency tables


def test_a_turned_answer_is_drawn_turned(tmp_path: Path) -> None:
    """The footprint of a tight box turned by yaw_rad (a scene frame along a turned room's walls): its corners
    are the box's own corners turned about its centre; the bird's-eye view draws it."""
    corners = top_view_corners((20.0, -12.0), (0.4, 0.6), np.radians(30.0))
    c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    for (u, v), (x, y) in zip([(-0.2, -0.3), (0.2, -0.3), (0.2, 0.3), (-0.2, 0.3)], corners):
        assert (x, y) == pytest.approx((20.0 + c * u - s * v, -12.0 + s * u + c * v))
    np.testing.assert_allclose(top_view_corners((1.0, 2.0), (0.4, 0.6), 0.0), [[0.8, 1.7], [1.2, 1.7], [1.2, 2.3], [0.8, 2.3]])
    rows = make_rows()
    turned = {**rows[0]["objects"][0], "box_size_xyz": [0.4, 0.6, 0.9], "yaw_rad": float(np.radians(30.0))}
    rows[0]["objects"] = [turned]
    points = np.random.default_rng(0).uniform((18, -14, 0), (23, -9, 2.5), (3000, 3)).astype(np.float32)
    path = plot_birdseye(tmp_path / "b.png", points, [], rows)
    with Image.open(path) as png:
        assert png.format == "PNG"


def test_a_grounded_box_is_marked_correct_from_iou_0_25_on() -> None:
    from video3dllm_core.report import CORRECT_IOU, correctness_mark

    assert CORRECT_IOU == 0.25  # ScanRefer's Acc@0.25
    assert correctness_mark({"iou": 0.25}) == " (correct)"
    assert correctness_mark({"iou": 0.2499}) == " (wrong)"
    assert correctness_mark({"iou": 0.0}) == " (wrong)"
    assert correctness_mark({}) == ""  # no truth: no mark (replay of a real bag)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = make_rows()
    rows[0]["numpy_value"] = np.float32(0.5)
    path = write_jsonl(tmp_path / "answers.jsonl", rows)
    back = read_jsonl(path)
    assert len(path.read_text().splitlines()) == 4
    assert back[0]["numpy_value"] == 0.5 and back[1]["objects"][1]["center_xyz"] == [22.0, -10.5, 0.2]
    assert back[3]["ok"] is False and back[3]["error"] == "caption needs a target_xyz"


def test_markers_bag_holds_what_the_node_publishes(tmp_path: Path) -> None:
    from rosbags.typesys import Stores, get_typestore

    from video3dllm_ros.convert import answer_to_marker_array
    from video3dllm_ros.factory import TypestoreFactory

    rows = make_rows()
    bag = tmp_path / "markers"
    assert write_markers_bag(bag, rows, "map") == 4  # one MarkerArray per answer, as the node publishes
    with AnyReader([bag]) as reader:
        assert [c.msgtype for c in reader.connections] == ["visualization_msgs/msg/MarkerArray"]
        assert [c.topic for c in reader.connections] == ["/video3dllm/markers"]
        raw_messages = [(t, raw) for _, t, raw in reader.messages()]
        messages = [(t, reader.deserialize(raw, "visualization_msgs/msg/MarkerArray")) for t, raw in raw_messages]
    assert [t for t, _ in messages] == [row["stamp_ns"] for row in rows]
    # DELETEALL, then box edges, translucent cube and label per object.
    assert [len(m.markers) for _, m in messages] == [4, 7, 1, 1]
    for (stamp, msg), row in zip(messages, rows):
        clear = msg.markers[0]
        assert clear.action == clear.DELETEALL
        for mk in msg.markers:
            assert mk.header.frame_id == "map"
            assert mk.header.stamp.sec * 10**9 + mk.header.stamp.nanosec == stamp
        for k, obj in enumerate(row["objects"]):
            box, fill, label = msg.markers[1 + 3 * k: 4 + 3 * k]
            assert (box.ns, box.id, box.type, box.action) == ("video3dllm/box", k, box.LINE_LIST, box.ADD)
            assert line_list_edges(box) == box_edges(obj["center_xyz"], obj["size_xyz"])
            assert (fill.ns, fill.id, fill.type) == ("video3dllm/fill", k, fill.CUBE)
            pos = fill.pose.position
            assert [pos.x, pos.y, pos.z] == obj["center_xyz"]
            assert [fill.scale.x, fill.scale.y, fill.scale.z] == obj["size_xyz"]
            assert fill.color.a == pytest.approx(0.25)
            assert (label.ns, label.id, label.type) == ("video3dllm/label", k, label.TEXT_VIEW_FACING)
            top = obj["center_xyz"][2] + obj["size_xyz"][2] / 2
            assert label.pose.position.z == pytest.approx(top + 0.12)
    assert messages[0][1].markers[3].text == "chair (0.80)"
    assert [m.text for m in messages[1][1].markers[3::3]] == ["object 1 (0.60)", "object 2 (0.50)"]
    # Byte for byte what the node's own function builds for the rebuilt Answer.
    store = get_typestore(Stores.ROS2_JAZZY)
    for (stamp, raw), row in zip(raw_messages, rows):
        expected = answer_to_marker_array(TypestoreFactory(store), Answer.from_dict(row), "map", stamp)
        assert bytes(raw) == bytes(store.serialize_cdr(expected, "visualization_msgs/msg/MarkerArray"))
    with pytest.raises(FileExistsError, match="already exists"):
        write_markers_bag(bag, rows, "map")
    bad = [dict(rows[0])]
    del bad[0]["stamp_ns"]
    with pytest.raises(ValueError, match="row 0 lacks 'stamp_ns'"):
        write_markers_bag(tmp_path / "other", bad, "map")


def test_ros_conversion_imports_no_rclpy() -> None:
    """write_markers_bag imports video3dllm_ros.convert/factory: they must not pull in rclpy or a
    message package (the core never does; a machine without ROS writes markers bags too)."""
    import subprocess
    import sys

    code = (
        "import sys, video3dllm_core.report, video3dllm_ros.convert, video3dllm_ros.factory\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'std_msgs', 'visualization_msgs', 'sensor_msgs', 'geometry_msgs', 'builtin_interfaces'))\n"
        "assert 'rclpy' in {m.name for m in __import__('pkgutil').iter_modules()}, 'rclpy not installed here'\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
