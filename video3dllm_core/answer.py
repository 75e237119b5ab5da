"""What a query returns: the one result type shared by the engine, the replay, the CLI and the node.

Everything geometric is in the *world* frame the frames were given in (the TF world frame on a
robot), never in the internal scene frame, so a caller can draw or act on it directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["GroundedObject", "Timings", "Answer", "ENGINE_TASKS"]

# Task names accepted by SceneEngine.query: "auto" decides from the question.
ENGINE_TASKS = ("auto", "qa", "situated_qa", "ground", "ground_multi", "caption")


@dataclass(frozen=True)
class GroundedObject:
    """An axis-aligned box in the world frame chosen by the grounding head (or captioned)."""

    center_xyz: tuple[float, float, float]
    size_xyz: tuple[float, float, float]
    score: float
    label: str = ""
    proposal_index: int = -1  # index into the candidate boxes of the query, -1 if none


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (answers.jsonl line, service logs)."""
        out = asdict(self)
        out["keyframe_poses"] = [np.asarray(T, dtype=float).tolist() for T in self.keyframe_poses]
        for key in ("objects", "candidates"):
            out[key] = [
                {**asdict(o), "center_xyz": list(map(float, o.center_xyz)), "size_xyz": list(map(float, o.size_xyz))}
                for o in getattr(self, key)
            ]
        out["ok"] = self.ok
        return out
