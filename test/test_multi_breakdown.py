"""`multi_breakdown` / `multi_kind_breakdown`: Multi3DRefer answers grouped by the number of targets or by
what the description names, with empty answers and exact sets counted on hand-made answers whose F1 is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_core.model.prompts import GROUNDING_INSTRUCTION, MULTI3DREFER_NOTE
from video3dllm_training.synthetic_eval import multi_breakdown, multi_kind, multi_kind_breakdown, multi_kind_table, multi_table

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


def test_multi_kind_names_the_generator_templates() -> None:
    assert multi_kind("All the pink objects.") == "colour"
    assert multi_kind("all the chairs.") == "label"
    assert multi_kind("All the teal traffic cones.") == "colour + label"
    assert multi_kind("All the round objects.") == "shape"
    assert multi_kind("All the objects on the green table.") == "on"
    assert multi_kind("All the objects within 1.5 metres of the door.") == "within"
    assert multi_kind("All the objects near the door.") == "other"
    with pytest.raises(ValueError, match="not a synthetic Multi3DRefer description"):
        multi_kind("The chair closest to the door.")


def test_multi_kind_breakdown_groups_by_what_the_description_names(tmp_path: Path) -> None:
    def human(description: str) -> str:
        return f"<image>{GROUNDING_INSTRUCTION}\n{description}\n{MULTI3DREFER_NOTE}"

    rows = [  # (scene, description, truth, answer, candidate scores + no-object score)
        ("s1", human("All the pink objects."), [A], [], [0.5, 0.2, 0.9]),  # colour, nothing answered
        ("s1", human("All the yellow objects."), [], [], [0.5, 0.3, 0.9]),  # colour, none meant: right
        ("s2", human("All the green objects."), [], [], [0.1, 0.9]),  # colour, alone in its room
        ("s1", human("All the chairs."), [A, B], [A], [0.9, 0.1, 0.2]),  # label, half: F1 2/3
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"scene_id": s, "prompt": p, "gt_response": t, "pred_response": a, "scores": c})
                            + "\n" for s, p, t, a, c in rows))
    b = multi_kind_breakdown(path)
    assert list(b) == ["colour", "label"]
    assert b["colour"] == pytest.approx({"descriptions": 3, "with_targets": 1, "answered_nothing": 1.0, "exact": 2 / 3,
                                         "f1": 2 / 3, "score_change": 0.1})  # the one pair in one room: |0.3 - 0.2|
    assert b["label"] == pytest.approx({"descriptions": 1, "with_targets": 1, "answered_nothing": 0.0, "exact": 0.0,
                                        "f1": 2 / 3, "score_change": None})
    table = multi_kind_table({"m": b})
    assert "| m | colour | 3 (1) | 100.0 | 66.7 | 66.7 | 0.100 |" in table and "| m | label | 1 (1) | 0.0 | 0.0 | 66.7 | - |" in table
