"""What a query returns: the one result type shared by the engine, the replay, the CLI and the node.

Everything geometric is in the *world* frame the frames were given in (the TF world frame on a
robot), never in the internal scene frame, so a caller can draw or act on it directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

__all__ = ["GroundedObject", "Timings", "Answer", "ENGINE_TASKS"]

# Task names accepted by SceneEngine.query: "auto" decides from the question.
ENGINE_TASKS = ("auto", "qa", "situated_qa", "ground", "ground_multi", "caption")
# how captions are decoded (EngineConfig.caption_decoding, `video3dllm eval --caption-decoding`; meaning:
# model.listener_decoding.resolve_caption_decoding)
CAPTION_DECODINGS = ("checkpoint", "greedy", "listener")


@dataclass(frozen=True)
class GroundedObject:
    """A box in the world frame chosen by the grounding head (or captioned).

    `center_xyz` / `size_xyz` is the axis-aligned box in the world frame. When the engine's scene frame is
    turned about up (`EngineConfig.scene_yaw`: along a room's walls) the candidate is a tighter box along
    the scene axes: `box_size_xyz` are its extents along its own axes, turned by `yaw_rad` about world up
    around the same centre, and `size_xyz` is the axis-aligned hull of it. `box_size_xyz` is None when the
    box is axis-aligned in the world (yaw 0, external boxes).
    """

    center_xyz: tuple[float, float, float]
    size_xyz: tuple[float, float, float]
    score: float
    label: str = ""
    proposal_index: int = -1  # index into the candidate boxes of the query, -1 if none
    box_size_xyz: tuple[float, float, float] | None = None
    yaw_rad: float = 0.0

    @property
    def oriented_size_xyz(self) -> tuple[float, float, float]:
        """Extents along the box's own axes (turned by `yaw_rad`): `box_size_xyz`, else `size_xyz`."""
        return self.box_size_xyz if self.box_size_xyz is not None else self.size_xyz

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "object") -> GroundedObject:
        """Inverse of the per-object dicts in `Answer.to_dict`; extra keys (e.g. a report's "iou") are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a dict with center_xyz, size_xyz and score, got {type(data).__name__}")

        def vector(key: str) -> tuple[float, float, float]:
            if key not in data:
                raise ValueError(f"{where} lacks '{key}' (3 numbers, world frame, metres)")
            vec = np.asarray(data[key], dtype=np.float64)
            if vec.shape != (3,):
                raise ValueError(f"{where}.{key} must be 3 numbers, got {data[key]!r}")
            return (float(vec[0]), float(vec[1]), float(vec[2]))

        center, size = vector("center_xyz"), vector("size_xyz")
        if "score" not in data:
            raise ValueError(f"{where} lacks 'score' (a number)")
        box = None if data.get("box_size_xyz") is None else vector("box_size_xyz")
        return cls(center, size, float(data["score"]), str(data.get("label", "")), int(data.get("proposal_index", -1)),
                   box, float(data.get("yaw_rad", 0.0)))


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds per stage of one query; stages a task does not run stay 0."""

    selection_s: float = 0.0
    vision_s: float = 0.0
    proposals_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    grounding_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Answer:
    """The result of one query. `error` is set (and `ok` False) when the query could not run."""

    question: str
    task: str
    text: str = ""
    objects: tuple[GroundedObject, ...] = ()
    keyframe_stamps_ns: tuple[int, ...] = ()
    keyframe_poses: tuple[np.ndarray, ...] = ()  # T_world_cam of each keyframe, time order
    coverage: float = 0.0
    timings: Timings = field(default_factory=Timings)
    warnings: tuple[str, ...] = ()
    error: str | None = None
    cache_hit: bool = False
    # Grounding: every candidate box of the query with its score (world frame, proposal order);
    # the chosen ones are also in `objects`. Empty for other tasks.
    candidates: tuple[GroundedObject, ...] = ()
    no_object_score: float | None = None  # grounding: score of the learned "no object" target
    # Grounding and captioning on geometric proposals: stamps of the frames the candidate boxes were fused
    # from (time order; the keyframes and more, EngineConfig.proposal_max_frames). Empty otherwise.
    proposal_stamps_ns: tuple[int, ...] = ()
    # Text answers: how the text was decoded, "greedy" (the decoder alone) or "listener" (a caption by the
    # speaker-listener search, EngineConfig.caption_decoding). "" for grounding and failed queries.
    decoding: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (answers.jsonl line, service logs)."""
        out = asdict(self)
        out["keyframe_poses"] = [np.asarray(T, dtype=float).tolist() for T in self.keyframe_poses]
        for key in ("objects", "candidates"):
            out[key] = [
                {**asdict(o), "center_xyz": list(map(float, o.center_xyz)), "size_xyz": list(map(float, o.size_xyz)),
                 "box_size_xyz": None if o.box_size_xyz is None else list(map(float, o.box_size_xyz))}
                for o in getattr(self, key)
            ]
        out["ok"] = self.ok
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        """Inverse of `to_dict`, also after a JSON round trip (an answers.jsonl row).

        Keys that are not Answer fields (`ok`, and a replay row's `index`, `stamp_ns`, ...) are
        ignored; missing optional fields take their defaults. Raises ValueError naming the field.
        """
        if not isinstance(data, dict):
            raise ValueError(f"an answer must be a dict (an Answer.to_dict() / answers.jsonl row), got {type(data).__name__}")
        for key in ("question", "task"):
            if key not in data:
                raise ValueError(f"answer dict lacks '{key}'")
        timings = data.get("timings") or {}
        if not isinstance(timings, dict):
            raise ValueError(f"answer timings must be a dict of stage seconds, got {timings!r}")
        stage_names = {f.name for f in fields(Timings)}
        poses = []
        for i, T in enumerate(data.get("keyframe_poses") or ()):
            pose = np.asarray(T, dtype=np.float64)
            if pose.shape != (4, 4):
                raise ValueError(f"keyframe_poses[{i}] must be a 4x4 matrix, got shape {pose.shape}")
            poses.append(pose)
        no_object = data.get("no_object_score")
        error = data.get("error")
        return cls(
            question=str(data["question"]),
            task=str(data["task"]),
            text=str(data.get("text", "")),
            objects=tuple(GroundedObject.from_dict(o, f"objects[{i}]") for i, o in enumerate(data.get("objects") or ())),
            keyframe_stamps_ns=tuple(int(t) for t in data.get("keyframe_stamps_ns") or ()),
            keyframe_poses=tuple(poses),
            coverage=float(data.get("coverage", 0.0)),
            timings=Timings(**{k: float(v) for k, v in timings.items() if k in stage_names}),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            error=None if error is None else str(error),
            cache_hit=bool(data.get("cache_hit", False)),
            candidates=tuple(GroundedObject.from_dict(o, f"candidates[{i}]")
                             for i, o in enumerate(data.get("candidates") or ())),
            no_object_score=None if no_object is None else float(no_object),
            proposal_stamps_ns=tuple(int(t) for t in data.get("proposal_stamps_ns") or ()),
            decoding=str(data.get("decoding") or ""),
        )
