"""SceneEngine: posed RGB-D frames in, language answers and world-frame boxes out.

One object ties the stages together (docs/engine.md has the full picture):

    add_frame(frame)  validate -> FrameIngestor.ingest (no lock) -> CoverageIndex.add (short lock)
    query(question)   keyframes (hysteresis) -> scene frame -> vision features (cached per frame)
                      -> visual-prefix KV cache (per keyframe set) -> task: generate / ground /
                      caption -> outputs mapped back to the world frame -> Answer

Thread model: ``add_frame``, ``stats``, ``coverage_points``, ``keyframe_poses`` and ``reset``
take only the short state lock, so frames keep flowing at sensor rate while a query runs;
queries are serialised by a second lock and hold the state lock only while they snapshot the
keyframe selection. ``add_frame`` and ``query`` never raise: bad frames are counted by reason,
bad questions and failures come back as error Answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from video3dllm_core.answer import ENGINE_TASKS, Answer, GroundedObject, Timings
from video3dllm_core.engine.config import EngineConfig, EngineStats, parse_dtype
from video3dllm_core.engine.tasks import ENGINE_TASK_PROMPTS, decide_task, parse_target_from_question
from video3dllm_core.engine.vision_cache import VisionCache
from video3dllm_core.frame import FrameError, PosedFrame, validate_frame
from video3dllm_core.geometry import voxel_centers
from video3dllm_core.ingest import FrameIngestor, IngestConfig, IngestedFrame
from video3dllm_core.keyframes import CoverageIndex
from video3dllm_core.model import ObjectFeatures, Video3DLLM, VisualFeatures, VisualPrefix
from video3dllm_core.model.grounding import select_multi3drefer, select_scanrefer
from video3dllm_core.model.listener_decoding import resolve_caption_decoding
from video3dllm_core.model.prompts import build_input_ids, human_turn
from video3dllm_core.proposals import FusedPoints, Proposals, external_boxes, fuse_points, propose_boxes
from video3dllm_core.scene import SceneFrame, estimate_wall_yaw, range_warnings

__all__ = ["SceneEngine"]

log = logging.getLogger(__name__)

_FRAME_FIELDS = ("stamp_ns", "rgb", "depth_m", "K_depth", "T_world_cam")
_RATE_WINDOW_S = 5.0


class QueryError(Exception):
    """A query that cannot be answered; the message becomes ``Answer.error``."""


@dataclass(frozen=True)
class _Keyframes:
    """The keyframe set a query uses (a snapshot: the frames stay alive even if evicted later)."""

    frame_ids: tuple[int, ...]
    frames: tuple[IngestedFrame, ...]
    coverage: float
    max_frames: int
    generation: int
    warnings: tuple[str, ...] = ()


@dataclass
class _SetState:
    """Everything computed for one keyframe set in one scene frame (reused by later queries)."""

    generation: int
    frame_ids: tuple[int, ...]
    frames: tuple[IngestedFrame, ...]
    fused: FusedPoints
    scene: SceneFrame
    scene_serial: int
    warnings: tuple[str, ...]
    points_scene: np.ndarray
    visual: VisualFeatures | None = None
    prefixes: dict[tuple[int, ...], VisualPrefix] = field(default_factory=dict)
    proposals: Proposals | None = None  # geometric, scene frame
    proposal_frame_ids: tuple[int, ...] = ()  # the frames `proposals` were fused from
    objects: dict[tuple[Any, ...], ObjectFeatures] = field(default_factory=dict)


@dataclass(frozen=True)
class _Boxes:
    """External boxes as given (world frame) with a version that changes on every update."""

    centers: np.ndarray
    sizes: np.ndarray
    labels: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class _Candidates:
    """Candidate boxes of one query, in the scene frame (model) and the world frame (output)."""

    centers_scene: np.ndarray
    sizes_scene: np.ndarray
    centers_world: np.ndarray
    sizes_world: np.ndarray
    labels: tuple[str, ...]
    cache_key: tuple[Any, ...]
    stamps_ns: tuple[int, ...] = ()  # geometric: the frames the proposals were fused from
    yaw_rad: float = 0.0  # geometric in a turned scene frame: the scene axes' turn about world up ...
    box_sizes: np.ndarray | None = None  # ... and the boxes' extents along them (None: axis-aligned in the world)

    def __len__(self) -> int:
        return int(self.centers_scene.shape[0])


@dataclass
class _Context:
    """Per-query bookkeeping that error answers need too."""

    task: str
    timings: dict[str, float] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)  # keyframe fields once known


def model_frame_budget(model: Any) -> int:
    """The keyframe budget ``model`` was trained with (config.json ``frames_upbound``), else upstream's 32."""
    raw = getattr(getattr(model, "config", None), "raw", None) or {}
    value = raw.get("frames_upbound")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 32


