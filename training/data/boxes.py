"""Per-scene candidate boxes (`scannet_{split}_{gt,pred}_box.json`) and grounding targets.

Upstream keeps one JSON object per split and box source, `{"scannet/<scene_id>": [[cx, cy, cz,
dx, dy, dz], ...]}`: for training the ground-truth boxes, listed so that list index == ScanNet
objectId (upstream's `extract_gt_box.py` drops scenes whose ids are not 0..n-1), so a grounding
sample's `metadata.object_id` indexes its target directly; for validation the Mask3D proposals
(`extract_pred_box.py`), which the model ranks at evaluation time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from video3dllm_training.data.annotations import scene_id_of
from video3dllm_training.metrics.boxes import iou_matrix

__all__ = ["load_box_file", "write_box_file", "match_targets", "grounding_targets", "check_box_indices"]


def load_box_file(path: str | Path) -> dict[str, np.ndarray]:
    """`{scene_id: (N, 6) float64}` from a box JSON (keys `scannet/<scene>` or bare scene ids)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"box file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object {{'scannet/<scene_id>': [[cx, cy, cz, dx, dy, dz], ...]}}")
    out: dict[str, np.ndarray] = {}
    for key, boxes in data.items():
        arr = np.asarray(boxes if boxes else np.zeros((0, 6)), dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 6:
            raise ValueError(f"{p}: scene {key!r}: boxes must be a list of [cx, cy, cz, dx, dy, dz], got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr[:, 3:] < 0):
            raise ValueError(f"{p}: scene {key!r}: boxes need finite values and non-negative sizes")
        out[scene_id_of(key)] = arr
    return out


def write_box_file(path: str | Path, boxes: Mapping[str, np.ndarray | Sequence[Sequence[float]]], prefix: str = "scannet/") -> None:
    """Write `{prefix + scene_id: [[...6 floats...], ...]}` (upstream's key form by default)."""
    data = {f"{prefix}{scene_id_of(k)}": np.asarray(v, dtype=np.float64).reshape(-1, 6).tolist() for k, v in boxes.items()}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data), encoding="utf-8")


def match_targets(candidates: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, ...]:
    """Candidates that stand for the ground-truth boxes: for each GT box the best-IoU candidate with
    IoU >= `iou_threshold` (none when no candidate reaches it), duplicates removed, sorted.

    Used when the candidates are detector proposals (validation loss); with ground-truth candidates
    the targets are the object ids themselves.
    """
    cand = np.asarray(candidates, dtype=np.float64).reshape(-1, 6)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 6)
    if len(cand) == 0 or len(gt) == 0:
        return ()
    ious = iou_matrix(gt, cand)
    best = ious.argmax(axis=1)
    chosen = {int(b) for g, b in enumerate(best) if ious[g, b] >= iou_threshold}
    return tuple(sorted(chosen))


def check_box_indices(ids: Sequence[int], n: int, where: str, field: str) -> None:
    """Raise ValueError naming ``field`` and the ids outside a scene's ``n`` ground-truth boxes."""
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"{where}: {field} {list(bad)} outside the scene's {n} ground-truth boxes")


def grounding_targets(object_ids: Sequence[int], candidates: np.ndarray, gt_boxes: Sequence[Sequence[float]] | None,
                      boxes_are_gt: bool, where: str, iou_threshold: float = 0.5) -> tuple[int, ...]:
    """Indices of the target boxes among the candidates (empty = the "no object" target).

    Ground-truth candidates: `object_ids` index the list directly (upstream's `box_label`); when
    the annotation carries its boxes they must agree with the listed ones (a mismatch means the
    box file and the annotations come from different preprocessing runs). Detector candidates:
    `match_targets` against the annotation's boxes.
    """
    n = len(candidates)
    if boxes_are_gt:
        check_box_indices(object_ids, n, where, "metadata.object_id")
        if gt_boxes:
            listed = np.asarray(candidates, dtype=np.float64)[list(object_ids)]
            if listed.shape == np.asarray(gt_boxes).shape and not np.allclose(listed, np.asarray(gt_boxes), atol=1e-3):
                raise ValueError(
                    f"{where}: the annotation's 'box' differs from box file entries {list(object_ids)}; "
                    "the box file and the annotations come from different preprocessing runs"
                )
        return tuple(sorted(set(int(i) for i in object_ids)))
    if not gt_boxes:
        return ()
    return match_targets(candidates, np.asarray(gt_boxes), iou_threshold)
