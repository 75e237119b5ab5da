"""Upstream `*_llava_style.json` annotations of the five tasks, read and validated.

Each file is a JSON list written by upstream's `scripts/3d/preprocessing/process_*.py`:

    {"id": ..., "video": "scannet/scene0000_00",
     "conversations": [{"from": "human", "value": "<image> ..."}, {"from": "gpt", "value": "..."}],
     "metadata": {"dataset": "scanrefer", "question_type": "unique", "object_id": 7, ...},
     ... task fields ...}

Task fields: ScanRefer `box` (one [cx, cy, cz, dx, dy, dz]) and `metadata.object_id` (int);
Multi3DRefer `box` (a list of boxes, possibly empty) and `metadata.object_id` (a list); Scan2Cap
`box_input` (the box whose centre is the `<coord>` location; null in validation when no proposal
matched), `gt_box` and, in validation, `annotations` (all reference captions); ScanQA one entry per
(question, answer) with id `scanqa_<question_id>_<k>`; SQA3D the situation inside the human turn and
`metadata.question_type`. `metadata.dataset` names the task (upstream spells ScanQA `scanQA`).

`load_data_mixture` reads upstream's data YAML (`datasets: [{json_path, sampling_strategy}]`,
sampling `all`, `first:N`, `end:N`, `random:N` or `N%`) with an optional per-file `weight`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from video3dllm_core.model.prompts import Task, parse_task

__all__ = ["Annotation", "load_annotations", "load_data_mixture", "task_of", "scene_id_of", "parse_annotation"]

Box = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Annotation:
    """One annotated sample, with the fields every task needs already validated.

    Attributes:
        id: the annotation's `id`, as a string.
        task: the benchmark task (from `metadata.dataset`).
        video: the upstream video id (`scannet/<scene_id>`); `scene_id` its last part.
        human: the human turn (`conversations[0].value`, with `<image>`).
        answer: the assistant turn (`conversations[1].value`): the answer, caption or `<ground>`.
        question_type: `metadata.question_type` (ScanRefer unique/multiple, Multi3DRefer eval
            type, SQA3D what/is/...), or None.
        object_ids: grounding targets (`metadata.object_id`; index into the scene's GT box list).
        anchor_ids: the object a relation description is to (`metadata.anchor_ids`, optional; same index),
            () when absent: what `video3dllm train --landmark-loss` trains the relation match's landmark on.
        boxes: the ground-truth boxes of a grounding sample (`box`), () when absent.
        box_input: Scan2Cap: the box given to the model (its centre enters at `<coord>`); None when
            no proposal matched (the sample is then answered with the empty caption).
        gt_box: Scan2Cap: the annotated object's box.
        references: reference answers/captions for the metrics (`annotations` for Scan2Cap
            validation, else the answer).
    """

    id: str
    task: Task
    video: str
    human: str
    answer: str
    question_type: str | None = None
    object_ids: tuple[int, ...] = ()
    anchor_ids: tuple[int, ...] = ()
    boxes: tuple[Box, ...] = ()
    box_input: Box | None = None
    gt_box: Box | None = None
    references: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def scene_id(self) -> str:
        return scene_id_of(self.video)

    @property
    def question_id(self) -> str:
        """ScanQA: the question id shared by the per-answer entries (`scanqa_<qid>_<k>` -> `scanqa_<qid>`)."""
        if self.task is Task.SCANQA and self.id.startswith("scanqa_") and self.id.rsplit("_", 1)[-1].isdigit():
            return self.id.rsplit("_", 1)[0]
        return self.id


def scene_id_of(video: str) -> str:
    """`scannet/scene0000_00` -> `scene0000_00` (a bare scene id is returned as it is)."""
    return video.rstrip("/").split("/")[-1]


def task_of(item: dict[str, Any], where: str = "annotation") -> Task:
    """The task of a raw annotation, from `metadata.dataset`."""
    meta = item.get("metadata")
    if not isinstance(meta, dict) or "dataset" not in meta:
        raise ValueError(f"{where}: missing field 'metadata.dataset' (one of scanrefer, multi3drefer, scan2cap, scanQA, sqa3d)")
    try:
        return parse_task(str(meta["dataset"]))
    except ValueError as exc:
        raise ValueError(f"{where}: field 'metadata.dataset': {exc}") from None


def _box(value: Any, where: str, name: str) -> Box:
    if not isinstance(value, (list, tuple)) or len(value) != 6:
        raise ValueError(f"{where}: field {name!r} must be 6 numbers [cx, cy, cz, dx, dy, dz], got {value!r}")
    try:
        nums = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} must hold numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in nums) or min(nums[3:]) < 0:
        raise ValueError(f"{where}: field {name!r} needs finite values and non-negative sizes, got {value!r}")
    return nums  # type: ignore[return-value]


def _ids(value: Any, where: str, name: str = "metadata.object_id") -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} must be an integer or a list of integers, got {value!r}") from None


def parse_annotation(item: Any, where: str = "annotation") -> Annotation:
    """Validate one raw annotation dict (errors name the entry and the field)."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    task = task_of(item, where)
    for key in ("id", "video", "conversations"):
        if key not in item:
            raise ValueError(f"{where}: missing field {key!r}")
    conv = item["conversations"]
    if (
        not isinstance(conv, list)
        or len(conv) < 2
        or not all(isinstance(c, dict) and "value" in c and "from" in c for c in conv[:2])
        or conv[0]["from"] != "human"
        or conv[1]["from"] != "gpt"
    ):
        raise ValueError(
            f"{where}: field 'conversations' must start with {{'from': 'human', 'value': ...}}, "
            "{'from': 'gpt', 'value': ...}"
        )
    human, answer = conv[0]["value"], conv[1]["value"]
    if not isinstance(human, str) or human.count("<image>") != 1:
        raise ValueError(f"{where}: field 'conversations[0].value' must be a string with exactly one <image>, got {human!r}")
    if not isinstance(answer, str):
        raise ValueError(f"{where}: field 'conversations[1].value' must be a string, got {answer!r}")
    meta = item["metadata"]
    qtype = meta.get("question_type")
    kwargs: dict[str, Any] = {}
    if task.is_grounding:
        if "object_id" not in meta:
            raise ValueError(f"{where}: grounding sample without field 'metadata.object_id' (the target object ids)")
        kwargs["object_ids"] = _ids(meta["object_id"], where)
        if meta.get("anchor_ids") is not None:
            kwargs["anchor_ids"] = _ids(meta["anchor_ids"], where, "metadata.anchor_ids")
        raw_box = item.get("box")
        if raw_box is not None:
            if task is Task.SCANREFER:
                kwargs["boxes"] = (_box(raw_box, where, "box"),)
            else:
                if not isinstance(raw_box, list):
                    raise ValueError(f"{where}: field 'box' of a multi3drefer sample must be a list of boxes")
                kwargs["boxes"] = tuple(_box(b, where, f"box[{i}]") for i, b in enumerate(raw_box))
        if task is Task.SCANREFER and len(kwargs["object_ids"]) != 1:
            raise ValueError(f"{where}: a scanrefer sample has exactly one 'metadata.object_id', got {meta['object_id']!r}")
    if task is Task.SCAN2CAP:
        if "box_input" not in item:
            raise ValueError(f"{where}: scan2cap sample without field 'box_input' (the box whose centre is <coord>)")
        kwargs["box_input"] = None if item["box_input"] is None else _box(item["box_input"], where, "box_input")
        if item.get("gt_box") is not None:
            kwargs["gt_box"] = _box(item["gt_box"], where, "gt_box")
        if "object_id" in meta:
            kwargs["object_ids"] = _ids(meta["object_id"], where)
        refs = item.get("annotations")
        if refs is not None:
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                raise ValueError(f"{where}: field 'annotations' must be a non-empty list of caption strings")
            kwargs["references"] = tuple(refs)
    if "references" not in kwargs:
        kwargs["references"] = (answer,)
    return Annotation(
        id=str(item["id"]),
        task=task,
        video=str(item["video"]),
        human=human,
        answer=answer,
        question_type=None if qtype is None else str(qtype),
        raw=item,
        **kwargs,
    )


def load_annotations(path: str | Path, tasks: Sequence[Task | str] | None = None) -> list[Annotation]:
    """Read an upstream llava_style annotation file (a JSON list); optionally keep only `tasks`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of annotations (upstream *_llava_style.json), got {type(data).__name__}")
    wanted = None if tasks is None else {parse_task(t) for t in tasks}
    out = []
    for i, item in enumerate(data):
        ann = parse_annotation(item, f"{p.name}[{i}]")
        if wanted is None or ann.task in wanted:
            out.append(ann)
    return out


def _apply_sampling(items: list[Annotation], strategy: str, rng: random.Random, where: str) -> list[Annotation]:
    """Upstream `sampling_strategy`: all | first:N | end:N | random:N, N an integer or a percentage."""
    if strategy == "all":
        return items
    name, sep, amount = strategy.partition(":")
    if not sep or name not in ("first", "end", "random"):
        raise ValueError(f"{where}: sampling_strategy {strategy!r} must be 'all', 'first:N', 'end:N' or 'random:N' (N or N%)")
    try:
        n = math.ceil(int(amount[:-1]) * len(items) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        raise ValueError(f"{where}: sampling_strategy {strategy!r}: N must be an integer or a percentage") from None
    if name == "first":
        return items[:n]
    if name == "end":
        return items[-n:] if n else []
    shuffled = list(items)
    rng.shuffle(shuffled)
    return shuffled[:n]


def load_data_mixture(path: str | Path, seed: int = 0) -> tuple[list[Annotation], dict[Task, float]]:
    """Annotations of an upstream data YAML (or a single annotation JSON) and per-task weights.

    YAML: `datasets: [{json_path: ..., sampling_strategy: all, weight: 1.0}, ...]`; relative
    paths are resolved against the YAML's folder first, then the working directory (upstream runs
    from the repository root). `weight` (ours, optional) is the task's sampling weight in
    `TaskBatchSampler`; tasks without one are sampled in proportion to their size.
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        return load_annotations(p), {}
    if not p.is_file():
        raise FileNotFoundError(f"data mixture file not found: {p}")
    import yaml

    spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
        raise ValueError(f"{p}: expected a mapping with a 'datasets' list (upstream data YAML)")
    rng = random.Random(seed)
    items: list[Annotation] = []
    weights: dict[Task, float] = {}
    for i, entry in enumerate(spec["datasets"]):
        where = f"{p.name}: datasets[{i}]"
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise ValueError(f"{where}: missing field 'json_path'")
        json_path = Path(entry["json_path"])
        if not json_path.is_absolute() and (p.parent / json_path).is_file():
            json_path = p.parent / json_path
        anns = _apply_sampling(load_annotations(json_path), str(entry.get("sampling_strategy", "all")), rng, where)
        if "weight" in entry:
            w = float(entry["weight"])
            if not w >= 0:
                raise ValueError(f"{where}: weight must be >= 0, got {entry['weight']!r}")
            for task in {a.task for a in anns}:
                weights[task] = w
        items.extend(anns)
    return items, weights
