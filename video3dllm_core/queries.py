"""Query files for `video3dllm replay`: the questions to ask a recording, and when to ask them.

A query file is YAML or JSON (chosen by suffix: `.json` is parsed as JSON, anything else as
YAML, which also reads JSON). It holds a list of entries, or a mapping with such a list under
`queries`:

    - question: Where is the red chair?          # required, non-empty text
      task: ground                               # optional, one of ENGINE_TASKS (default auto)
      at_s: 2.5                                  # optional: ask 2.5 s of bag time after the first frame
    - question: Describe the object here.
      task: caption
      target: [20.4, -11.2, 0.45]                # optional [x, y, z] in the world frame, metres
    - question: What is in front of me?
      task: situated_qa
      situation: I am sitting on the sofa.       # optional text (SQA3D situation)

Entries without `at_s` are asked after the last frame. A caption query needs a target, either
the `target` field or "x, y, z" in the question text; the engine answers one without a target
with an error (recorded in answers.jsonl like every failed query). Every problem raises `QueryFileError`
(a ValueError) naming the file, the entry index (0-based, as listed) and the field, so a typo is
fixed without guessing: unknown fields are errors, not ignored, because a misspelt `at_s` would
otherwise silently move a question to the end of the recording.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from video3dllm_core.answer import ENGINE_TASKS

__all__ = ["QuerySpec", "QueryFileError", "load_queries", "parse_queries", "QUERY_FIELDS"]

QUERY_FIELDS = ("question", "task", "target", "situation", "at_s")


class QueryFileError(ValueError):
    """A query file that cannot be used; the message names the file, entry and field."""


@dataclass(frozen=True)
class QuerySpec:
    """One validated query of a query file."""

    index: int  # position in the file (0-based); answers.jsonl lines carry it
    question: str
    task: str = "auto"
    target_xyz: tuple[float, float, float] | None = None
    situation: str | None = None
    at_s: float | None = None  # stream seconds after the first frame; None = after the last frame

    def to_dict(self) -> dict[str, Any]:
        """The entry as it would be written in a query file (plus its index)."""
        return {
            "index": self.index,
            "question": self.question,
            "task": self.task,
            "target": list(self.target_xyz) if self.target_xyz is not None else None,
            "situation": self.situation,
            "at_s": self.at_s,
        }


def _number(value: Any) -> float | None:
    """A finite float from an int/float (not bool, not str), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _parse_entry(entry: Any, index: int, where: str) -> QuerySpec:
    at = f"{where}: entry {index}"
    if isinstance(entry, str):
        raise QueryFileError(f"{at} is the bare text {entry!r}; write it as {{question: {entry!r}}}")
    if not isinstance(entry, dict):
        raise QueryFileError(f"{at} must be a mapping with a 'question' field, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in QUERY_FIELDS)
    if unknown:
        raise QueryFileError(f"{at}: unknown field(s) {', '.join(unknown)}; allowed fields: {', '.join(QUERY_FIELDS)}")

    question = entry.get("question")
    if question is None:
        raise QueryFileError(f"{at}: field 'question' is missing; every entry needs the question text")
    if not isinstance(question, str) or not question.strip():
        raise QueryFileError(f"{at}: field 'question' must be non-empty text, got {question!r}")

    task = entry.get("task", "auto")
    if task is None:
        task = "auto"
    if not isinstance(task, str) or task not in ENGINE_TASKS:
        raise QueryFileError(f"{at}: field 'task' is {task!r}; valid tasks: {', '.join(ENGINE_TASKS)}")

    target_xyz: tuple[float, float, float] | None = None
    target = entry.get("target")
    if target is not None:
        values = [_number(v) for v in target] if isinstance(target, (list, tuple)) else []
        if len(values) != 3 or any(v is None for v in values):
            raise QueryFileError(
                f"{at}: field 'target' must be [x, y, z], three finite numbers in metres (world frame), got {target!r}"
            )
        target_xyz = (float(values[0]), float(values[1]), float(values[2]))  # type: ignore[arg-type]

    situation = entry.get("situation")
    if situation is not None and (not isinstance(situation, str) or not situation.strip()):
        raise QueryFileError(f"{at}: field 'situation' must be non-empty text, got {situation!r}")

    at_s: float | None = None
    if entry.get("at_s") is not None:
        at_s = _number(entry["at_s"])
        if at_s is None or at_s < 0:
            raise QueryFileError(
                f"{at}: field 'at_s' must be a finite number of seconds >= 0 (bag time after the first frame), "
                f"got {entry['at_s']!r}"
            )
    return QuerySpec(index, question.strip(), task, target_xyz, situation.strip() if situation else None, at_s)


def parse_queries(data: Any, where: str = "queries") -> list[QuerySpec]:
    """Validate already-loaded query data (a list of entries or {queries: [...]}); `where` names it in errors."""
    if isinstance(data, dict):
        if set(data) != {"queries"}:
            raise QueryFileError(
                f"{where}: a mapping at the top level must hold only the list 'queries', got field(s) "
                f"{', '.join(sorted(map(str, data)))}"
            )
        data = data["queries"]
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise QueryFileError(
            f"{where}: expected a list of queries like [{{question: ..., task: ..., at_s: ...}}], got {type(data).__name__}"
        )
    if len(data) == 0:
        raise QueryFileError(f"{where}: the query list is empty; add at least one {{question: ...}}")
    return [_parse_entry(entry, i, where) for i, entry in enumerate(data)]


def load_queries(path: str | Path) -> list[QuerySpec]:
    """Read and validate a YAML or JSON query file (see the module doc)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QueryFileError(f"queries file {path} is not UTF-8 text: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise QueryFileError(f"queries file {path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise QueryFileError(f"queries file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        raise QueryFileError(f"queries file {path} is empty; add a list of {{question: ...}} entries")
    return parse_queries(data, str(path))
