"""`multi_breakdown`: Multi3DRefer answers grouped by the number of targets, with empty answers and exact
sets counted on hand-made answers whose F1 is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_training.synthetic_eval import multi_breakdown, multi_table

A = [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
B = [3.0, 0.0, 0.5, 1.0, 1.0, 1.0]
A_SHIFTED = [0.5, 0.0, 0.5, 1.0, 1.0, 1.0]  # IoU 1/3 with A: a match at 0.25
FAR = [9.0, 9.0, 0.5, 1.0, 1.0, 1.0]


def _answers(path: Path, rows: list[tuple[list[list[float]], list[list[float]]]]) -> Path:
    path.write_text("".join(json.dumps({"gt_response": truth, "pred_response": pred}) + "\n" for truth, pred in rows))
    return path


def test_multi_breakdown_groups_by_target_count(tmp_path: Path) -> None:
    rows = [
        ([], []),  # none, answered nothing: right
        ([], [A]),  # none, an object: F1 0
        ([A], []),  # one, nothing
        ([A], [A_SHIFTED]),  # one, right at IoU 0.25
        ([A], [A, FAR]),  # one, found plus a wrong one: F1 2 * 1 / 3
        ([A, B], [A]),  # several, half: F1 2 * 1 / 3
        ([A, B], [B, A]),  # several, exact in another order
        ([A, B], []),  # several, nothing
    ]
    b = multi_breakdown(_answers(tmp_path / "a.jsonl", rows))
    assert b["none"] == pytest.approx({"descriptions": 2, "answered_nothing": 0.5, "exact": 0.5, "f1": 0.5})
    assert b["one"] == pytest.approx({"descriptions": 3, "answered_nothing": 1 / 3, "exact": 1 / 3,
                                      "f1": (0 + 1 + 2 / 3) / 3})
    assert b["several"] == pytest.approx({"descriptions": 3, "answered_nothing": 1 / 3, "exact": 1 / 3,
                                          "f1": (2 / 3 + 1 + 0) / 3})
    table = multi_table({"m": b})
    assert "| m | none | 2 | 50.0 | 50.0 | 50.0 |" in table and "| m | one | 3 | 33.3 | 33.3 | 55.6 |" in table
    only_one = multi_breakdown(_answers(tmp_path / "b.jsonl", [([A], [A])]))
    assert list(only_one) == ["one"]
    with pytest.raises(ValueError, match="no Multi3DRefer answers"):
        multi_breakdown(_answers(tmp_path / "c.jsonl", []))
