"""The node's query logic without rclpy: request fields -> engine call -> Answer and latency.

`QueryRequest.from_fields` reads a video3dllm/srv/Query request from any object with its field
names (the generated rclpy request, a dict, a namespace), so the same path serves the
`~/query` service, `/clicked_point` captions and the tests. `run_query` never raises: an
exception inside the engine (e.g. CUDA out of memory) becomes an error Answer naming it, so the
service always answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from video3dllm_core.answer import ENGINE_TASKS, Answer

__all__ = ["EngineLike", "QueryRequest", "QueryOutcome", "run_query"]


class EngineLike(Protocol):
    """The part of video3dllm_core.engine.SceneEngine the node uses (see helpers' engine contract)."""

    def add_frame(self, frame: Any) -> bool: ...

    def set_external_boxes(self, centers_world: Any, sizes_world: Any, labels: Any = None) -> None: ...

    def query(self, question: str, task: str = "auto", target_xyz: Any = None, max_frames: int | None = None,
              situation: str | None = None) -> Answer: ...

    def reset(self) -> None: ...

    def stats(self) -> Any: ...

    def coverage_points(self) -> np.ndarray: ...

    def keyframe_poses(self) -> list[tuple[int, np.ndarray]]: ...


def _get(fields: Any, name: str, default: Any) -> Any:
    if isinstance(fields, Mapping):
        return fields.get(name, default)
    return getattr(fields, name, default)


@dataclass(frozen=True)
class QueryRequest:
    """A validated Query request. `target_xyz` is None unless use_target was set."""

    question: str
    task: str = "auto"
    situation: str = ""
    target_xyz: tuple[float, float, float] | None = None
    max_frames: int = 0

    @classmethod
    def from_fields(cls, fields: Any) -> QueryRequest:
        """From a Query request message, a dict or a namespace with the srv field names.

        `target` may be a geometry_msgs/Point-like object or a 3-sequence. An empty task means
        "auto". Task names are checked by the engine (its error lists the valid ones).
        """
        task = str(_get(fields, "task", "") or "auto").strip()
        target_xyz = None
        if bool(_get(fields, "use_target", False)):
            target = _get(fields, "target", None)
            if target is None:
                raise ValueError("use_target is true but the request has no 'target' point")
            if hasattr(target, "x"):
                target_xyz = (float(target.x), float(target.y), float(target.z))
            else:
                values = [float(v) for v in target]
                if len(values) != 3:
                    raise ValueError(f"target must have 3 coordinates (x, y, z), got {values}")
                target_xyz = (values[0], values[1], values[2])
        max_frames = int(_get(fields, "max_frames", 0) or 0)
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0 (0 = the node's budget), got {max_frames}")
        return cls(
            question=str(_get(fields, "question", "")),
            task=task,
            situation=str(_get(fields, "situation", "") or ""),
            target_xyz=target_xyz,
            max_frames=max_frames,
        )


@dataclass(frozen=True)
class QueryOutcome:
    """An answer with the wall-clock seconds the query took."""

    answer: Answer
    latency_s: float


def run_query(engine: EngineLike, request: QueryRequest) -> QueryOutcome:
    """Ask the engine; any exception becomes an error Answer (the service must always respond)."""
    t0 = time.perf_counter()
    try:
        answer = engine.query(
            request.question,
            task=request.task,
            target_xyz=request.target_xyz,
            max_frames=request.max_frames or None,
            situation=request.situation or None,
        )
    except Exception as exc:  # noqa: BLE001 - reported to the caller, never swallowed silently
        answer = Answer(
            question=request.question,
            task=request.task if request.task in ENGINE_TASKS else "auto",
            error=f"internal error in the engine: {type(exc).__name__}: {exc}",
        )
    return QueryOutcome(answer=answer, latency_s=time.perf_counter() - t0)