class SceneEngine:
    """Online Video-3D LLM scene understanding over a stream of posed RGB-D frames."""

    def __init__(self, model: Video3DLLM, config: EngineConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else EngineConfig()
        self.frame_budget = self.config.max_frames or model_frame_budget(model)
        make = getattr(model, "ingest_config", None)  # the model's crop and patch grid (test doubles: the defaults)
        self._ingest_config = (make(voxel_size_m=self.config.voxel_size_m) if callable(make)
                               else IngestConfig(voxel_size_m=self.config.voxel_size_m))
        self._ingestor = FrameIngestor(self._ingest_config)
        self._index = CoverageIndex(self.config.pool_capacity)
        self._lock = threading.Lock()  # state: index, counters, selection, external boxes
        self._query_lock = threading.Lock()  # serialises queries (model + caches)
        self._generation = 0
        self._reset_counters()
        self._selection: _Keyframes | None = None
        self._boxes: _Boxes | None = None
        self._box_version = 0
        # query-side caches (guarded by _query_lock)
        self._vision = VisionCache(self.config.vision_cache_frames)
        self._set_state: _SetState | None = None
        self._scene: SceneFrame | None = None
        self._scene_serial = 0
        self._cache_generation = 0
        self._listener = resolve_caption_decoding(self.config.caption_decoding, getattr(model, "generation_config", None))
        if self._listener is not None and getattr(model, "ground_head", None) is None:
            raise ValueError(f"EngineConfig.caption_decoding={self.config.caption_decoding!r} decodes captions with the "
                             "grounding head as listener, and this model has none; use caption_decoding='greedy'")

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, config: EngineConfig | None = None) -> SceneEngine:
        """Load ``config.model_path`` (an upstream checkpoint folder) or the embedded default model.

        The default model is small and trained on synthetic rooms only (see
        video3dllm_core.default_model); it needs no file or network. Raises FileNotFoundError /
        CheckpointError / ConfigError for a bad checkpoint folder.
        """
        cfg = config if config is not None else EngineConfig()
        dtype = parse_dtype(cfg.dtype) if cfg.dtype is not None else None
        if cfg.model_path is None:
            from video3dllm_core.default_model import load_default_model

            model = load_default_model(device=cfg.device, dtype=dtype, attn_implementation=cfg.attn_implementation)
        else:
            model = Video3DLLM.from_pretrained(cfg.model_path, device=cfg.device, dtype=dtype,
                                               attn_implementation=cfg.attn_implementation)
        return cls(model, cfg)

    def _reset_counters(self) -> None:
        self._frames_added = 0
        self._dropped: dict[str, int] = {}
        self._last_drop: str | None = None
        self._accept_times: deque[float] = deque(maxlen=512)
        self._queries = 0
        self._queries_failed = 0
        self._last_coverage = 0.0

    # ------------------------------------------------------------------ frames
    def add_frame(self, frame: PosedFrame) -> bool:
        """Ingest one frame into the keyframe pool; False (counted by reason) if it is unusable.

        Cheap and thread-safe: validation and ingestion (~7 ms for 640x480) run without any
        lock, only the pool insertion takes the short state lock. Never raises.
        """
        try:
            if not isinstance(frame, PosedFrame):
                self._drop("not_a_frame", f"add_frame takes a PosedFrame, got {type(frame).__name__}")
                return False
            validate_frame(frame)  # the arrays may have been changed after construction
            ingested = self._ingestor.ingest(frame)
        except FrameError as exc:
            message = str(exc)
            reason = next((f for f in _FRAME_FIELDS if message.startswith(f)), "invalid_frame")
            self._drop(reason, message)
            return False
        except Exception as exc:  # e.g. a pose beyond the voxel key range; never raise to a sensor callback
            self._drop("ingest_error", f"{type(exc).__name__}: {exc}")
            return False
        try:
            with self._lock:
                if self._index.has_stamp(ingested.stamp_ns):
                    # A re-published or re-played frame would double its memory and its weight.
                    duplicate = True
                else:
                    duplicate = False
                    self._index.add(ingested)
                    self._frames_added += 1
                    self._accept_times.append(time.monotonic())
        except Exception as exc:
            self._drop("ingest_error", f"{type(exc).__name__}: {exc}")
            return False
        if duplicate:
            self._drop("duplicate_stamp", f"a pooled frame already has stamp_ns={ingested.stamp_ns}; frame ignored")
            return False
        return True

    def _drop(self, reason: str, message: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            self._last_drop = message
        log.debug("frame dropped (%s): %s", reason, message)

    def set_external_boxes(self, centers_world: Any, sizes_world: Any, labels: Sequence[str] | None = None) -> None:
        """Candidate boxes from a detector (world frame, axis-aligned; [K, 3] centres and sizes).

        Used for grounding and captioning when ``proposal_source="external"``; replaces the
        previous boxes (K = 0 clears them). ``labels`` (K strings) become the GroundedObject
        labels. Raises ValueError naming the bad box or argument.
        """
        c = np.asarray(centers_world, dtype=np.float64)
        s = np.asarray(sizes_world, dtype=np.float64)
        if c.size == 0 and s.size == 0:
            boxes = Proposals.empty()
        else:
            boxes = external_boxes(c, s)
        names = tuple("" for _ in range(len(boxes))) if labels is None else tuple(str(x) for x in labels)
        if len(names) != len(boxes):
            raise ValueError(f"labels must have one entry per box ({len(boxes)}), got {len(names)}")
        with self._lock:
            self._box_version += 1
            self._boxes = _Boxes(boxes.centers.copy(), boxes.sizes.copy(), names, self._box_version)

    def reset(self) -> None:
        """Forget every frame, the keyframe selection, external boxes, caches and counters."""
        with self._lock:
            self._index.clear()
            self._generation += 1
            self._selection = None
            self._boxes = None
            self._reset_counters()
        if self._query_lock.acquire(blocking=False):  # else the next query clears them (generation check)
            try:
                self._clear_caches()
                self._scene = None
                self._cache_generation = self._generation
            finally:
                self._query_lock.release()

    def _clear_caches(self) -> None:
        """Drop reusable results (vision features, keyframe-set state); the scene frame is kept."""
        self._vision.clear()
        self._set_state = None

    # ------------------------------------------------------------------ read-outs
    def stats(self) -> EngineStats:
        """Counters and pool state (cheap; safe while a query runs)."""
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._accept_times if now - t <= _RATE_WINDOW_S]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
            return EngineStats(
                frames_added=self._frames_added,
                frames_dropped=dict(self._dropped),
                pool_size=len(self._index),
                pool_bytes=self._index.nbytes(),
                ingest_rate_hz=float(rate),
                queries=self._queries,
                last_coverage=self._last_coverage,
                voxels_total=self._index.voxels_total,
                queries_failed=self._queries_failed,
                frames_evicted=self._index.n_evicted,
                vision_cache_frames=len(self._vision),
                last_drop_message=self._last_drop,
            )

    def coverage_points(self) -> np.ndarray:
        """[M, 3] float32 world-frame centres of every coverage voxel seen so far."""
        with self._lock:
            keys = self._index.voxel_keys()
            size = self._index.voxel_size_m or self.config.voxel_size_m
        return voxel_centers(keys, size).astype(np.float32).reshape(-1, 3)

    def keyframe_poses(self) -> list[tuple[int, np.ndarray]]:
        """(stamp_ns, T_world_cam) of the current keyframe selection (with hysteresis), time order.

        Runs the selection (milliseconds) so it is current even before the first query.
        """
        with self._lock:
            if len(self._index) == 0:
                return []
            chosen = self._select_locked(self.frame_budget)
        return [(f.stamp_ns, f.T_world_cam.copy()) for f in chosen.frames]

    @property
    def scene_frame(self) -> SceneFrame | None:
        """The scene frame of the last query (None before the first)."""
        return self._scene

    # ------------------------------------------------------------------ selection
    def _select_locked(self, max_frames: int) -> _Keyframes:
        """Keyframes for a query, with hysteresis; call with the state lock held."""
        cfg = self.config
        index = self._index
        new = index.select(cfg.strategy, max_frames)
        warnings: tuple[str, ...] = ()
        if not new.frame_ids:
            new = index.select("uniform", max_frames)
            warnings = (
                f"no pooled frame sees a voxel within the coverage depth range; {len(new)} frames chosen uniformly",
            )
        chosen = _Keyframes(new.frame_ids, new.frames, new.coverage, max_frames, self._generation, warnings)
        prev = self._selection
        if (prev is not None and prev.generation == self._generation and prev.max_frames == max_frames
                and prev.frame_ids != new.frame_ids and all(fid in index for fid in prev.frame_ids)):
            total = index.voxels_total
            prev_coverage = len(index.voxel_keys(prev.frame_ids)) / total if total else 0.0
            if new.coverage - prev_coverage <= cfg.selection_hysteresis:
                chosen = _Keyframes(prev.frame_ids, prev.frames, prev_coverage, max_frames, self._generation,
                                    prev.warnings)
        self._selection = chosen
        self._last_coverage = chosen.coverage
        return chosen

    # ------------------------------------------------------------------ query
    def query(self, question: str, task: str = "auto", target_xyz: Any = None, max_frames: int | None = None,
              situation: str | None = None) -> Answer:
        """Answer a question about the scene seen so far (never raises; see docs/engine.md).

        Tasks (answer.ENGINE_TASKS): qa, situated_qa (needs ``situation``), ground (one box),
        ground_multi (zero or more boxes), caption (describes the candidate box at
        ``target_xyz``, a world point), auto (decided from the question: engine.tasks). Every box
        and point in the Answer is in the world frame of the frames' poses.
        """
        t0 = time.perf_counter()
        ctx = _Context(task=task if isinstance(task, str) else repr(task))
        try:
            with self._query_lock:
                try:
                    with torch.no_grad():
                        answer = self._query(question, task, target_xyz, max_frames, situation, ctx)
                finally:
                    if not self.config.enable_cache:  # same computation, nothing kept for the next query
                        self._clear_caches()
        except QueryError as exc:
            answer = Answer(question=str(question), task=ctx.task, error=str(exc), **ctx.base)
        except Exception as exc:  # a failure inside the model must not take the caller down
            log.exception("query failed")
            answer = Answer(question=str(question), task=ctx.task, error=f"internal error: {type(exc).__name__}: {exc}",
                            **ctx.base)
        return self._finish(answer, ctx.timings, t0)

    def _finish(self, answer: Answer, timings: dict[str, float], t0: float) -> Answer:
        answer = replace(answer, timings=Timings(**timings, total_s=time.perf_counter() - t0))
        with self._lock:
            self._queries += 1
            if not answer.ok:
                self._queries_failed += 1
        return answer

    def _query(self, question: Any, task: Any, target_xyz: Any, max_frames: int | None, situation: Any,
               ctx: _Context) -> Answer:
        timings = ctx.timings
        if not isinstance(question, str):
            raise QueryError(f"question must be a string, got {type(question).__name__}")
        if not isinstance(task, str) or task.strip().lower() not in ENGINE_TASKS:
            raise QueryError(f"unknown task {task!r}; valid tasks: {', '.join(ENGINE_TASKS)}")
        if situation is not None and not isinstance(situation, str):
            raise QueryError(f"situation must be a string, got {type(situation).__name__}")
        target = _parse_target(target_xyz)
        name = task.strip().lower()
        if name == "auto":
            name = decide_task(question, target, situation)
        ctx.task = name
        if name == "caption" and target is None:
            target = parse_target_from_question(question)
            if target is None:
                raise QueryError(
                    "task 'caption' needs target_xyz: the world point (x, y, z in metres) of the object to describe"
                )
        if name == "situated_qa" and not (situation and situation.strip()):
            raise QueryError("task 'situated_qa' needs situation: where the agent is and faces, "
                             "e.g. 'I am standing by the sofa facing the table.'")
        if name != "caption" and not question.strip():
            raise QueryError(f"question is empty; task {name!r} needs a question or description")
        budget = self.frame_budget if max_frames is None else max_frames
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise QueryError(f"max_frames must be a positive integer, got {max_frames!r}")
        if self.model.tokenizer is None:
            raise QueryError("the model was loaded without its tokenizer (load_tokenizer_files=False); "
                             "load it with the tokenizer files to ask questions")

        # 1. keyframes (state lock only for the snapshot)
        t = time.perf_counter()
        with self._lock:
            if len(self._index) == 0:
                dropped = sum(self._dropped.values())
                raise QueryError(
                    "no frames yet: add posed RGB-D frames with add_frame() before asking "
                    f"({self._frames_added} accepted, {dropped} dropped"
                    + (f"; last drop: {self._last_drop}" if self._last_drop else "") + ")"
                )
            keyframes = self._select_locked(int(budget))
            boxes = self._boxes
        if self._cache_generation != keyframes.generation:  # reset() since the caches were filled
            self._clear_caches()
            self._scene = None
            self._cache_generation = keyframes.generation
        ctx.base = dict(keyframe_stamps_ns=tuple(f.stamp_ns for f in keyframes.frames),
                        keyframe_poses=tuple(f.T_world_cam.copy() for f in keyframes.frames),
                        coverage=keyframes.coverage)
        state = self._keyframe_set(keyframes)
        timings["selection_s"] = time.perf_counter() - t
        warnings = list(keyframes.warnings) + list(state.warnings)

        # 2. vision features and the visual prefix (cached per keyframe set)
        t = time.perf_counter()
        reused = state.visual is not None
        if state.visual is None:
            visual, _, _ = self._vision.visual_features(
                self.model, state.frame_ids, state.frames, state.scene, state.scene_serial, self._ingest_config,
                self.config.vision_batch_size)
            state.visual = visual
        with self._lock:
            alive = set(self._index.frame_ids)
        self._vision.prune(state.frame_ids, alive)
        timings["vision_s"] = time.perf_counter() - t

        prompt_task = ENGINE_TASK_PROMPTS[name]
        try:
            if name == "situated_qa":
                human = human_turn(prompt_task, situation=situation, question=question)
            elif name == "qa":
                human = human_turn(prompt_task, question=question)
            elif name == "caption":
                human = human_turn(prompt_task)
            else:
                human = human_turn(prompt_task, description=question)
            prompt = build_input_ids(self.model.tokenizer, prompt_task, human,
                                     newline_after_image=self.model.config.prompt_newline_after_image)
        except ValueError as exc:
            raise QueryError(str(exc)) from None
        ids = prompt.input_ids
        t = time.perf_counter()
        prefix, filled = self._prefix(state, ids)
        reused = reused and not filled
        timings["prefill_s"] = time.perf_counter() - t

        base = dict(question=question, task=name, cache_hit=reused, **ctx.base)
        if name in ("qa", "situated_qa"):
            text, more = self._generate(ids, state, prefix, None, timings)
            answer = Answer(text=text, warnings=tuple(warnings + more), decoding="greedy", **base)  # type: ignore[arg-type]
        elif name in ("ground", "ground_multi"):
            answer = self._ground(name, ids, state, prefix, boxes, timings, warnings, base)
        else:
            assert target is not None
            answer = self._caption(ids, state, prefix, boxes, target, timings, warnings, base)
        return answer

    # ------------------------------------------------------------------ per keyframe set
    def _prefix(self, state: _SetState, ids: list[int]) -> tuple[VisualPrefix, bool]:
        """The keyframe set's visual prefix for a prompt's system part (cached per part); True when filled now."""
        assert state.visual is not None
        head = tuple(ids[: ids.index(-200)])
        prefix = state.prefixes.get(head)
        if prefix is not None:
            return prefix, False
        prefix = self.model.prefill_prefix(state.visual, ids)
        state.prefixes[head] = prefix
        return prefix, True

    def _object_features(self, state: _SetState, cands: _Candidates) -> ObjectFeatures:
        """The model's features of the candidate boxes (cached per candidate set)."""
        assert state.visual is not None
        objects = state.objects.get(cands.cache_key)
        if objects is None:
            box_array = np.concatenate([cands.centers_scene, cands.sizes_scene], axis=1)
            objects = self.model.object_features(state.visual, box_array)
            state.objects[cands.cache_key] = objects
        return objects

    def _keyframe_set(self, keyframes: _Keyframes) -> _SetState:
        state = self._set_state
        if state is not None and state.generation == keyframes.generation and state.frame_ids == keyframes.frame_ids:
            return state
        fused = fuse_points(keyframes.frames, stride=self.config.proposal_stride_px)
        scene = self._choose_scene_frame(fused)
        points_scene = scene.to_scene(fused.points)
        cfg = self.model.config
        warnings = tuple(range_warnings(points_scene, cfg.min_xyz_range, cfg.max_xyz_range))
        state = _SetState(keyframes.generation, keyframes.frame_ids, keyframes.frames, fused, scene,
                          self._scene_serial, warnings, points_scene)
        self._set_state = state
        return state

    def _choose_scene_frame(self, fused: FusedPoints) -> SceneFrame:
        """Estimate the scene frame, keeping the previous one when it moved by less than the tolerance."""
        if self.config.scene_frame == "identity":
            estimate = SceneFrame.identity()
        elif len(fused) < 3:
            raise QueryError(
                f"the keyframes hold only {len(fused)} valid depth points; the scene frame needs more "
                "(check the depth images)"
            )
        else:
            estimate = SceneFrame.estimate(fused.points, yaw_rad=self._scene_yaw(fused))
        previous = self._scene
        if previous is not None:
            moved = float(np.linalg.norm(estimate.T_scene_world[:3, 3] - previous.T_scene_world[:3, 3]))
            same_rotation = np.allclose(estimate.T_scene_world[:3, :3], previous.T_scene_world[:3, :3], atol=1e-9)
            if same_rotation and moved <= self.config.scene_frame_tolerance_m:
                cfg = self.model.config
                lo, hi = np.asarray(cfg.min_xyz_range), np.asarray(cfg.max_xyz_range)
                outside_prev = _count_outside(previous.to_scene(fused.points), lo, hi)
                outside_new = _count_outside(estimate.to_scene(fused.points), lo, hi)
                if outside_prev <= outside_new:
                    return previous
        self._scene = estimate
        self._scene_serial += 1
        return estimate

    def _scene_yaw(self, fused: FusedPoints) -> float:
        """The scene frame's yaw: 0 for ``scene_yaw="world"``; for "walls" the yaw that turns the keyframes'
        walls onto x/y (`estimate_wall_yaw`), the previous scene frame's when it is within
        ``scene_yaw_tolerance_deg`` of it (so a stable room keeps its frame and the caches)."""
        if self.config.scene_yaw == "world":
            return 0.0
        yaw = estimate_wall_yaw(fused.points).yaw_rad
        previous_yaw = self._scene.yaw_rad if self._scene is not None else None
        if previous_yaw is not None:
            turn = (yaw - previous_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4  # the same walls, modulo 90 degrees
            if abs(turn) <= np.radians(self.config.scene_yaw_tolerance_deg):
                return previous_yaw
        return yaw

    def _candidates(self, state: _SetState, boxes: _Boxes | None, timings: dict[str, float]) -> _Candidates:
        """Candidate boxes of the keyframe set: geometric proposals (cached) or the external boxes."""
        t = time.perf_counter()
        scene = state.scene
        if self.config.proposal_source == "external":
            if boxes is None or len(boxes.centers) == 0:
                raise QueryError("no candidate boxes: proposal_source is 'external' and no boxes were given "
                                 "(call set_external_boxes with the detector's world-frame boxes)")
            c_scene, s_scene = scene.boxes_to_scene(boxes.centers, boxes.sizes)
            out = _Candidates(c_scene, s_scene, boxes.centers, boxes.sizes, boxes.labels, ("external", boxes.version))
        else:
            frame_ids, frames = self._proposal_frames(state)
            if state.proposals is None or state.proposal_frame_ids != frame_ids:
                if frame_ids == state.frame_ids:
                    points_scene, colors = state.points_scene, state.fused.colors
                else:
                    fused = fuse_points(frames, stride=self.config.proposal_stride_px)
                    points_scene, colors = scene.to_scene(fused.points), fused.colors
                state.proposals = propose_boxes(points_scene, colors, self.config.proposal_config)
                state.proposal_frame_ids = frame_ids
            props = state.proposals
            if len(props) == 0:
                raise QueryError(
                    f"no candidate boxes: the geometric proposals found no object in the {len(frame_ids)} "
                    "frames fused for them (add views of the objects, or give detector boxes with "
                    "proposal_source='external')"
                )
            c_world, s_world = scene.boxes_to_world(props.centers, props.sizes)
            box_yaw, box_sizes, scene_yaw = 0.0, None, scene.yaw_rad
            if scene_yaw is not None and not scene.is_pure_translation:  # turned: tight boxes along the scene axes
                box_yaw, box_sizes = -scene_yaw, props.sizes
            out = _Candidates(props.centers, props.sizes, c_world, s_world, tuple("" for _ in range(len(props))),
                              ("geometric", frame_ids), tuple(sorted(f.stamp_ns for f in frames)), box_yaw, box_sizes)
        timings["proposals_s"] = time.perf_counter() - t
        return out

    def _proposal_frames(self, state: _SetState) -> tuple[tuple[int, ...], tuple[IngestedFrame, ...]]:
        """Frames fused for the geometric proposals, in frame-id order: the query's keyframes and a
        max-coverage selection of `EngineConfig.proposal_max_frames` pooled frames. Candidates are
        geometry: the model's few keyframes need not show a box for it to be a candidate (its object
        features are then its position alone), and a door seen in one frame outside them can still be
        the landmark of "the chair closest to the door"."""
        budget = self.config.proposal_max_frames
        chosen = dict(zip(state.frame_ids, state.frames))
        if budget > 0:
            with self._lock:
                if self._generation == state.generation:
                    selection = self._index.select(self.config.strategy, budget)
                    chosen.update(zip(selection.frame_ids, selection.frames))
        ids = tuple(sorted(chosen))
        return ids, tuple(chosen[i] for i in ids)

    # ------------------------------------------------------------------ tasks
    def _generate(self, ids: list[int], state: _SetState, prefix: VisualPrefix, coord_xyz: Any,
                  timings: dict[str, float]) -> tuple[str, list[str]]:
        t = time.perf_counter()
        assert state.visual is not None
        merged = self.model.build_inputs_embeds(ids, state.visual, coord_xyz=coord_xyz)
        out = self.model.generate(merged, max_new_tokens=self.config.max_new_tokens, prefix=prefix)
        tokens = [t_ for t_ in out.token_ids if t_ not in self.model.eos_token_ids]
        text = str(self.model.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
        timings["decode_s"] = time.perf_counter() - t
        warnings = [] if out.stopped_at_eos else [
            f"answer cut at max_new_tokens={self.config.max_new_tokens} (no end-of-answer token yet)"]
        return text, warnings

    def _caption_with_listener(self, ids: list[int], state: _SetState, prefix: VisualPrefix, cands: _Candidates,
                               index: int, coord_xyz: np.ndarray, timings: dict[str, float]) -> tuple[str, list[str]]:
        """The caption of candidate `index` by the speaker-listener search (EngineConfig.caption_decoding)."""
        assert self._listener is not None and state.visual is not None
        objects = self._object_features(state, cands)
        t = time.perf_counter()
        tokenizer, task = self.model.tokenizer, ENGINE_TASK_PROMPTS["ground"]

        def listener_ids(text: str) -> list[int]:
            return build_input_ids(tokenizer, task, human_turn(task, description=text),
                                   newline_after_image=self.model.config.prompt_newline_after_image).input_ids

        listener_prefix, _ = self._prefix(state, listener_ids("the object."))
        merged = self.model.build_inputs_embeds(ids, state.visual, coord_xyz=coord_xyz)
        out = self.model.generate_with_listener(merged, state.visual, objects, index, listener_ids, self._listener,
                                                max_new_tokens=self.config.max_new_tokens, prefix=prefix,
                                                listener_prefix=listener_prefix)
        tokens = [t_ for t_ in out.token_ids if t_ not in self.model.eos_token_ids]
        text = str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
        timings["decode_s"] = time.perf_counter() - t
        warnings = [] if out.stopped_at_eos else [
            f"caption cut at max_new_tokens={self.config.max_new_tokens} (no end-of-answer token yet)"]
        return text, warnings

    def _ground(self, name: str, ids: list[int], state: _SetState, prefix: VisualPrefix, boxes: _Boxes | None,
                timings: dict[str, float], warnings: list[str], base: dict[str, Any]) -> Answer:
        cands = self._candidates(state, boxes, timings)
        t = time.perf_counter()
        assert state.visual is not None
        objects = self._object_features(state, cands)
        merged = self.model.build_inputs_embeds(ids, state.visual)
        scores = self.model.ground(merged, objects, prefix=prefix).scores.detach().float().cpu()
        if name == "ground":
            index, fell_back = select_scanrefer(scores)
            chosen = [index]
            if fell_back:
                warnings.append("the 'no object' target scored highest; the best candidate is returned anyway "
                                "(upstream ScanRefer rule); use ground_multi to allow no answer")
        else:
            chosen = select_multi3drefer(scores)
        timings["grounding_s"] = time.perf_counter() - t
        values = scores.tolist()
        candidates = tuple(_grounded(cands, i, values[i]) for i in range(len(cands)))
        objects_out = tuple(candidates[i] for i in chosen)
        text = "no matching object" if not objects_out else f"{len(objects_out)} object" + ("s" if len(objects_out) > 1 else "")
        return Answer(text=text, objects=objects_out, candidates=candidates, no_object_score=float(values[-1]),
                      warnings=tuple(warnings), proposal_stamps_ns=cands.stamps_ns, **base)

    def _caption(self, ids: list[int], state: _SetState, prefix: VisualPrefix, boxes: _Boxes | None,
                 target_world: tuple[float, float, float], timings: dict[str, float], warnings: list[str],
                 base: dict[str, Any]) -> Answer:
        scene = state.scene
        target_scene = scene.to_scene(np.asarray(target_world, dtype=np.float64))
        cfg = self.model.config
        if _count_outside(target_scene[None], np.asarray(cfg.min_xyz_range), np.asarray(cfg.max_xyz_range)):
            warnings.append(f"target_xyz lies outside the model's range in the scene frame "
                            f"({', '.join(f'{v:.1f}' for v in target_scene)} m); it is clamped")
        try:
            cands: _Candidates | None = self._candidates(state, boxes, timings)
        except QueryError as exc:
            cands = None
            warnings.append(f"{exc}; captioning at the target point itself")
        objects_out: tuple[GroundedObject, ...] = ()
        location = target_scene
        index = None
        if cands is not None:
            index, distance = _box_for_point(cands.centers_scene, cands.sizes_scene, target_scene)
            location = cands.centers_scene[index]
            objects_out = (_grounded(cands, index, 1.0 if distance == 0.0 else 0.0),)
            if distance > 0.0:
                warnings.append(f"no candidate box contains target_xyz; the nearest one ({distance:.2f} m away) is described")
        coord = np.asarray(location, dtype=np.float32)
        decoding = "greedy"
        if self._listener is not None and cands is not None and index is not None:
            text, more = self._caption_with_listener(ids, state, prefix, cands, index, coord, timings)
            decoding = "listener"
        else:
            if self._listener is not None:
                warnings.append("no candidate boxes for the grounding head to listen to; the caption is decoded greedily")
            text, more = self._generate(ids, state, prefix, coord, timings)
        return Answer(text=text, objects=objects_out, warnings=tuple(warnings + more), decoding=decoding,
                      proposal_stamps_ns=cands.stamps_ns if cands is not None else (), **base)


# ---------------------------------------------------------------------- helpers
def _parse_target(target_xyz: Any) -> tuple[float, float, float] | None:
    if target_xyz is None:
        return None
    try:
        arr = np.asarray(target_xyz, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise QueryError(f"target_xyz must be 3 numbers (x, y, z in metres, world frame), got {target_xyz!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise QueryError(f"target_xyz must be 3 finite numbers (x, y, z in metres, world frame), got {target_xyz!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _count_outside(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return int(np.count_nonzero(np.any((pts < lo) | (pts > hi), axis=1)))


def _box_for_point(centers: np.ndarray, sizes: np.ndarray, point: np.ndarray) -> tuple[int, float]:
    """(index, distance) of the box for a point: the smallest box containing it, else the nearest box."""
    lo, hi = centers - sizes / 2, centers + sizes / 2
    gap = np.maximum(np.maximum(lo - point, point - hi), 0.0)
    distance = np.linalg.norm(gap, axis=1)
    inside = np.flatnonzero(distance == 0.0)
    if inside.size:
        volume = np.prod(sizes[inside], axis=1)
        return int(inside[np.argmin(volume)]), 0.0
    index = int(np.argmin(distance))
    return index, float(distance[index])


def _grounded(cands: _Candidates, index: int, score: float) -> GroundedObject:
    c, s = cands.centers_world[index], cands.sizes_world[index]
    box = None if cands.box_sizes is None else cands.box_sizes[index]
    return GroundedObject(center_xyz=(float(c[0]), float(c[1]), float(c[2])),
                          size_xyz=(float(s[0]), float(s[1]), float(s[2])), score=float(score),
                          label=cands.labels[index], proposal_index=int(index),
                          box_size_xyz=None if box is None else (float(box[0]), float(box[1]), float(box[2])),
                          yaw_rad=cands.yaw_rad)
