"""Which task a question asks for ("auto"), and the benchmark prompt each engine task uses.

The rules of `decide_task`, first match wins (words are matched case-insensitively, as whole
words):

1. a ``situation`` is given -> ``situated_qa`` (SQA3D: situation + question);
2. a target point is given (``target_xyz``, or three comma-separated numbers in the question),
   or the question asks to describe/caption "the object at/here/there" -> ``caption``
   (Scan2Cap; without a point the query then fails with the caption error);
3. the question asks to locate something -> grounding: it starts with *find, locate, show,
   point, highlight, identify, detect, mark, select, ground*, or contains *where is / where's /
   where are*, *point to/at/out*, *show me*, *look for / search for*, *which object / which
   one / which thing*. It is ``ground_multi`` (Multi3DRefer, zero or more objects) when it also
   says *all, every, each, any, both*, *are there* or *where are*; else ``ground`` (ScanRefer,
   exactly one object);
4. anything else -> ``qa`` (ScanQA).

"How many chairs are there?" is therefore qa (counting is a ScanQA question), "find all chairs"
and "where are the chairs" are ground_multi, "where is the lamp" is ground.
"""

from __future__ import annotations

import re

from video3dllm_core.model.prompts import Task

__all__ = ["decide_task", "parse_target_from_question", "ENGINE_TASK_PROMPTS"]

ENGINE_TASK_PROMPTS: dict[str, Task] = {
    "qa": Task.SCANQA,
    "situated_qa": Task.SQA3D,
    "ground": Task.SCANREFER,
    "ground_multi": Task.MULTI3DREFER,
    "caption": Task.SCAN2CAP,
}
"""Engine task -> the benchmark task whose upstream prompt template it uses."""

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_TRIPLE = re.compile(rf"\(?\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)?")
_CAPTION = re.compile(r"\b(describe|caption)\b.*\b(at|here|there|this|located)\b")
_GROUND_START = re.compile(r"^\s*(find|locate|show|point|highlight|identify|detect|mark|select|ground)\b")
_GROUND_ANY = re.compile(
    r"\bwhere\s+(is|are)\b|\bwhere's\b|\bpoint\s+(to|at|out)\b|\bshow\s+me\b|\b(look|search)\s+for\b"
    r"|\bwhich\s+(object|one|thing|item)s?\b"
)
_MULTI = re.compile(r"\b(all|every|each|any|both)\b|\bare\s+there\b|\bwhere\s+are\b")


def parse_target_from_question(question: str) -> tuple[float, float, float] | None:
    """The first "x, y, z" triple of numbers in the question (world frame, metres), or None."""
    match = _TRIPLE.search(question)
    if match is None:
        return None
    return (float(match.group(1)), float(match.group(2)), float(match.group(3)))


def decide_task(question: str, target_xyz: object = None, situation: str | None = None) -> str:
    """The engine task for ``task="auto"`` (rules in the module docstring)."""
    text = " ".join(str(question).lower().split())
    if situation is not None and str(situation).strip():
        return "situated_qa"
    if target_xyz is not None or parse_target_from_question(text) is not None or _CAPTION.search(text):
        return "caption"
    if _GROUND_START.search(text) or _GROUND_ANY.search(text):
        return "ground_multi" if _MULTI.search(text) else "ground"
    return "qa"
