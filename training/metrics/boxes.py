"""Box-based benchmark metrics: axis-aligned 3D IoU, ScanRefer Acc@kIoU, Multi3DRefer F1@kIoU.

Definitions follow the Video-3D LLM evaluation scripts (LaVi-Lab/Video-3D-LLM,
`llava/eval/box_utils.py`, `eval_scanrefer.py`, `eval_multi3drefer.py`), which in turn follow
ScanRefer and M3DRef-CLIP. Boxes are `(cx, cy, cz, sx, sy, sz)`: centre and full size in metres,
axis-aligned in the scene frame.

Upstream details kept on purpose (they decide threshold cases, so parity needs them):

* IoU = V_inter / (V_a + V_b - V_inter + 1e-8). The 1e-8 makes an IoU of exactly 0.5 count as
  slightly below 0.5, and makes two zero-volume boxes score 0 instead of 0/0.
* Thresholds are inclusive (`iou >= k`).
* Multi3DRefer: per query, the IoU matrix is held in float32 and padded to a square with zeros;
  Hungarian matching (scipy `linear_sum_assignment`) maximises the summed IoU; a matched pair is a
  true positive at k when its IoU >= k; F1 = 2 TP / (#pred + #gt). Zero-target queries: F1 = 1
  when the prediction is empty too, else 0; a non-empty target with an empty prediction scores 0.
  The benchmark score is the mean of the per-query F1 over queries (per question type as well).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from video3dllm_core.geometry import box_min_max

__all__ = [
    "IOU_EPS",
    "as_boxes",
    "box3d_iou",
    "iou_matrix",
    "scanrefer_accuracy",
    "multi3drefer_query_f1",
    "multi3drefer_f1",
]

IOU_EPS = 1e-8  # upstream box3d_iou's denominator guard


def as_boxes(boxes: object, name: str = "boxes") -> np.ndarray:
    """Return `boxes` as a float64 (N, 6) array of (centre, size); raise ValueError naming `name`.

    Accepts a single 6-vector (returned as shape (1, 6)), an (N, 6) array-like, or an empty
    sequence (shape (0, 6)). Sizes must be finite and non-negative.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 6), dtype=np.float64)
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(
            f"{name} must be boxes of 6 numbers (cx, cy, cz, sx, sy, sz), got shape {np.asarray(boxes).shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values (NaN/inf); every box needs a finite centre and size")
    if np.any(arr[:, 3:] < 0):
        bad = int(np.argmax(np.any(arr[:, 3:] < 0, axis=1)))
        which = name if single else f"{name}[{bad}]"
        raise ValueError(f"{which} has a negative size {arr[bad, 3:].tolist()}; sizes are full edge lengths >= 0")
    return arr


