"""SceneEngine: frames in, answers and world-frame boxes out, on synthetic scenes and the parity fixture.

The default model has random weights, so these tests check plumbing and numbers, never answer
quality: error answers, thread model, world/scene frame bookkeeping against independent
computations, cache == no cache, hysteresis, and parity of the engine with direct model calls.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from video3dllm_core.answer import ENGINE_TASKS, Answer
from video3dllm_core.default_model import load_default_model
from video3dllm_core.engine import EngineConfig, SceneEngine, decide_task
from video3dllm_core.engine.vision_cache import VisionCache, scene_coords
from video3dllm_core.frame import PosedFrame
from video3dllm_core.ingest import FrameIngestor
from video3dllm_core.model import Video3DLLM, select_multi3drefer
from video3dllm_core.model.prompts import build_input_ids, human_turn
from video3dllm_core.proposals import fuse_points, propose_boxes
from video3dllm_core.scene import SceneFrame
from video3dllm_core.synthetic import make_scene, render_frames

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", REPO / "test" / "fixtures" / "reference_parity"))

# The synthetic room is placed far from the world origin and turned by 90 degrees about z (a
# quarter turn keeps axis-aligned boxes axis-aligned, so true world boxes are exact).
OFFSET = np.array([20.0, -12.0, 1.5])
T_OFFSET = np.eye(4)
T_OFFSET[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
T_OFFSET[:3, 3] = OFFSET


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def room() -> tuple[Any, list[PosedFrame]]:
    scene = make_scene(2)
    return scene, render_frames(scene, 16, 320, 240)


@pytest.fixture(scope="module")
def far_room(room: tuple[Any, list[PosedFrame]]) -> tuple[Any, list[PosedFrame]]:
    scene, frames = room
    moved = [PosedFrame(f.stamp_ns, f.rgb, f.depth_m, f.K_depth, T_OFFSET @ f.T_world_cam, f.name) for f in frames]
    return scene, moved


@pytest.fixture(scope="module")
def default_model() -> Video3DLLM:
    return load_default_model(device="cpu")


@pytest.fixture(scope="module")
def fixture_model() -> Video3DLLM:
    return Video3DLLM.from_pretrained(FIXTURE / "checkpoint", device="cpu")


def _engine(model: Video3DLLM, frames: list[PosedFrame], **config: Any) -> SceneEngine:
    """An engine fed with ``frames``; tests keep prompts short (<= 8 keyframes, 8 new tokens)."""
    config = {"max_frames": 8, "max_new_tokens": 8, **config}
    engine = SceneEngine(model, EngineConfig(**config))
    for frame in frames:
        assert engine.add_frame(frame)
    return engine


def _world_true_boxes(scene: Any) -> np.ndarray:
    """[K, 6] true object boxes moved by T_OFFSET (exact for a quarter turn)."""
    R, t = T_OFFSET[:3, :3], T_OFFSET[:3, 3]
    rows = [np.r_[R @ np.asarray(o.center) + t, np.abs(R) @ np.asarray(o.size)] for o in scene.objects]
    return np.asarray(rows)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo_a, hi_a = (a[:, :3] - a[:, 3:] / 2)[:, None], (a[:, :3] + a[:, 3:] / 2)[:, None]
    lo_b, hi_b = (b[:, :3] - b[:, 3:] / 2)[None], (b[:, :3] + b[:, 3:] / 2)[None]
    inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None), axis=-1)
    return inter / (np.prod(a[:, 3:], 1)[:, None] + np.prod(b[:, 3:], 1)[None] - inter)


def _boxes(answer_objects: Any) -> np.ndarray:
    return np.array([list(o.center_xyz) + list(o.size_xyz) for o in answer_objects], dtype=np.float64)


# ---------------------------------------------------------------------------------- errors
def test_query_before_frames_is_an_error_answer(default_model: Video3DLLM) -> None:
    engine = SceneEngine(default_model)
    answer = engine.query("what is on the table?")
    assert not answer.ok and answer.error is not None
    assert answer.error.startswith("no frames yet") and "add_frame" in answer.error
    assert answer.timings.total_s > 0 and engine.stats().queries == 1 and engine.stats().queries_failed == 1


def test_bad_queries_are_error_answers_naming_the_problem(default_model: Video3DLLM,
                                                          room: tuple[Any, list[PosedFrame]]) -> None:
    engine = _engine(default_model, room[1][::4])
    unknown = engine.query("what is this?", task="segment")
    assert unknown.error is not None and "unknown task 'segment'" in unknown.error
    for name in ENGINE_TASKS:
        assert name in unknown.error
    caption = engine.query("describe the object at the door", task="caption")
    assert caption.task == "caption" and caption.error is not None and "target_xyz" in caption.error
    situated = engine.query("which way is the door?", task="situated_qa")
    assert situated.error is not None and "situation" in situated.error
    empty = engine.query("   ", task="qa")
    assert empty.error is not None and "question is empty" in empty.error
    bad_target = engine.query("", task="caption", target_xyz=[1.0, float("nan"), 0.0])
    assert bad_target.error is not None and "target_xyz" in bad_target.error
    bad_budget = engine.query("what is this?", max_frames=0)
    assert bad_budget.error is not None and "max_frames" in bad_budget.error
    external = SceneEngine(default_model, EngineConfig(proposal_source="external"))
    external.add_frame(room[1][0])
    no_boxes = external.query("find the chair", task="ground")
    assert no_boxes.error is not None and no_boxes.error.startswith("no candidate boxes")
    assert "set_external_boxes" in no_boxes.error and no_boxes.keyframe_stamps_ns  # keyframes known by then
    # a caption without candidates describes the point itself; the default model's listener has nothing to
    # hear, so that caption is greedy (and says so)
    blind = external.query("", task="caption", target_xyz=room[1][0].T_world_cam[:3, 3] + np.array([0.0, 1.0, -1.0]))
    assert blind.ok and blind.text and not blind.objects
    assert any("captioning at the target point itself" in w for w in blind.warnings)
    assert any("the caption is decoded greedily" in w for w in blind.warnings) and blind.decoding == "greedy"
    assert engine.stats().queries_failed == 6


def test_invalid_frames_are_dropped_and_counted_by_reason(default_model: Video3DLLM,
                                                          room: tuple[Any, list[PosedFrame]]) -> None:
    engine = SceneEngine(default_model)
    good = room[1][0]
    broken = PosedFrame(good.stamp_ns, good.rgb, good.depth_m, good.K_depth, good.T_world_cam.copy())
    broken.T_world_cam[0, 3] = np.nan  # arrays are mutable after validation: add_frame re-validates
    assert engine.add_frame(broken) is False
    assert engine.add_frame("not a frame") is False  # type: ignore[arg-type]
    stats = engine.stats()
    assert stats.frames_dropped == {"T_world_cam": 1, "not_a_frame": 1}
    assert stats.frames_added == 0 and stats.pool_size == 0
    assert stats.last_drop_message is not None and "PosedFrame" in stats.last_drop_message
    answer = engine.query("what is this?")
    assert answer.error is not None and "0 accepted, 2 dropped" in answer.error
    assert engine.add_frame(good) and engine.stats().frames_added == 1


def test_a_frame_with_an_already_pooled_stamp_is_dropped(default_model: Video3DLLM,
                                                          room: tuple[Any, list[PosedFrame]]) -> None:
    engine = SceneEngine(default_model)
    first, second = room[1][0], room[1][1]
    assert engine.add_frame(first) and engine.add_frame(second)
    assert engine.add_frame(first) is False  # re-published / re-played frame
    stats = engine.stats()
    assert stats.frames_added == 2 and stats.pool_size == 2
    assert stats.frames_dropped == {"duplicate_stamp": 1}
    assert stats.last_drop_message is not None and str(first.stamp_ns) in stats.last_drop_message
    engine.reset()
    assert engine.add_frame(first)  # a reset forgets the pooled stamps


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="EngineConfig.strategy"):
        EngineConfig(strategy="best")
    with pytest.raises(ValueError, match="EngineConfig.proposal_source"):
        EngineConfig(proposal_source="mask3d")
    with pytest.raises(ValueError, match="EngineConfig.dtype"):
        EngineConfig(dtype="int8")
    with pytest.raises(ValueError, match="EngineConfig.max_frames"):
        EngineConfig(max_frames=0)
    with pytest.raises(ValueError, match=r"EngineConfig.proposal_max_frames must be an integer >= 0, got -1"):
        EngineConfig(proposal_max_frames=-1)
    with pytest.raises(ValueError, match=r"EngineConfig.scene_yaw must be one of \('walls', 'world'\), got 'map'"):
        EngineConfig(scene_yaw="map")
    with pytest.raises(ValueError, match="EngineConfig.scene_yaw_tolerance_deg"):
        EngineConfig(scene_yaw_tolerance_deg=45.0)


@pytest.mark.parametrize("question, kwargs, expected", [
    ("What is in front of the wooden cabinet?", {}, "qa"),
    ("How many chairs are there?", {}, "qa"),
    ("Where is the red chair?", {}, "ground"),
    ("find the lamp next to the sofa", {}, "ground"),
    ("Which object is closest to the door?", {}, "ground"),
    ("point to the trash can", {}, "ground"),
    ("Find all the chairs", {}, "ground_multi"),
    ("where are the cups?", {}, "ground_multi"),
    ("show me every lamp", {}, "ground_multi"),
    ("describe the object at the window", {}, "caption"),
    ("what is at 1.5, -2, 0.4", {}, "caption"),
    ("what is this?", {"target_xyz": (0.0, 0.0, 0.0)}, "caption"),
    ("Which direction should I go to reach the bed?", {"situation": "I am by the sofa."}, "situated_qa"),
])
def test_auto_task_rules(question: str, kwargs: dict[str, Any], expected: str) -> None:
    assert decide_task(question, **kwargs) == expected


# ---------------------------------------------------------------------------------- threads
def test_add_frame_runs_while_a_query_runs(default_model: Video3DLLM, room: tuple[Any, list[PosedFrame]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    frames = room[1]
    engine = _engine(default_model, frames[:8])
    started, release = threading.Event(), threading.Event()
    real_generate = default_model.generate

    def held_generate(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(30), "test did not release the query"
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(default_model, "generate", held_generate)
    answers: list[Answer] = []
    worker = threading.Thread(target=lambda: answers.append(engine.query("what is on the floor?", task="qa")))
    worker.start()
    try:
        assert started.wait(30), "query never reached the model"
        t0 = time.perf_counter()
        for frame in frames[8:]:  # the query is inside the model now: these must not wait for it
            assert engine.add_frame(frame)
        stats = engine.stats()
        poses = engine.keyframe_poses()
        elapsed = time.perf_counter() - t0
    finally:
        release.set()
        worker.join(60)
    assert not worker.is_alive() and answers and answers[0].ok, answers
    assert stats.frames_added == len(frames) and stats.ingest_rate_hz > 0
    assert poses and elapsed < 10
    assert engine.stats().queries == 1


# ---------------------------------------------------------------------------------- world frame
def test_grounding_boxes_come_back_in_the_world_frame(default_model: Video3DLLM,
                                                      far_room: tuple[Any, list[PosedFrame]]) -> None:
    scene, frames = far_room
    engine = _engine(default_model, frames, proposal_max_frames=0)  # candidates from the keyframes alone
    answer = engine.query("where is the chair?", task="ground")
    assert answer.ok, answer.error
    assert not [w for w in answer.warnings if "range" in w]  # the model saw scene-frame coordinates
    # scene frame: the room's centre and its floor (z = 1.5 m in the world) become the origin
    frame = engine.scene_frame
    assert frame is not None and frame.is_pure_translation
    np.testing.assert_allclose(frame.T_scene_world[:2, 3], -OFFSET[:2], atol=0.3)
    assert abs(frame.T_scene_world[2, 3] + OFFSET[2]) < 0.02

    # independent pipeline on the answer's keyframes gives the same world boxes (Open3D's
    # RANSAC can differ in the last digits between runs under thread contention: hence 1e-3 m)
    by_stamp = {f.stamp_ns: f for f in frames}
    ingestor = FrameIngestor()
    keyframes = [ingestor.ingest(by_stamp[s]) for s in answer.keyframe_stamps_ns]
    fused = fuse_points(keyframes, stride=4)
    own = SceneFrame.estimate(fused.points)
    np.testing.assert_allclose(own.T_scene_world, frame.T_scene_world, rtol=0, atol=1e-3)
    props = propose_boxes(frame.to_scene(fused.points), fused.colors)
    centers, sizes = frame.boxes_to_world(props.centers, props.sizes)
    np.testing.assert_allclose(_boxes(answer.candidates), np.c_[centers, sizes], rtol=0, atol=1e-3)
    assert len(answer.objects) == 1
    chosen = answer.objects[0]
    assert answer.candidates[chosen.proposal_index] == chosen
    # and those boxes sit on the true objects in the world frame (an offset mistake gives IoU 0)
    best = _iou(_boxes(answer.candidates), _world_true_boxes(scene)).max(axis=1)
    assert np.mean(best >= 0.25) >= 0.8, best


def test_candidates_come_from_more_frames_than_the_keyframes(default_model: Video3DLLM,
                                                              far_room: tuple[Any, list[PosedFrame]]) -> None:
    """Proposals fuse a larger max-coverage selection than the model's keyframes (all 8 fed frames here:
    strategy 'mc' fills its budget), in the keyframes' scene frame; a later frame that leaves the keyframes
    alone (hysteresis 1) still renews the candidates."""
    scene, frames = far_room
    fed, later = frames[0:16:2], frames[1:16:2]
    engine = _engine(default_model, fed, strategy="mc", max_frames=2, proposal_max_frames=64, selection_hysteresis=1.0)
    answer = engine.query("where is the chair?", task="ground")
    assert answer.ok, answer.error

    def independent(pool: list[PosedFrame], keyframe_stamps: tuple[int, ...]) -> np.ndarray:
        ingestor = FrameIngestor()
        frame = SceneFrame.estimate(fuse_points([ingestor.ingest(f) for f in pool if f.stamp_ns in keyframe_stamps],
                                                stride=4).points)
        fused = fuse_points([ingestor.ingest(f) for f in pool], stride=4)  # time order = frame-id order
        props = propose_boxes(frame.to_scene(fused.points), fused.colors)
        return np.c_[frame.boxes_to_world(props.centers, props.sizes)]

    assert len(answer.keyframe_stamps_ns) == 2
    assert answer.proposal_stamps_ns == tuple(f.stamp_ns for f in fed)
    np.testing.assert_allclose(_boxes(answer.candidates), independent(fed, answer.keyframe_stamps_ns), rtol=0, atol=1e-3)
    keyframes_only = _engine(default_model, fed, strategy="mc", max_frames=2, proposal_max_frames=0)
    few = keyframes_only.query("where is the chair?", task="ground")
    assert few.keyframe_stamps_ns == answer.keyframe_stamps_ns
    assert few.proposal_stamps_ns == tuple(sorted(few.keyframe_stamps_ns))
    caption = keyframes_only.query("what is this?", task="caption", target_xyz=few.candidates[0].center_xyz)
    assert caption.ok and caption.proposal_stamps_ns == few.proposal_stamps_ns
    assert keyframes_only.query("what is next to the sofa?", task="qa").proposal_stamps_ns == ()  # no candidates
    truth = _world_true_boxes(scene)
    found = (_iou(truth, _boxes(answer.candidates)).max(axis=1) >= 0.25).sum()
    assert found > (_iou(truth, _boxes(few.candidates)).max(axis=1) >= 0.25).sum()  # two frames miss objects

    for frame in later:
        assert engine.add_frame(frame)
    again = engine.query("where is the chair?", task="ground")
    assert again.ok and again.keyframe_stamps_ns == answer.keyframe_stamps_ns
    assert again.proposal_stamps_ns == tuple(f.stamp_ns for f in frames[:16])
    everything = sorted(fed + later, key=lambda f: f.stamp_ns)
    np.testing.assert_allclose(_boxes(again.candidates), independent(everything, answer.keyframe_stamps_ns),
                               rtol=0, atol=1e-3)


def test_a_room_turned_in_the_map_gets_a_scene_frame_along_its_walls(default_model: Video3DLLM,
                                                                     room: tuple[Any, list[PosedFrame]]) -> None:
    """scene_yaw 'walls' (the default) turns the scene frame onto the walls of a room turned by 30 degrees in the
    map; the candidates come back as world boxes around the turned objects, closer to them than with the map's
    axes ('world'); a later keyframe set with the same walls keeps the same scene frame."""
    scene, frames = room
    yaw = np.radians(30.0)
    T_map_room = np.eye(4)
    T_map_room[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T_map_room[:3, 3] = OFFSET
    turned = [PosedFrame(f.stamp_ns, f.rgb, f.depth_m, f.K_depth, T_map_room @ f.T_world_cam, f.name) for f in frames]
    truth = []
    for o in scene.objects:
        corners = (np.asarray(o.center) + np.asarray(o.size) * np.array(
            [[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])) @ T_map_room[:3, :3].T + T_map_room[:3, 3]
        truth.append(np.r_[(corners.min(axis=0) + corners.max(axis=0)) / 2, np.ptp(corners, axis=0)])
    truth_boxes = np.asarray(truth)
    fit = {}
    for mode in ("walls", "world"):
        engine = _engine(default_model, turned[0::2], scene_yaw=mode, strategy="mc", max_frames=4)
        answer = engine.query("where is the chair?", task="ground")
        assert answer.ok, answer.error
        frame = engine.scene_frame
        assert frame is not None
        R = frame.T_scene_world[:3, :3]
        turn = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
        assert turn == pytest.approx(-30.0 if mode == "walls" else 0.0, abs=0.5)
        fit[mode] = float(np.mean(_iou(_boxes(answer.candidates), truth_boxes).max(axis=1)))
        for cand in answer.candidates:  # the tight box along the scene axes, and size_xyz its hull in the map
            if mode == "world":
                assert cand.box_size_xyz is None and cand.yaw_rad == 0.0
                continue
            assert cand.box_size_xyz is not None and np.degrees(cand.yaw_rad) == pytest.approx(30.0, abs=0.5)
            (a, b, h), c, s_ = cand.box_size_xyz, np.cos(cand.yaw_rad), np.sin(cand.yaw_rad)
            np.testing.assert_allclose(cand.size_xyz, [abs(c) * a + abs(s_) * b, abs(s_) * a + abs(c) * b, h], atol=1e-9)
            assert a * b < cand.size_xyz[0] * cand.size_xyz[1]
        if mode == "walls":
            engine.add_frame(turned[1])
            engine.add_frame(turned[3])
            again = engine.query("where is the chair?", task="ground", max_frames=6)
            assert again.ok and again.keyframe_stamps_ns != answer.keyframe_stamps_ns  # a new keyframe set ...
            assert engine.scene_frame is not None
            np.testing.assert_array_equal(engine.scene_frame.T_scene_world[:3, :3], R)  # ... the same walls' yaw
    assert fit["walls"] > fit["world"] + 0.05, fit  # measured 0.69 against 0.60


def test_identity_scene_frame_far_from_origin_warns_about_range(default_model: Video3DLLM,
                                                                far_room: tuple[Any, list[PosedFrame]]) -> None:
    engine = _engine(default_model, far_room[1][::3], scene_frame="identity")
    answer = engine.query("what is this?", task="qa")
    assert answer.ok
    assert any("x=" in w and "beyond the model's +15 m range" in w for w in answer.warnings), answer.warnings


def test_model_inputs_are_the_scene_frame_coordinates(default_model: Video3DLLM,
                                                      far_room: tuple[Any, list[PosedFrame]]) -> None:
    """Engine scores == the model fed frames whose poses were moved into the scene frame beforehand."""
    frames = far_room[1]
    engine = _engine(default_model, frames)
    question = "the tall cabinet next to the wall"
    answer = engine.query(question, task="ground")
    assert answer.ok, answer.error
    frame = engine.scene_frame
    assert frame is not None
    by_stamp = {f.stamp_ns: f for f in frames}
    moved = [by_stamp[s] for s in answer.keyframe_stamps_ns]
    moved = [PosedFrame(f.stamp_ns, f.rgb, f.depth_m, f.K_depth, frame.T_scene_world @ f.T_world_cam) for f in moved]
    ingested = [FrameIngestor(default_model.ingest_config()).ingest(f) for f in moved]
    model = default_model
    with torch.no_grad():
        visual = model.encode_frames(np.stack([f.crop_rgb for f in ingested]), np.stack([f.world_coords for f in ingested]),
                                     patch_world_coords=np.stack([f.patch_world_coords for f in ingested]), batch_size=8)
        boxes = _boxes(answer.candidates)
        boxes[:, :3] = frame.to_scene(boxes[:, :3])
        objects = model.object_features(visual, boxes)
        ids = build_input_ids(model.tokenizer, "scanrefer", human_turn("scanrefer", description=question),
                              newline_after_image=model.config.prompt_newline_after_image).input_ids
        prefix = model.prefill_prefix(visual, ids)
        scores = model.ground(model.build_inputs_embeds(ids, visual), objects, prefix=prefix).scores
    engine_scores = [o.score for o in answer.candidates] + [answer.no_object_score]
    assert engine_scores == scores.tolist()


# ---------------------------------------------------------------------------------- caching
def test_cached_results_equal_uncached_results(default_model: Video3DLLM, room: tuple[Any, list[PosedFrame]]) -> None:
    """Two engines, one caching, one not. Identity scene frame and the true boxes as external
    candidates: Open3D's RANSAC (scene frame, proposals) is not bitwise repeatable under thread
    contention, and two engines estimate independently; within one engine they are cached."""
    scene, frames = room
    truth = np.array([list(o.center) + list(o.size) for o in scene.objects])
    engines = []
    for enable_cache in (True, False):
        engine = _engine(default_model, frames[::2], max_frames=3, scene_frame="identity", proposal_source="external",
                         enable_cache=enable_cache)
        engine.set_external_boxes(truth[:, :3], truth[:, 3:])
        engines.append(engine)
    cached, plain = engines
    target = scene.objects[0].center
    queries = [("what is next to the sofa?", {"task": "qa"}), ("where is the lamp?", {"task": "ground"}),
               ("", {"task": "caption", "target_xyz": target}), ("find all chairs", {"task": "ground_multi"})]
    reference = []
    for question, kwargs in queries:  # the cached engine reuses the prefix from the 2nd query on
        a, b = cached.query(question, **kwargs), plain.query(question, **kwargs)
        assert a.ok and b.ok, (a.error, b.error)
        assert a.text == b.text and a.objects == b.objects and a.candidates == b.candidates
        assert a.no_object_score == b.no_object_score and a.keyframe_stamps_ns == b.keyframe_stamps_ns
        assert b.cache_hit is False and a.cache_hit is (question != queries[0][0])
        reference.append(b)
    for (question, kwargs), b in zip(queries, reference):  # second round: everything from the caches
        a = cached.query(question, **kwargs)
        assert a.cache_hit and a.text == b.text and a.objects == b.objects and a.candidates == b.candidates
    hit = cached.query("where is the lamp?", task="ground")
    assert hit.cache_hit and hit.timings.prefill_s < 0.01  # a dictionary lookup, no decoder run
    assert cached.stats().vision_cache_frames == len(hit.keyframe_stamps_ns)
    assert plain.stats().vision_cache_frames == 0


def test_vision_cache_recomputes_positions_for_a_new_scene_frame(default_model: Video3DLLM,
                                                                  room: tuple[Any, list[PosedFrame]]) -> None:
    cfg = default_model.ingest_config()  # the model's patch grid (the default model pools with stride 9)
    frames = [FrameIngestor(cfg).ingest(f) for f in room[1][:3]]
    ids = [10, 11, 12]
    cache = VisionCache(8)
    first = SceneFrame.identity()
    shifted = SceneFrame(np.array([[1, 0, 0, -0.7], [0, 1, 0, 2.3], [0, 0, 1, 0.4], [0, 0, 0, 1.0]]))
    with torch.no_grad():
        _, encoded, moved = cache.visual_features(default_model, ids, frames, first, 1, cfg, 8)
        assert (encoded, moved) == (3, 0)
        visual, encoded, moved = cache.visual_features(default_model, ids, frames, shifted, 2, cfg, 8)
        assert (encoded, moved) == (0, 3)
        coords = [scene_coords(f, shifted, cfg) for f in frames]
        direct = default_model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([c[0] for c in coords]),
                                             patch_world_coords=np.stack([c[1] for c in coords]))
    for name in ("siglip", "projected", "pooled", "patch_coords", "pe_coords", "position_embedding", "image_block",
                 "world_coords"):
        assert torch.equal(getattr(visual, name), getattr(direct, name)), name
    # the identity scene frame gives the ingested world coordinates bitwise
    world, patch = scene_coords(frames[0], first, cfg)
    np.testing.assert_array_equal(world, frames[0].world_coords)
    np.testing.assert_array_equal(patch, frames[0].patch_world_coords)


def test_hysteresis_keeps_the_keyframe_set_for_a_small_coverage_gain(default_model: Video3DLLM) -> None:
    frames = render_frames(make_scene(1), 24, 320, 240)
    results = {}
    for hysteresis in (0.02, 0.0):
        engine = _engine(default_model, frames[0::2], strategy="mc", max_frames=6, selection_hysteresis=hysteresis)
        before = [s for s, _ in engine.keyframe_poses()]
        coverage_before = engine.stats().last_coverage
        for frame in frames[1::2][:3]:  # three in-between views: about 1 % more coverage
            engine.add_frame(frame)
        after = [s for s, _ in engine.keyframe_poses()]
        results[hysteresis] = (before, after, coverage_before, engine.stats().last_coverage)
    before, after, _, kept_coverage = results[0.02]
    assert after == before
    _, changed, _, new_coverage = results[0.0]
    assert changed != before and 0 < new_coverage - kept_coverage <= 0.02

    # a large gain replaces the set; an evicted keyframe forces a new selection
    engine = _engine(default_model, frames[:5], strategy="mc", max_frames=6)
    small = [s for s, _ in engine.keyframe_poses()]
    for frame in frames[5:]:
        engine.add_frame(frame)
    large = [s for s, _ in engine.keyframe_poses()]
    assert large != small and engine.stats().last_coverage > 0.5
    engine._index.remove([f.stamp_ns for f in frames].index(large[0]))  # frame ids count from 0 in add order
    assert large[0] not in [s for s, _ in engine.keyframe_poses()]


def test_cache_hit_survives_small_scene_growth(default_model: Video3DLLM, room: tuple[Any, list[PosedFrame]]) -> None:
    frames = room[1]
    # Candidates from the keyframes alone: a larger proposal selection would take in the new frame and renew them
    # (test_candidates_come_from_more_frames_than_the_keyframes).
    engine = _engine(default_model, frames[0::2], strategy="mc", max_frames=6, proposal_max_frames=0)
    first = engine.query("where is the lamp?", task="ground")
    engine.add_frame(frames[1])
    second = engine.query("where is the lamp?", task="ground")
    assert first.ok and second.ok and second.cache_hit and second.keyframe_stamps_ns == first.keyframe_stamps_ns
    assert second.objects == first.objects and second.candidates == first.candidates  # proposals reused
    assert second.timings.proposals_s < 0.05


def test_scene_frame_is_kept_within_its_tolerance(default_model: Video3DLLM, room: tuple[Any, list[PosedFrame]]) -> None:
    frames = room[1]
    for tolerance, kept in ((0.25, True), (0.0, False)):
        engine = _engine(default_model, frames[0::2], strategy="mc", max_frames=4, selection_hysteresis=0.0,
                         scene_frame_tolerance_m=tolerance)
        first = engine.query("what is on the floor?", task="qa")
        scene = engine.scene_frame
        for frame in frames[1::2]:
            engine.add_frame(frame)
        second = engine.query("what is on the floor?", task="qa")
        assert first.ok and second.ok and second.keyframe_stamps_ns != first.keyframe_stamps_ns
        assert not second.cache_hit
        assert (engine.scene_frame is scene) is kept


# ---------------------------------------------------------------------------------- outputs
def test_external_boxes_labels_and_caption_box(default_model: Video3DLLM, far_room: tuple[Any, list[PosedFrame]]) -> None:
    scene, frames = far_room
    truth = _world_true_boxes(scene)[:4]
    labels = [o.label for o in scene.objects[:4]]
    engine = _engine(default_model, frames[::2], proposal_source="external")
    engine.set_external_boxes(truth[:, :3], truth[:, 3:], labels)
    grounded = engine.query("find the chair", task="ground")
    assert grounded.ok and [c.label for c in grounded.candidates] == labels
    np.testing.assert_array_equal(_boxes(grounded.candidates), truth)  # exactly the boxes given
    assert grounded.proposal_stamps_ns == ()  # no frames fused for external boxes
    caption = engine.query("", task="caption", target_xyz=truth[2, :3] + 0.01)
    assert caption.ok and len(caption.objects) == 1
    assert caption.decoding == "listener" and grounded.decoding == ""  # the embedded model asks for the listener
    assert engine.query("what is this?", task="qa").decoding == "greedy"
    assert caption.objects[0].proposal_index == 2 and caption.objects[0].label == labels[2]
    assert caption.objects[0].score == 1.0
    x, y, z = truth[2, :3] + 0.01
    spoken = engine.query(f"describe the object at ({x:.3f}, {y:.3f}, {z:.3f})")  # auto: caption, point parsed
    assert spoken.task == "caption" and spoken.objects[0].proposal_index == 2
    away = engine.query("", task="caption", target_xyz=truth[2, :3] + np.array([0.0, 0.0, 9.0]))
    assert away.ok and any("nearest" in w for w in away.warnings)
    with pytest.raises(ValueError, match="box 1"):
        engine.set_external_boxes(truth[:2, :3], np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="labels"):
        engine.set_external_boxes(truth[:, :3], truth[:, 3:], ["only one"])


def test_readouts_and_reset(default_model: Video3DLLM, far_room: tuple[Any, list[PosedFrame]]) -> None:
    frames = far_room[1]
    engine = _engine(default_model, frames[::2])
    points = engine.coverage_points()
    stats = engine.stats()
    assert points.dtype == np.float32 and points.shape == (stats.voxels_total, 3)
    room_lo, room_hi = OFFSET - [4.5, 4.5, 0.2], OFFSET + [4.5, 4.5, 3.2]
    assert np.all((points >= room_lo) & (points <= room_hi))  # the world-frame room, not the origin
    answer = engine.query("what is this?", task="qa")
    poses = engine.keyframe_poses()
    assert [s for s, _ in poses] == list(answer.keyframe_stamps_ns)
    for (_, T), T_answer in zip(poses, answer.keyframe_poses):
        np.testing.assert_array_equal(T, T_answer)
    assert stats.pool_size == len(frames[::2]) and stats.pool_bytes > 0
    engine.reset()
    after = engine.stats()
    assert (after.frames_added, after.pool_size, after.voxels_total, after.queries) == (0, 0, 0, 0)
    assert engine.keyframe_poses() == [] and engine.coverage_points().shape == (0, 3)
    assert "no frames yet" in (engine.query("what is this?").error or "")
    for frame in frames[::4]:
        engine.add_frame(frame)
    again = engine.query("what is this?", task="qa")
    assert again.ok and not again.cache_hit


def test_answer_to_dict_is_json_ready(default_model: Video3DLLM, room: tuple[Any, list[PosedFrame]]) -> None:
    engine = _engine(default_model, room[1][::2])
    answer = engine.query("where is the lamp?")
    assert answer.task == "ground" and answer.ok
    data = json.loads(json.dumps(answer.to_dict()))
    assert data["ok"] and data["task"] == "ground" and len(data["candidates"]) == len(answer.candidates)
    assert data["objects"][0]["center_xyz"] == list(answer.objects[0].center_xyz)


# ---------------------------------------------------------------------------------- parity
def _fixture_inputs() -> tuple[list[PosedFrame], np.ndarray, dict[str, Any], dict[str, Any]]:
    with np.load(FIXTURE / "inputs.npz") as data:
        rgb, depth, K, poses, boxes = (data[k] for k in ("rgb", "depth", "depth_intrinsic", "poses_aligned", "boxes"))
    frames = [
        PosedFrame(stamp_ns=(i + 1) * 10**9, rgb=rgb[i], depth_m=depth[i].astype(np.float32) / np.float32(1000),
                   K_depth=K[:3, :3], T_world_cam=poses[i])
        for i in range(rgb.shape[0])
    ]
    cases = json.loads((FIXTURE / "cases.json").read_text())["cases"]
    tasks = json.loads((FIXTURE / "tasks.json").read_text())
    return frames, boxes, cases, tasks


def test_engine_matches_the_model_and_the_upstream_fixture(fixture_model: Video3DLLM) -> None:
    """Identity scene frame, all fixture frames, the fixture's boxes: the engine adds no numeric change."""
    frames, boxes, cases, tasks = _fixture_inputs()
    model = fixture_model
    engine = _engine(model, frames, scene_frame="identity", strategy="uniform", max_frames=len(frames),
                     proposal_source="external", max_new_tokens=8)
    engine.set_external_boxes(boxes[:, :3], boxes[:, 3:])
    description = tasks["scanrefer"]["description"]
    ground = engine.query(description, task="ground")
    assert ground.ok, ground.error
    assert len(ground.keyframe_stamps_ns) == len(frames)

    with np.load(FIXTURE / "expected.npz") as data:
        crops, coords = data["crops_uint8"], data["world_coords"]
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        ids = build_input_ids(model.tokenizer, "scanrefer", human_turn("scanrefer", description=description)).input_ids
        assert ids == cases["scanrefer"]["input_ids"]
        prefix = model.prefill_prefix(visual, ids)
        objects = model.object_features(visual, boxes)
        scores = model.ground(model.build_inputs_embeds(ids, visual), objects, prefix=prefix).scores
    assert ground.no_object_score is not None
    engine_scores = [o.score for o in ground.candidates] + [ground.no_object_score]
    assert engine_scores == scores.tolist()  # bitwise: same inputs, same code path
    np.testing.assert_allclose(engine_scores, cases["scanrefer"]["scores"], rtol=0, atol=2e-5)
    assert ground.objects[0].proposal_index == cases["scanrefer"]["pred_object_index"]

    multi = engine.query(tasks["multi3drefer"]["description"], task="ground_multi")
    assert [o.proposal_index for o in multi.objects] == cases["multi3drefer"]["pred_object_indices"]
    assert [o.proposal_index for o in multi.objects] == select_multi3drefer(
        torch.tensor([o.score for o in multi.candidates] + [multi.no_object_score]))

    tok = model.tokenizer
    qa = engine.query(tasks["scanqa"]["question"], task="qa")
    assert qa.text == tok.decode(cases["scanqa"]["generated_ids"], skip_special_tokens=True).strip()
    sqa = engine.query(tasks["sqa3d"]["question"], task="situated_qa", situation=tasks["sqa3d"]["situation"])
    assert sqa.text == tok.decode(cases["sqa3d"]["generated_ids"], skip_special_tokens=True).strip()
    box = boxes[tasks["scan2cap"]["box_index"]]
    cap = engine.query("", task="caption", target_xyz=box[:3])
    assert cap.objects[0].proposal_index == tasks["scan2cap"]["box_index"]
    assert cap.text == tok.decode(cases["scan2cap"]["generated_ids"], skip_special_tokens=True).strip()
    assert qa.cache_hit and sqa.cache_hit and cap.cache_hit


def test_the_keyframe_budget_defaults_to_what_the_model_was_trained_with(fixture_model: Video3DLLM,
                                                                         room: tuple[Any, list[PosedFrame]],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    frames = room[1]
    assert "frames_upbound" not in fixture_model.config.raw
    assert SceneEngine(fixture_model).frame_budget == 32  # upstream's budget when the checkpoint says nothing
    monkeypatch.setitem(fixture_model.config.raw, "frames_upbound", 3)  # written by `video3dllm train`
    engine = SceneEngine(fixture_model, EngineConfig(max_new_tokens=2))
    assert engine.frame_budget == 3
    for frame in frames:
        assert engine.add_frame(frame)
    assert len(engine.keyframe_poses()) == 3
    answer = engine.query("How many chairs are there?", task="qa")
    assert answer.ok and len(answer.keyframe_stamps_ns) == 3
    assert len(engine.query("How many chairs?", task="qa", max_frames=5).keyframe_stamps_ns) == 5  # per query
    assert SceneEngine(fixture_model, EngineConfig(max_frames=6)).frame_budget == 6  # explicit config wins
    with pytest.raises(ValueError, match="max_frames must be an integer >= 1"):
        EngineConfig(max_frames=0)
