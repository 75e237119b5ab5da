"""The scene engine end to end: a rendered scene on disk, read back through both frame sources.

One synthetic room (`video3dllm synth-scene`, 16 frames of 160x120) is read as a posed-images
directory and, written by `bag_writer`, as three MCAP rosbag2s that place the room in `map`:
identity (map = the room's world frame), shifted (20 m away, no rotation) and rotated (the
writer's default: 20 m away and turned 35 degrees). Frames go through `open_source` ->
`SceneEngine.add_frame` with the embedded default model. Its weights are random, so these tests
check bookkeeping, never answer quality: where boxes land (against objects.json, mapped into the
source's world frame here), that both source types give the same answers, that caching changes
no number, and that every failure is a clear error that leaves the buffered scene intact.

Related tests elsewhere: test_replay.py::test_replay_error_paths_exit_2_with_one_line (missing
path, empty bag without the camera topics, missing topic, unknown task in a query file),
test_rosbag_source.py (the same bag errors at the source level), test_engine.py (engine on
in-memory frames, parity with the upstream fixture).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from video3dllm_core.answer import ENGINE_TASKS, Answer, GroundedObject
from video3dllm_core.bag_writer import (
    DEFAULT_STAMP_OFFSET_NS,
    DEFAULT_T_MAP_WORLD,
    SceneBagTopics,
    make_transform,
    write_scene_bag,
)
from video3dllm_core.cli import main
from video3dllm_core.engine import EngineConfig, SceneEngine
from video3dllm_core.frame import PosedFrame
from video3dllm_core.sources import open_source

SEED, N_FRAMES, W, H = 2, 16, 160, 120
T_SHIFT = make_transform([20.0, -12.0, 0.0])  # translation only: true boxes stay boxes in map
TRANSFORMS = {"posed": np.eye(4), "identity": np.eye(4), "shifted": T_SHIFT, "rotated": DEFAULT_T_MAP_WORLD}
BOX_TOL_M = 1e-5
TOPICS = SceneBagTopics()


@dataclasses.dataclass
class Recording:
    root: Path
    scene_dir: Path
    bags: dict[str, Path]  # "identity" | "shifted" | "rotated" -> rosbag2 directory
    centers: np.ndarray  # [K, 3] objects.json box centres (the room's world frame)
    sizes: np.ndarray  # [K, 3]
    labels: list[str]
    frames: dict[str, list[PosedFrame]]  # "posed" + the bag names -> frames as the source yields them

    def path(self, source: str) -> Path:
        return self.scene_dir if source == "posed" else self.bags[source]

    def truth(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """objects.json boxes in the source's world frame (the axis-aligned hull when rotated)."""
        T = TRANSFORMS[source]
        return self.centers @ T[:3, :3].T + T[:3, 3], self.sizes @ np.abs(T[:3, :3]).T


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    root = tmp_path_factory.mktemp("e2e")
    scene_dir = root / "scene"
    argv = ["synth-scene", str(scene_dir), "--seed", str(SEED), "--frames", str(N_FRAMES), "--width", str(W),
            "--height", str(H)]
    assert main(argv) == 0
    bags = {name: write_scene_bag(scene_dir, root / f"bag_{name}", T_map_world=TRANSFORMS[name]).path
            for name in ("identity", "shifted", "rotated")}
    doc = json.loads((scene_dir / "objects.json").read_text())
    boxes = [o["box"] for o in doc["objects"]]
    centers = np.array([b["center"] for b in boxes], dtype=np.float64)
    sizes = np.array([b["size"] for b in boxes], dtype=np.float64)
    frames = {}
    for name in ("posed", *bags):
        with open_source(scene_dir if name == "posed" else bags[name]) as source:
            frames[name] = list(source)
    return Recording(root, scene_dir, bags, centers, sizes, [o["label"] for o in doc["objects"]], frames)


def _engine(frames: list[PosedFrame], **config: Any) -> SceneEngine:
    """The embedded default model, short prompts (<= 6 keyframes, 4 new tokens), all frames added."""
    engine = SceneEngine.load(EngineConfig(**{"max_frames": 6, "max_new_tokens": 4, **config}))
    for frame in frames:
        assert engine.add_frame(frame), engine.stats().last_drop_message
    return engine


def _box(obj: GroundedObject) -> np.ndarray:
    return np.array([*obj.center_xyz, *obj.size_xyz], dtype=np.float64)