def iou_matrix(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise axis-aligned IoU, shape (len(a), len(b)), with upstream's +1e-8 in the denominator.

    Corners come from the shared `video3dllm_core.geometry.box_min_max`; only the epsilon differs
    from `geometry.pairwise_box_iou_3d` (which returns the exact ratio), and it decides threshold
    ties, so the benchmark metrics use this function.
    """
    a_min, a_max = box_min_max(as_boxes(boxes_a, "boxes_a")[:, None, :])
    b_min, b_max = box_min_max(as_boxes(boxes_b, "boxes_b")[None, :, :])
    edges = np.maximum(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0.0)
    inter = np.prod(edges, axis=-1)
    vol_a = np.prod(a_max - a_min, axis=-1)
    vol_b = np.prod(b_max - b_min, axis=-1)
    result: np.ndarray = inter / (vol_a + vol_b - inter + IOU_EPS)
    return result


def box3d_iou(box_a: object, box_b: object) -> float:
    """IoU of two axis-aligned boxes given as (cx, cy, cz, sx, sy, sz)."""
    return float(iou_matrix(as_boxes(box_a, "box_a")[:1], as_boxes(box_b, "box_b")[:1])[0, 0])


def _check_lengths(name_a: str, a: Sequence[object], name_b: str, b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}; they must be aligned per query")


def _group_indices(n: int, question_types: Sequence[str] | None) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    groups["all"] = list(range(n))
    if question_types is not None:
        for i, qtype in enumerate(question_types):
            groups[str(qtype)].append(i)
    return dict(groups)


def _threshold_key(prefix: str, k: float) -> str:
    return f"{prefix}@{k:g}"


def scanrefer_accuracy(
    pred_boxes: Sequence[object],
    gt_boxes: Sequence[object],
    question_types: Sequence[str] | None = None,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, dict[str, float]]:
    """ScanRefer Acc@kIoU: the fraction of queries whose predicted box has IoU >= k with the target.

    Returns `{group: {"acc@0.25": .., "acc@0.5": .., "count": n}}` with group "all" plus one per
    distinct question type (ScanRefer: "unique" / "multiple"). Values are fractions in [0, 1]
    (papers report x100).
    """
    _check_lengths("pred_boxes", pred_boxes, "gt_boxes", gt_boxes)
    if question_types is not None:
        _check_lengths("question_types", question_types, "gt_boxes", gt_boxes)
    if len(gt_boxes) == 0:
        raise ValueError("scanrefer_accuracy needs at least one query")
    pred = as_boxes([as_boxes(p, f"pred_boxes[{i}]")[0] for i, p in enumerate(pred_boxes)], "pred_boxes")
    gt = as_boxes([as_boxes(g, f"gt_boxes[{i}]")[0] for i, g in enumerate(gt_boxes)], "gt_boxes")
    ious = np.array([iou_matrix(pred[i : i + 1], gt[i : i + 1])[0, 0] for i in range(len(gt))])
    out: dict[str, dict[str, float]] = {}
    for group, idx in _group_indices(len(gt), question_types).items():
        stats = {_threshold_key("acc", k): float(np.mean(ious[idx] >= k)) for k in thresholds}
        stats["count"] = float(len(idx))
        out[group] = stats
    return out


def multi3drefer_query_f1(pred_boxes: object, gt_boxes: object, thresholds: Sequence[float] = (0.25, 0.5)) -> dict[float, float]:
    """Per-query F1 at each IoU threshold (see module docstring for the exact rule)."""
    pred = as_boxes(pred_boxes, "pred_boxes")
    gt = as_boxes(gt_boxes, "gt_boxes")
    n_pred, n_gt = len(pred), len(gt)
    if n_pred == 0 and n_gt == 0:
        return {k: 1.0 for k in thresholds}
    if n_pred == 0 or n_gt == 0:
        return {k: 0.0 for k in thresholds}
    side = max(n_pred, n_gt)
    square = np.zeros((side, side), dtype=np.float32)  # upstream keeps the IoU matrix in float32
    square[:n_pred, :n_gt] = iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-square)
    matched = square[rows, cols]
    return {k: 2.0 * float(np.sum(matched >= k)) / (n_pred + n_gt) for k in thresholds}


def multi3drefer_f1(
    pred_boxes: Sequence[object],
    gt_boxes: Sequence[object],
    question_types: Sequence[str] | None = None,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, dict[str, float]]:
    """Multi3DRefer F1@kIoU: mean per-query F1, overall and per question type.

    `pred_boxes[i]` / `gt_boxes[i]` are the (possibly empty) box lists of query i. Question types
    are Multi3DRefer's eval types ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt").
    Returns `{group: {"f1@0.25": .., "f1@0.5": .., "count": n}}`, fractions in [0, 1].
    """
    _check_lengths("pred_boxes", pred_boxes, "gt_boxes", gt_boxes)
    if question_types is not None:
        _check_lengths("question_types", question_types, "gt_boxes", gt_boxes)
    if len(gt_boxes) == 0:
        raise ValueError("multi3drefer_f1 needs at least one query")
    per_query = []
    for i, (p, g) in enumerate(zip(pred_boxes, gt_boxes)):
        try:
            per_query.append(multi3drefer_query_f1(p, g, thresholds))
        except ValueError as exc:
            raise ValueError(f"query {i}: {exc}") from None
    out: dict[str, dict[str, float]] = {}
    for group, idx in _group_indices(len(gt_boxes), question_types).items():
        stats = {_threshold_key("f1", k): float(np.mean([per_query[i][k] for i in idx])) for k in thresholds}
        stats["count"] = float(len(idx))
        out[group] = stats
    return out
