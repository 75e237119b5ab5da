"""Replay: the scene engine driven from recordings, with the embedded default model.

Frames come from a rendered synthetic room (stamps 1/3 s apart); the bag is a real MCAP rosbag2
written by bag_writer (map 20 m from the room, rotated). Expected frame counts and query times
are recomputed here from the frame stamps, independently of the replay's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from video3dllm_core.bag_writer import SceneBagTopics, write_scene_bag
from video3dllm_core.cli import main
from video3dllm_core.engine import EngineConfig, SceneEngine
from video3dllm_core.queries import QuerySpec
from video3dllm_core.replay import build_summary, replay
from video3dllm_core.report import STAGES, read_jsonl
from video3dllm_core.sources.posed_images import PosedImagesSource, write_posed_images
from video3dllm_core.synthetic import make_scene, render_frames

N_FRAMES = 12
W, H = 96, 72
NS = 1_000_000_000


@pytest.fixture(scope="module")
def scene() -> tuple:
    spec = make_scene(3)
    return spec, render_frames(spec, N_FRAMES, W, H)


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory, scene: tuple):
    return write_scene_bag(scene[1], tmp_path_factory.mktemp("replay") / "bag")


@pytest.fixture(scope="module")
def model():
    return SceneEngine.load().model


def new_engine(model, **overrides) -> SceneEngine:
    return SceneEngine(model, EngineConfig(max_frames=4, max_new_tokens=4, **overrides))


def frames_until(frames: list, at_s: float) -> int:
    """Frames stamped at or before at_s seconds after the first frame."""
    return sum(1 for f in frames if (f.stamp_ns - frames[0].stamp_ns) / NS <= at_s)


def test_max_rate_asks_each_query_when_stream_time_passes_its_at_s(scene: tuple, model) -> None:
    frames = scene[1]
    engine = new_engine(model)
    queries = [
        QuerySpec(0, "What is here?", "qa", at_s=0.5),
        QuerySpec(1, "What is here?", "qa", at_s=2.0),  # frame 6 is stamped exactly 2.0 s: it is seen
        QuerySpec(2, "What is here?", "qa"),
        QuerySpec(3, "What is here?", "qa", at_s=100.0),  # past the end: after the last frame
    ]
    asked: list[int] = []
    result = replay(frames, engine, queries, rate="max", on_answer=lambda r: asked.append(r.spec.index))
    assert asked == [0, 1, 3, 2]  # timed ones in at_s order, then the untimed ones
    assert [r.spec.index for r in result.records] == [0, 1, 2, 3]  # reported in file order
    end_s = (frames[-1].stamp_ns - frames[0].stamp_ns) / NS
    assert [r.frames_seen for r in result.records] == [
        frames_until(frames, 0.5), frames_until(frames, 2.0), N_FRAMES, N_FRAMES
    ] == [2, 7, 12, 12]
    assert [r.asked_at_s for r in result.records] == [0.5, 2.0, end_s, end_s]
    for r in result.records:
        assert r.answer.ok, r.answer.error
        assert r.stamp_ns == frames[0].stamp_ns + round(r.asked_at_s * NS)
        # an answer only uses frames that had arrived when it was asked
        assert max(r.answer.keyframe_stamps_ns) <= r.stamp_ns
    assert result.frames_read == result.frames_added == N_FRAMES and result.max_lag_s is None
    # coverage series: one sample per frame, monotone, ending at the engine's own count
    t, counts, voxels = zip(*result.series)
    assert list(counts) == list(range(1, N_FRAMES + 1))
    assert list(t) == [(f.stamp_ns - frames[0].stamp_ns) / NS for f in frames]
    assert all(b >= a for a, b in zip(voxels, voxels[1:])) and voxels[-1] == engine.stats().voxels_total


class SlowQueryEngine:
    """Wraps an engine: queries take 0.25 s longer; counts frames added while a query runs."""

    def __init__(self, engine: SceneEngine) -> None:
        self.engine = engine
        self.busy = False
        self.added_while_busy = 0
        self.query_threads: list[str] = []

    def add_frame(self, frame) -> bool:
        self.added_while_busy += self.busy
        return self.engine.add_frame(frame)

    def query(self, *args, **kwargs):
        self.busy = True
        self.query_threads.append(threading.current_thread().name)
        try:
            time.sleep(0.25)
            return self.engine.query(*args, **kwargs)
        finally:
            self.busy = False

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def test_recorded_rate_keeps_adding_frames_while_a_query_runs(scene: tuple, model) -> None:
    step = 40_000_000  # 25 Hz: the whole stream lasts 0.44 s
    frames = [dataclasses.replace(f, stamp_ns=i * step) for i, f in enumerate(scene[1])]
    spy = SlowQueryEngine(new_engine(model))
    t0 = time.perf_counter()
    result = replay(frames, spy, [QuerySpec(0, "What is here?", "qa", at_s=0.1), QuerySpec(1, "Where am I?", "qa")],
                    rate="recorded")
    wall = time.perf_counter() - t0
    duration = (N_FRAMES - 1) * step / NS
    assert wall >= duration  # paced at the recorded rate, not faster
    assert result.frames_added == N_FRAMES and result.max_lag_s is not None and result.max_lag_s >= 0
    assert spy.added_while_busy > 0  # frames kept arriving during the timed query
    assert all(name.startswith("replay-query") for name in spy.query_threads) and len(spy.query_threads) == 2
    first, last = result.records
    assert first.asked_at_s == 0.1 and frames_until(frames, 0.1) <= first.frames_seen < N_FRAMES
    assert last.frames_seen == N_FRAMES
    assert first.latency_s >= 0.25 and first.answer.ok and last.answer.ok


def test_frame_accounting_counts_source_and_engine_drops(tmp_path: Path, scene: tuple, model) -> None:
    frames = scene[1]
    directory = tmp_path / "scene"
    stems = write_posed_images(directory, frames)
    (directory / f"{stems[3]}.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")  # ScanNet's invalid pose

    def break_one(source):  # the engine re-validates: depth emptied after the frame was made
        for i, frame in enumerate(source):
            if i == 5:
                frame.depth_m[:] = 0
            yield frame

    engine = new_engine(model)
    with PosedImagesSource(directory) as source:
        result = replay(break_one(source), engine, [], rate="max")
        summary = build_summary(result, engine, source.describe(), dict(source.stats.dropped), "world")
    f = summary["frames"]
    assert f["dropped_by_source"] == {"invalid_pose": 1}
    assert f["dropped_by_engine"] == {"depth_m": 1}
    assert f["read"] == N_FRAMES - 1 == len(stems) - sum(f["dropped_by_source"].values())
    assert f["added"] == f["read"] - sum(f["dropped_by_engine"].values()) == engine.stats().frames_added
    assert len(summary["coverage_series"]["t_s"]) == f["read"]
    assert summary["queries"] == {"count": 0, "ok": 0, "failed": 0, "by_task": {}, "paused_stream_s": 0.0}


def test_replay_command_on_a_bag_writes_answers_summary_report_and_markers(
    tmp_path: Path, scene: tuple, bag, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, frames = scene
    obj = spec.objects[0]
    target = (bag.T_map_world @ np.append(obj.center, 1.0))[:3]
    queries = tmp_path / "queries.yaml"
    queries.write_text(
        f"- {{question: 'Where is the {obj.colour} {obj.label}?', task: ground, at_s: 0.5}}\n"
        "- {question: 'What is on the table?', task: qa}\n"
        f"- {{question: 'Describe the object at this location.', task: caption, target: {target.tolist()}}}\n"
        "- {question: 'Describe the object at this location.', task: caption}\n"  # no target: an error answer
    )
    out, markers = tmp_path / "out", tmp_path / "markers"
    argv = ["replay", str(bag.path), "--queries", str(queries), "--out", str(out), "--markers-bag", str(markers),
            "--max-frames", "4"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "Q0 [ground] at 0.50 s, 2 frames" in stdout and "Q3 [caption]" in stdout

    rows = read_jsonl(out / "answers.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["ok"] for r in rows] == [True, True, True, False] and "target" in rows[3]["error"]
    assert rows[0]["at_s"] == 0.5 and rows[0]["frames_seen"] == frames_until(frames, 0.5)
    assert rows[0]["stamp_ns"] == bag.image_stamps_ns[0] + NS // 2
    assert [r["frames_seen"] for r in rows[1:]] == [N_FRAMES] * 3
    assert rows[2]["target"] == pytest.approx(target.tolist()) and rows[2]["requested_task"] == "caption"
    for r in rows[:3]:
        assert set(r["timings"]) == set(STAGES) and r["timings"]["total_s"] > 0
        assert len(r["keyframe_stamps_ns"]) == len(r["keyframe_poses"]) <= 4
        assert set(r["keyframe_stamps_ns"]) <= set(bag.image_stamps_ns)

    summary = json.loads((out / "summary.json").read_text())
    f = summary["frames"]
    rgb_messages = bag.message_counts[SceneBagTopics().rgb_topic]
    assert f["read"] == rgb_messages - sum(f["dropped_by_source"].values()) == N_FRAMES
    assert f["added"] == f["read"] - sum(f["dropped_by_engine"].values())
    assert f["first_stamp_ns"] == bag.image_stamps_ns[0] and f["last_stamp_ns"] == bag.image_stamps_ns[-1]
    assert f["duration_s"] == pytest.approx((bag.image_stamps_ns[-1] - bag.image_stamps_ns[0]) / NS)
    assert summary["queries"]["ok"] == 3 and summary["queries"]["failed"] == 1
    assert summary["world_frame"] == "map" and summary["rate"] == "max"
    assert summary["ingest"]["rate_fps"] > 0 and summary["ingest"]["add_s"] > 0
    for stage, v in summary["latency_s"].items():
        assert 0 < v["p50"] <= v["p90"] <= v["max"], stage
    assert summary["latency_s"]["total_s"]["n"] == 3
    assert summary["memory"]["max_rss_bytes"] > summary["memory"]["pool_bytes_peak"] >= summary["memory"]["pool_bytes"] > 0
    series = summary["coverage_series"]
    assert len(series["t_s"]) == len(series["voxels"]) == f["read"] and series["frames"][-1] == f["added"]
    assert summary["engine"]["max_frames"] == 4

    page = (out / "report.html").read_text()
    links = re.findall(r"<img src='([^']+)'", page)
    assert len(links) == 3 and all((out / link).is_file() for link in links)

    with AnyReader([markers]) as reader:
        messages = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    # One MarkerArray per answer, as the node publishes: DELETEALL, then edges, cube, label per object.
    assert [t for t, _ in messages] == [r["stamp_ns"] for r in rows]
    assert len(rows[0]["objects"]) >= 1 and not rows[3]["objects"]
    assert [len(m.markers) for _, m in messages] == [1 + 3 * len(r["objects"]) for r in rows]
    for (_, msg), row in zip(messages, rows):
        assert {m.header.frame_id for m in msg.markers} == {"map"}
        assert msg.markers[0].action == msg.markers[0].DELETEALL
        for k, obj in enumerate(row["objects"]):
            box = msg.markers[1 + 3 * k]
            assert box.ns == "video3dllm/box" and box.type == box.LINE_LIST
            pts = [(p.x, p.y, p.z) for p in box.points]
            assert len(pts) == 24
            # independently: the corner pairs of the box that differ in exactly one sign; the bag's map is turned
            # 35 degrees from the room, so the box is the tight one along the room's walls, turned by yaw_rad
            assert obj["box_size_xyz"] is not None and abs(np.degrees(obj["yaw_rad"]) % 90.0 - 35.0) < 1.0
            c, s = np.asarray(obj["center_xyz"]), np.asarray(obj["box_size_xyz"])
            cos, sin = np.cos(obj["yaw_rad"]), np.sin(obj["yaw_rad"])
            R = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
            signs = list(itertools.product((-1, 1), repeat=3))
            corner = {sign: tuple(np.round(c + R @ (np.array(sign) * s / 2), 9)) for sign in signs}
            expected = {frozenset((corner[a], corner[b])) for a, b in itertools.combinations(signs, 2)
                        if np.count_nonzero(np.subtract(a, b)) == 1}
            drawn = {frozenset((tuple(np.round(a, 9)), tuple(np.round(b, 9)))) for a, b in zip(pts[0::2], pts[1::2])}
            assert drawn == expected
    assert f"wrote {len(rows)} MarkerArray message(s)" in stdout


def test_replay_exits_1_when_every_query_failed(tmp_path: Path, bag, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps([{"question": "Describe the object at this location.", "task": "caption"}]))
    assert main(["replay", str(bag.path), "--queries", str(queries), "--out", str(tmp_path / "out")]) == 1
    assert "all 1 queries failed" in capsys.readouterr().err
    (row,) = read_jsonl(tmp_path / "out" / "answers.jsonl")
    assert row["ok"] is False and row["error"]


def _empty_bag(path: Path) -> Path:
    from rosbags.typesys import Stores, get_typestore

    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:  # type: ignore[arg-type]
        writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=get_typestore(Stores.ROS2_JAZZY))
    return path


def test_replay_error_paths_exit_2_with_one_line(tmp_path: Path, bag, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("- question: What is here?\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- question: What is here?\n- {question: Count them, task: count}\n")
    taken = tmp_path / "taken"
    taken.mkdir()
    cases = [
        (["replay", str(tmp_path / "nope"), "--queries", str(good)], ["does not exist"]),
        (["replay", str(_empty_bag(tmp_path / "empty")), "--queries", str(good)], ["is empty"]),
        (["replay", str(bag.path), "--queries", str(good), "--rgb-topic", "/nope"], ["'/nope'", "Topics in the bag"]),
        (["replay", str(bag.path), "--queries", str(bad)], ["entry 1", "'task'", "'count'"]),
        (["replay", str(bag.path), "--queries", str(tmp_path / "missing.yaml")], ["missing.yaml", "does not exist"]),
        (["replay", str(bag.path), "--queries", str(good), "--markers-bag", str(taken)], ["--markers-bag", "exists"]),
        (["replay", str(bag.path), "--queries", str(good), "--max-frames", "0"], ["--max-frames"]),
        (["replay", str(bag.path), "--queries", str(good), "--model", str(tmp_path / "nomodel")], ["--model"]),
        (["replay", str(bag.path), "--queries", str(good), "--world-frame", "elsewhere", "--out", str(tmp_path / "o")],
         ["no usable frame", "no_tf: 12"]),
    ]
    for argv, fragments in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after the progress bar (cleared with \r)
        assert err.startswith("video3dllm replay: error: ") and err.count("\n") == 1, err
        for fragment in fragments:
            assert fragment in err, (argv, err)
    assert not (tmp_path / "o" / "answers.jsonl").exists()
