"""Chance and prior baselines of a benchmark split, scored with the same metrics as a model.

A model's number means little without the number that needs no model: these are the reference
rows of the embedded default model's results (docs/benchmarks.md) and of any synthetic-benchmark
experiment.

* ScanRefer, chance: the expected Acc@k of picking one candidate box uniformly at random (per
  question: the fraction of candidates with IoU >= k against the target), exact, not sampled.
* Multi3DRefer, chance: the expected F1@k of answering uniformly at random with one candidate or
  with "no object" (N + 1 equally likely answers), exact.
* ScanQA / SQA3D, prior: every question answered with the most frequent training answer of its
  question type (a blind, "language prior" baseline that knows the answer distribution).
* Scan2Cap, prior: every object captioned with the most frequent training caption, at the same
  input box as the model (so the IoU gate is the same).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from video3dllm_core.model.prompts import Task, parse_task
from video3dllm_training.data.annotations import Annotation
from video3dllm_training.metrics.boxes import _group_indices, iou_matrix, multi3drefer_query_f1

__all__ = ["chance_metrics"]

_THRESHOLDS = (0.25, 0.5)


def _grouped(values: Sequence[Mapping[str, float]], qtypes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-question scores averaged overall and per question type, in the grounding metrics' layout."""
    out = {}
    for group, idx in _group_indices(len(values), qtypes).items():
        stats = {key: float(np.mean([values[i][key] for i in idx])) for key in values[0]}
        stats["count"] = float(len(idx))
        out[group] = stats
    return out


def _candidates(boxes: Mapping[str, np.ndarray], ann: Annotation) -> np.ndarray:
    found = boxes.get(ann.scene_id)
    if found is None or len(found) == 0:
        raise ValueError(f"no candidate boxes for scene {ann.scene_id!r} (question {ann.id})")
    return np.asarray(found, dtype=np.float64)


def _most_common(values: Sequence[str]) -> str:
    """The most frequent value; ties go to the value seen first (deterministic)."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def chance_metrics(task: str | Task, annotations: Sequence[Annotation], boxes: Mapping[str, np.ndarray] | None = None,
                   train_annotations: Sequence[Annotation] = ()) -> dict[str, Any]:
    """The chance (grounding) or prior (text) baseline of ``annotations``, in the metric layout of
    ``video3dllm_training.evaluate.compute_metrics`` (see the module docstring for each rule).

    ``boxes`` ({scene_id: [N, 6]}) are the candidate boxes the model chooses from (grounding);
    ``train_annotations`` give the answer/caption priors (text tasks).
    """
    from video3dllm_training.evaluate import _answers_by_question, compute_metrics

    t = parse_task(task)
    items = [a for a in annotations if a.task is t]
    if not items:
        raise ValueError(f"no {t.value} annotations to score")
    qtypes = [str(a.question_type) for a in items]
    if t is Task.SCANREFER:
        if boxes is None:
            raise ValueError("scanrefer chance needs the candidate boxes")
        rows = []
        for a in items:
            ious = iou_matrix(_candidates(boxes, a), np.asarray(a.boxes[:1], dtype=np.float64))[:, 0]
            rows.append({f"acc@{k:g}": float(np.mean(ious >= k)) for k in _THRESHOLDS})
        return _grouped(rows, qtypes)
    if t is Task.MULTI3DREFER:
        if boxes is None:
            raise ValueError("multi3drefer chance needs the candidate boxes")
        rows = []
        for a in items:
            gt = np.asarray(a.boxes, dtype=np.float64).reshape(-1, 6)
            options = [c[None] for c in _candidates(boxes, a)] + [np.zeros((0, 6))]
            scores = [multi3drefer_query_f1(o, gt, _THRESHOLDS) for o in options]
            rows.append({f"f1@{k:g}": float(np.mean([s[k] for s in scores])) for k in _THRESHOLDS})
        return _grouped(rows, qtypes)
    train = [a for a in train_annotations if a.task is t]
    if not train:
        raise ValueError(f"the {t.value} prior needs training annotations of that task")
    overall = _most_common([a.answer for a in train])
    if t is Task.SCAN2CAP:
        records = [{"task": t.value, "sample_id": a.question_id, "question_type": a.question_type, "pred_response": overall,
                    "pred_box": list(a.box_input) if a.box_input else None, "gt_response": list(a.references),
                    "gt_box": list(a.gt_box) if a.gt_box else None} for a in items]
        return compute_metrics(t, records, meteor=False)
    by_type: dict[str, list[str]] = {}
    for a in train:
        by_type.setdefault(str(a.question_type), []).append(a.answer)
    prior = {q: _most_common(v) for q, v in by_type.items()}
    refs_of = _answers_by_question(items)  # ScanQA: one entry per answer, one prediction per question
    seen: set[str] = set()
    records = []
    for a in items:
        if a.question_id in seen:
            continue
        seen.add(a.question_id)
        refs = refs_of[a.question_id] if t is Task.SCANQA else a.answer
        records.append({"task": t.value, "sample_id": a.question_id, "question_type": a.question_type,
                        "upstream_question_type": a.raw.get("metadata", {}).get("upstream_question_type"),
                        "pred_response": prior.get(str(a.question_type), overall), "gt_response": refs})
    return compute_metrics(t, records, meteor=False)
