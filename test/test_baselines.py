"""Chance and prior baselines, checked against brute force through the benchmark metrics themselves."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from video3dllm_core.cli import main as cli_main
from video3dllm_training.baselines import chance_metrics
from video3dllm_training.data import load_box_file
from video3dllm_training.data.annotations import load_annotations
from video3dllm_training.metrics.boxes import multi3drefer_f1, scanrefer_accuracy
from video3dllm_training.metrics.qa import sqa3d_metrics

FILES = {"scanrefer": "scanrefer_vg", "multi3drefer": "multi3drefer", "scanqa": "scanqa", "sqa3d": "sqa3d",
         "scan2cap": "scan2cap"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    assert cli_main(["make-benchmark", str(out), "--scenes", "4", "--seed", "2", "--frames", "4", "--width", "48",
                     "--height", "36", "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    return out


def _anns(bench: Path, task: str, split: str) -> list:
    return load_annotations(bench / "processed" / f"{FILES[task]}_{split}_llava_style.json")


def test_grounding_chance_is_the_mean_over_every_possible_pick(bench: Path) -> None:
    boxes = load_box_file(bench / "metadata" / "scannet_val_gt_box.json")
    anns = _anns(bench, "scanrefer", "val")
    got = chance_metrics("scanrefer", anns, boxes)
    # brute force: score every candidate as the answer with the real metric, average per question
    per_question = []
    for a in anns:
        cands = boxes[a.scene_id]
        scores = [scanrefer_accuracy([c], [a.boxes[0]])["all"]["acc@0.25"] for c in cands]
        per_question.append(np.mean(scores))
    assert got["all"]["acc@0.25"] == pytest.approx(float(np.mean(per_question)), abs=1e-12)
    assert got["all"]["count"] == len(anns) and 0 < got["all"]["acc@0.25"] < 0.5
    assert set(got) == {"all"} | {str(a.question_type) for a in anns}

    multi = _anns(bench, "multi3drefer", "val")
    got_m = chance_metrics("multi3drefer", multi, boxes)
    per_query = []
    for a in multi:
        options = [[c] for c in boxes[a.scene_id]] + [[]]
        per_query.append(np.mean([multi3drefer_f1([o], [list(a.boxes)])["all"]["f1@0.5"] for o in options]))
    assert got_m["all"]["f1@0.5"] == pytest.approx(float(np.mean(per_query)), abs=1e-12)
    with pytest.raises(ValueError, match="candidate boxes"):
        chance_metrics("scanrefer", anns, None)


def test_text_priors_answer_the_most_common_training_answer_per_type(bench: Path) -> None:
    train, val = _anns(bench, "sqa3d", "train"), _anns(bench, "sqa3d", "val")
    got = chance_metrics("sqa3d", val, None, train)
    prior = {}
    for qtype in {str(a.question_type) for a in train}:
        counts = Counter(a.answer for a in train if str(a.question_type) == qtype)
        prior[qtype] = counts.most_common(1)[0][1]
    preds = []
    for a in val:
        answers = [b.answer for b in train if str(b.question_type) == str(a.question_type)]
        top = max(Counter(answers).values())
        preds.append(next(x for x in answers if Counter(answers)[x] == top))
    upstream = [str(a.raw["metadata"]["upstream_question_type"]) for a in val]
    expected = sqa3d_metrics(preds, [a.answer for a in val], upstream)
    assert got["em"] == expected["em"]
    qa = chance_metrics("scanqa", _anns(bench, "scanqa", "val"), None, _anns(bench, "scanqa", "train"))
    assert 0.0 <= qa["em"] <= 1.0 and "cider" in qa
    cap = chance_metrics("scan2cap", _anns(bench, "scan2cap", "val"), None, _anns(bench, "scan2cap", "train"))
    assert 0.0 <= cap["cider"] and "localised" in cap
    with pytest.raises(ValueError, match="training annotations"):
        chance_metrics("scanqa", _anns(bench, "scanqa", "val"), None, [])