def _truth_index(obj: GroundedObject, centers: np.ndarray, sizes: np.ndarray) -> int:
    """Index of the true box equal to the object's box (to BOX_TOL_M); fails if there is none."""
    error = np.abs(np.c_[centers, sizes] - _box(obj)).max(axis=1)
    assert error.min() <= BOX_TOL_M, f"{obj} is none of the true boxes (closest off by {error.min():.2e} m)"
    return int(np.argmin(error))


def _no_object_loses(monkeypatch: pytest.MonkeyPatch, engine: SceneEngine) -> None:
    """Push the learned "no object" score to -1 so that ground_multi returns objects.

    The random default model's "no object" target always wins (ground_multi would return nothing
    and the box checks would be vacuous); everything before and after the head stays real.
    """
    real = engine.model.ground

    def ground(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        scores = out.scores.clone()
        scores[-1] = -1.0
        return dataclasses.replace(out, scores=scores)

    monkeypatch.setattr(engine.model, "ground", ground)


def _check_frames_match_across_sources(rec: Recording) -> None:
    """Precondition of the cross-source comparisons: the bags carry the posed-images frames."""
    posed = rec.frames["posed"]
    for name in rec.bags:
        frames = rec.frames[name]
        assert len(frames) == len(posed) == N_FRAMES, name
        for a, b in zip(posed, frames):
            assert b.stamp_ns == a.stamp_ns + DEFAULT_STAMP_OFFSET_NS
            np.testing.assert_array_equal(b.rgb, a.rgb)
            np.testing.assert_array_equal(b.depth_m, a.depth_m)
            np.testing.assert_allclose(b.T_world_cam, TRANSFORMS[name] @ a.T_world_cam, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------- ground-truth boxes
@pytest.fixture(scope="module")
def external_answers(recording: Recording) -> dict[str, dict[str, Any]]:
    """Per source: the engine and its answers with the true boxes (source frame) as candidates."""
    rec = recording
    _check_frames_match_across_sources(rec)
    out: dict[str, dict[str, Any]] = {}
    for source in ("posed", "identity", "shifted"):
        engine = _engine(rec.frames[source], proposal_source="external")
        centers, sizes = rec.truth(source)
        engine.set_external_boxes(centers, sizes, rec.labels)
        answers: dict[str, Any] = {"engine": engine, "centers": centers, "sizes": sizes}
        answers["ground"] = engine.query("where is the red chair?", task="ground")
        answers["auto"] = engine.query("find the lamp next to the sofa")
        with pytest.MonkeyPatch.context() as mp:
            _no_object_loses(mp, engine)
            answers["ground_multi"] = engine.query("find all chairs", task="ground_multi")
        answers["captions"] = [engine.query("", task="caption", target_xyz=c) for c in centers]
        answers["scene_T"] = engine.scene_frame.T_scene_world.copy() if engine.scene_frame else None
        out[source] = answers
    return out


@pytest.mark.parametrize("source", ["posed", "identity", "shifted"])
def test_ground_truth_boxes_come_back_where_objects_json_says(recording: Recording,
                                                              external_answers: dict[str, dict[str, Any]],
                                                              source: str) -> None:
    rec = recording
    res = external_answers[source]
    centers, sizes = res["centers"], res["sizes"]
    ground, auto, multi = res["ground"], res["auto"], res["ground_multi"]
    for answer, task in ((ground, "ground"), (auto, "ground"), (multi, "ground_multi")):
        assert answer.ok and answer.task == task, answer.error
        # every candidate is a true box, in the order given, with its objects.json label
        assert len(answer.candidates) == len(rec.labels)
        for i, cand in enumerate(answer.candidates):
            assert _truth_index(cand, centers, sizes) == i == cand.proposal_index
            assert cand.label == rec.labels[i]
        for obj in answer.objects:
            i = _truth_index(obj, centers, sizes)
            assert obj.label == rec.labels[i] and obj.proposal_index == i
            assert obj.score == answer.candidates[i].score
        assert not [w for w in answer.warnings if "range" in w]
    # ground: exactly one object, the best-scoring candidate (ScanRefer rule, "no object" fell back)
    scores = [c.score for c in ground.candidates]
    assert len(ground.objects) == 1 and ground.objects[0].proposal_index == int(np.argmax(scores))
    # ground_multi (with "no object" pushed down): one or more true boxes, best first
    assert multi.objects and multi.text == f"{len(multi.objects)} object" + ("s" if len(multi.objects) > 1 else "")
    multi_scores = [o.score for o in multi.objects]
    assert multi_scores == sorted(multi_scores, reverse=True)
    assert multi_scores[0] == max(c.score for c in multi.candidates)
    # caption at each object's centre describes exactly that object's box
    for i, caption in enumerate(res["captions"]):
        assert caption.ok and caption.task == "caption", caption.error
        (obj,) = caption.objects
        assert _truth_index(obj, centers, sizes) == i and obj.label == rec.labels[i] and obj.score == 1.0


def test_both_source_types_give_the_same_answers(external_answers: dict[str, dict[str, Any]]) -> None:
    """Posed-images world == bag map (identity): same keyframes, boxes, scores; 20 m shift: shifted boxes only."""
    posed, identity, shifted = (external_answers[s] for s in ("posed", "identity", "shifted"))
    offset = T_SHIFT[:3, 3]
    for key in ("ground", "auto", "ground_multi"):
        a, b, c = posed[key], identity[key], shifted[key]
        assert [s - DEFAULT_STAMP_OFFSET_NS for s in b.keyframe_stamps_ns] == list(a.keyframe_stamps_ns)
        assert c.keyframe_stamps_ns == b.keyframe_stamps_ns
        np.testing.assert_allclose([_box(o) for o in b.objects], [_box(o) for o in a.objects], rtol=0, atol=BOX_TOL_M)
        np.testing.assert_allclose([_box(o) - np.r_[offset, 0, 0, 0] for o in c.objects],
                                   [_box(o) for o in a.objects], rtol=0, atol=BOX_TOL_M)
        assert [o.proposal_index for o in a.objects] == [o.proposal_index for o in b.objects]
        np.testing.assert_allclose([o.score for o in b.candidates], [o.score for o in a.candidates], rtol=0, atol=1e-6)
        # the model sees scene-frame coordinates: a 20 m shift changes them by float32 rounding only
        np.testing.assert_allclose([o.score for o in c.candidates], [o.score for o in a.candidates], rtol=0, atol=1e-3)
        assert a.text == b.text
    for a, b in zip(posed["captions"], identity["captions"]):
        assert a.text == b.text and a.objects == b.objects
    # the scene frame follows the room: shifted by exactly the map offset
    np.testing.assert_allclose(identity["scene_T"], posed["scene_T"], rtol=0, atol=1e-9)
    expected = posed["scene_T"].copy()
    expected[:3, 3] -= offset
    np.testing.assert_allclose(shifted["scene_T"], expected, rtol=0, atol=1e-4)


def test_rotated_map_keeps_engine_coordinates_consistent(recording: Recording) -> None:
    """The bag writer's default map (20 m away, 35 degrees): poses, scene frame and boxes stay in map."""
    rec = recording
    T = DEFAULT_T_MAP_WORLD
    engine = _engine(rec.frames["rotated"], proposal_source="external")
    centers, hulls = rec.truth("rotated")  # axis-aligned hulls of the turned boxes
    engine.set_external_boxes(centers, hulls, rec.labels)
    ground = engine.query("where is the chair?", task="ground")
    assert ground.ok, ground.error
    assert not [w for w in ground.warnings if "range" in w]
    # keyframe poses are the map poses of the recorded frames
    posed = {f.stamp_ns + DEFAULT_STAMP_OFFSET_NS: f.T_world_cam for f in rec.frames["posed"]}
    for stamp, pose in zip(ground.keyframe_stamps_ns, ground.keyframe_poses):
        np.testing.assert_allclose(pose, T @ posed[stamp], rtol=0, atol=1e-9)
    # scene frame: turned about up onto the room's walls (scene_yaw 'walls': the map's 35 degrees undone, modulo
    # 90), origin at the room's centre (world origin) and floor (z = 0)
    scene = engine.scene_frame
    assert scene is not None
    R = scene.T_scene_world[:3, :3] @ T[:3, :3]  # scene <- room: a multiple of 90 degrees about up
    turn = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
    assert abs((turn + 45.0) % 90.0 - 45.0) < 0.5, turn
    np.testing.assert_allclose(R[2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(scene.to_scene(T[:3, 3])[:2], [0.0, 0.0], rtol=0, atol=0.3)
    assert abs(scene.to_scene(T[:3, 3])[2]) < 0.03
    # coverage voxels lie in the turned room in map (room footprint rotated, plus a voxel of slack)
    room = json.loads((rec.scene_dir / "objects.json").read_text())["room"]["size"]
    local = (engine.coverage_points().astype(np.float64) - T[:3, 3]) @ T[:3, :3]  # map -> world
    assert np.all(np.abs(local[:, :2]) <= np.array(room[:2]) / 2 + 0.15)
    # candidates come back exactly as given; centres are the objects' centres mapped into map
    for i, cand in enumerate(ground.candidates):
        assert _truth_index(cand, centers, hulls) == i and cand.label == rec.labels[i]
    np.testing.assert_allclose([c.center_xyz for c in ground.candidates], (T[:3, :3] @ rec.centers.T).T + T[:3, 3],
                               rtol=0, atol=BOX_TOL_M)
    # caption at an object's map centre: the smallest hull containing it (hulls of turned boxes can overlap)
    unambiguous = 0
    for i, c in enumerate(centers):
        caption = engine.query("", task="caption", target_xyz=c)
        assert caption.ok, caption.error
        (obj,) = caption.objects
        inside = np.flatnonzero(np.all(np.abs(centers - c) <= hulls / 2, axis=1))
        assert obj.score == 1.0 and _truth_index(obj, centers, hulls) in inside
        if inside.tolist() == [i]:
            unambiguous += 1
            assert obj.proposal_index == i and obj.label == rec.labels[i]
    assert unambiguous >= len(centers) // 2


def test_geometric_proposals_agree_across_source_types(recording: Recording) -> None:
    """Class-agnostic proposals from the fused keyframe points: same world boxes from either source."""
    rec = recording
    answers = {}
    for source in ("posed", "identity", "shifted"):
        engine = _engine(rec.frames[source])
        answers[source] = engine.query("where is the chair?", task="ground")
        assert answers[source].ok, answers[source].error
    posed, identity, shifted = answers["posed"], answers["identity"], answers["shifted"]
    boxes = np.array([_box(c) for c in posed.candidates])
    assert len(boxes) >= 3
    np.testing.assert_allclose([_box(c) for c in identity.candidates], boxes, rtol=0, atol=BOX_TOL_M)
    np.testing.assert_allclose([_box(c) - np.r_[T_SHIFT[:3, 3], 0, 0, 0] for c in shifted.candidates], boxes,
                               rtol=0, atol=1e-4)  # float32 points 20 m out: rounding ~2e-6 m per point
    assert [c.score for c in identity.candidates] == pytest.approx([c.score for c in posed.candidates], abs=1e-6)
    assert identity.objects[0].proposal_index == posed.objects[0].proposal_index
    # every proposal overlaps a true object (a frame mistake puts them 20 m off)
    lo, hi = rec.centers - rec.sizes / 2, rec.centers + rec.sizes / 2
    overlap = np.all((boxes[:, None, :3] - boxes[:, None, 3:] / 2 < hi[None]) &
                     (boxes[:, None, :3] + boxes[:, None, 3:] / 2 > lo[None]), axis=2)
    assert overlap.any(axis=1).mean() >= 0.8, overlap.any(axis=1)


# ---------------------------------------------------------------------------------- caching
def test_cached_and_uncached_engines_agree_through_the_bag(recording: Recording) -> None:
    """Rotated-map bag, estimated scene frame, geometric proposals; the scene grows between rounds."""
    rec = recording
    frames = rec.frames["rotated"]
    target = (DEFAULT_T_MAP_WORLD @ np.r_[rec.centers[0], 1.0])[:3]
    queries: list[tuple[str, dict[str, Any]]] = [
        ("what is next to the sofa?", {"task": "qa"}),
        ("where is the lamp?", {"task": "ground"}),
        ("find all chairs", {"task": "ground_multi"}),
        ("", {"task": "caption", "target_xyz": target}),
        ("which way is the door?", {"task": "situated_qa", "situation": "I sit on the sofa."}),
    ]
    cached, plain = (_engine(frames[:8], max_frames=4, enable_cache=flag) for flag in (True, False))
    assert cached.model is not plain.model  # two independent loads of the default model
    for round_index in range(2):
        for question, kwargs in queries:
            a, b = cached.query(question, **kwargs), plain.query(question, **kwargs)
            assert a.ok and b.ok, (a.error, b.error)
            assert (a.text, a.task, a.objects, a.candidates) == (b.text, b.task, b.objects, b.candidates)
            assert a.no_object_score == b.no_object_score and a.warnings == b.warnings
            assert a.keyframe_stamps_ns == b.keyframe_stamps_ns and a.coverage == b.coverage
            assert not b.cache_hit
        assert a.cache_hit  # the cached engine reused the keyframe set's features and prefix
        assert plain.stats().vision_cache_frames == 0 < cached.stats().vision_cache_frames
        if round_index == 0:
            first_keyframes = a.keyframe_stamps_ns
            for frame in frames[8:]:  # second round: the whole room
                assert cached.add_frame(frame) and plain.add_frame(frame)
    assert a.keyframe_stamps_ns != first_keyframes  # the keyframe set (and scene frame) was recomputed
    assert cached.stats().pool_size == plain.stats().pool_size == N_FRAMES


# ---------------------------------------------------------------------------------- errors
def test_query_before_any_frame_is_an_error_answer_until_the_bag_arrives(recording: Recording) -> None:
    engine = SceneEngine.load(EngineConfig(max_frames=4, max_new_tokens=2))
    early = engine.query("what is on the table?")
    assert not early.ok and early.error is not None
    assert early.error.startswith("no frames yet") and "add_frame" in early.error and "0 accepted" in early.error
    with open_source(recording.bags["identity"]) as source:
        for frame in source:
            engine.add_frame(frame)
    later = engine.query("what is on the table?")
    assert later.ok and later.task == "qa" and len(later.keyframe_stamps_ns) == 4, later.error
    assert engine.stats().queries == 2 and engine.stats().queries_failed == 1


def _scene_state(engine: SceneEngine) -> tuple[Any, ...]:
    s = engine.stats()
    return (s.frames_added, s.pool_size, s.voxels_total, s.frames_evicted, dict(s.frames_dropped),
            [t for t, _ in engine.keyframe_poses()])


def test_failed_queries_never_lose_the_buffered_scene(recording: Recording, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = recording
    engine = _engine(rec.frames["identity"], proposal_source="external")
    engine.set_external_boxes(rec.centers, rec.sizes, rec.labels)
    first = engine.query("where is the lamp?", task="ground")
    assert first.ok, first.error
    before = _scene_state(engine)
    qa_before = engine.query("what is on the floor?", task="qa")
    assert qa_before.ok

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated model failure")

    failures: list[Answer] = []
    unknown = engine.query("segment the room", task="segment")
    assert unknown.error is not None and unknown.error.startswith("unknown task 'segment'")
    assert unknown.error.endswith("valid tasks: " + ", ".join(ENGINE_TASKS))
    failures.append(unknown)
    no_target = engine.query("describe that", task="caption")
    assert no_target.error is not None and "task 'caption' needs target_xyz" in no_target.error
    failures.append(no_target)
    for method, question, task in (("generate", "what is on the floor?", "qa"),
                                   ("ground", "where is the lamp?", "ground")):
        with monkeypatch.context() as mp:
            mp.setattr(engine.model, method, boom)
            failed = engine.query(question, task=task)
        assert failed.error == "internal error: RuntimeError: simulated model failure", failed.error
        assert failed.keyframe_stamps_ns == first.keyframe_stamps_ns  # it failed after the selection
        failures.append(failed)
    # a failure in the middle of generation, after the decoder ran on the cached prefix
    decoder = engine.model.language_model.get_decoder()
    real_forward, calls = decoder.forward, [0]

    def forward_then_fail(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("decoder failed at step 2")
        return real_forward(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(decoder, "forward", forward_then_fail)
        mid = engine.query("what is on the floor?", task="qa")
    assert calls[0] == 2 and mid.error == "internal error: RuntimeError: decoder failed at step 2"
    failures.append(mid)

    assert all(not a.ok for a in failures)
    assert _scene_state(engine) == before
    s = engine.stats()
    assert s.queries == 2 + len(failures) and s.queries_failed == len(failures)
    # the scene, its keyframes and the caches are intact: the same answers, from the cache
    again = engine.query("where is the lamp?", task="ground")
    qa_again = engine.query("what is on the floor?", task="qa")
    assert again.ok and qa_again.ok and again.cache_hit and qa_again.cache_hit
    assert again.keyframe_stamps_ns == first.keyframe_stamps_ns
    assert (again.objects, again.candidates, again.no_object_score) == (first.objects, first.candidates,
                                                                        first.no_object_score)
    assert qa_again.text == qa_before.text


def test_vision_failure_on_the_first_query_keeps_the_frames(recording: Recording,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(recording.frames["identity"][::2], max_frames=4)
    before = _scene_state(engine)

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with monkeypatch.context() as mp:
        mp.setattr(engine.model, "encode_frames", out_of_memory)
        failed = engine.query("what is this?", task="qa")
    assert failed.error is not None and failed.error.startswith("internal error: OutOfMemoryError: CUDA out of memory")
    assert _scene_state(engine) == before and engine.stats().vision_cache_frames == 0
    answer = engine.query("what is this?", task="qa")
    assert answer.ok and not answer.cache_hit and answer.keyframe_stamps_ns == failed.keyframe_stamps_ns


# ---------------------------------------------------------------------------------- CLI exit codes
def _bag_with_corrupt_depth_message(src: Path, out: Path, after_images: int) -> Path:
    """Copy of `src` with a non-CDR message on the depth topic after the first `after_images` images."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    writer = Writer(out, version=8, storage_plugin=StoragePlugin.MCAP)  # type: ignore[arg-type]
    with AnyReader([src]) as reader, writer:
        conns = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=typestore) for c in reader.connections}
        seen = 0
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.topic], t, raw)
            if conn.topic == TOPICS.depth_topic:
                seen += 1
                if seen == after_images:
                    writer.write(conns[conn.topic], t + 1, b"\x00\x01\x00\x00garbage")
    return out


def _replay_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after a cleared progress bar
    assert err.startswith("video3dllm replay: error: ") and err.count("\n") == 1, err
    return err


def test_replay_rejects_unusable_bags_with_exit_2(recording: Recording, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Empty bag with every camera topic, garbage .mcap, truncated MCAP, corrupt message mid-stream."""
    queries = tmp_path / "q.yaml"
    queries.write_text("- question: What is here?\n")
    typestore = get_typestore(Stores.ROS2_JAZZY)
    empty = tmp_path / "empty"
    with Writer(empty, version=8, storage_plugin=StoragePlugin.MCAP) as writer:  # type: ignore[arg-type]
        for topic, msgtype in ((TOPICS.tf_static_topic, "tf2_msgs/msg/TFMessage"),
                               (TOPICS.tf_topic, "tf2_msgs/msg/TFMessage"),
                               (TOPICS.rgb_topic, "sensor_msgs/msg/Image"),
                               (TOPICS.depth_topic, "sensor_msgs/msg/Image"),
                               (TOPICS.info_topic, "sensor_msgs/msg/CameraInfo")):
            writer.add_connection(topic, msgtype, typestore=typestore)
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 4)
    truncated = tmp_path / "truncated"
    shutil.copytree(recording.bags["identity"], truncated)
    (storage_file,) = truncated.glob("*.mcap")
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: len(data) // 2])
    corrupt = _bag_with_corrupt_depth_message(recording.bags["identity"], tmp_path / "corrupt", after_images=8)

    cases = [
        (empty, ["empty", "no messages"]),
        (garbage, ["cannot read", "garbage.mcap", "(1032 bytes)", "not a rosbag2"]),
        (truncated, ["cannot read", f"{storage_file.name} ({len(data) // 2} bytes)", "truncated"]),
        (corrupt, ["corrupt", "corrupt.mcap", TOPICS.depth_topic]),
    ]
    for bag, fragments in cases:
        out = tmp_path / f"out_{bag.stem}"
        err = _replay_error(capsys, ["replay", str(bag), "--queries", str(queries), "--out", str(out)])
        for fragment in fragments:
            assert fragment in err, (bag, err)
        assert not (out / "answers.jsonl").exists()  # no half-written results
    # the intact bag replays fine with the same query file
    assert main(["replay", str(recording.bags["identity"]), "--queries", str(queries), "--out", str(tmp_path / "ok"),
                 "--max-frames", "4"]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "ok" / "answers.jsonl").read_text().splitlines()]
    assert row["ok"] and row["frames_seen"] == N_FRAMES


def test_posed_images_directory_without_frames_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other source type: a directory that looks like posed images but holds no usable frame."""
    queries = tmp_path / "q.yaml"
    queries.write_text("- question: What is here?\n")
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "depth_intrinsic.txt").write_text("100 0 80 0\n0 100 60 0\n0 0 1 0\n0 0 0 1\n")
    err = _replay_error(capsys, ["replay", str(scene), "--queries", str(queries), "--out", str(tmp_path / "out")])
    assert "no frames in" in err and "NNNNN.jpg" in err
