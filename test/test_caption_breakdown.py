"""`caption_breakdown`: Scan2Cap captions scored for naming the object's colour and label and for being exact,
on hand-made answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_training.synthetic_eval import caption_breakdown, caption_table

NEXT_TO = ["a pink stool next to the red plant.", "a pink stool."]
CONE = ["a green traffic cone."]


def _answers(path: Path, rows: list[tuple[list[str], str]]) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "gt_response": refs, "pred_response": pred}) + "\n"
                            for i, (refs, pred) in enumerate(rows)))
    return path


def test_caption_breakdown_reads_colour_and_label_off_the_plain_reference(tmp_path: Path) -> None:
    rows = [
        (NEXT_TO, "A pink stool."),  # exact (the plain reference), case ignored
        (NEXT_TO, "a pink stool next to the blue chair."),  # object right, relation wrong: not exact
        (NEXT_TO, "a red stool next to the red plant."),  # label only
        (CONE, "a green traffic cone"),  # two-word label, final full stop ignored: exact
        (CONE, "a green traffic"),  # colour only: the label is cut
        (CONE, ""),  # no caption (no detector box)
    ]
    b = caption_breakdown(_answers(tmp_path / "a.jsonl", rows))
    assert b == pytest.approx({"captions": 6, "colour": 4 / 6, "label": 4 / 6, "object": 3 / 6, "exact": 2 / 6})
    assert "| m | 6 | 66.7 | 66.7 | 50.0 | 33.3 |" in caption_table({"m": b})
    with pytest.raises(ValueError, match="no Scan2Cap answers"):
        caption_breakdown(_answers(tmp_path / "b.jsonl", []))
    with pytest.raises(ValueError, match="row 0: no plain reference"):
        caption_breakdown(_answers(tmp_path / "c.jsonl", [(["chair"], "a chair.")]))
