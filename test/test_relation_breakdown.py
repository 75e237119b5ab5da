"""`relation_breakdown`: ScanRefer relation descriptions split into finding the named label and resolving
the relation, checked against counts made here from objects.json directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_training.synthetic_eval import relation_breakdown, relation_table


def _relations(bench: Path, split: str) -> list[dict]:
    anns = json.loads((bench / "processed" / f"scanrefer_vg_{split}_llava_style.json").read_text())
    return [a for a in anns if a["metadata"]["question_type"] == "relation"]


def _labels(bench: Path, video: str) -> list[str]:
    scene = video.removeprefix("scannet/")
    return [o["label"] for o in json.loads((bench / "posed_images" / scene / "objects.json").read_text())["objects"]]


def _answers(path: Path, bench: Path, anns: list[dict], pick) -> Path:  # type: ignore[no-untyped-def]
    rows = [{"sample_id": str(a["id"]), "scene_id": a["video"].removeprefix("scannet/"), "question_type": "relation",
             "pred_index": pick(a, _labels(bench, a["video"]))} for a in anns]
    rows.append({"sample_id": "x", "scene_id": "ignored", "question_type": "attribute", "pred_index": 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_relation_breakdown_counts_label_and_object(small_model_benchmark: Path, tmp_path: Path) -> None:
    bench, split = small_model_benchmark, "train"
    anns = _relations(bench, split)
    assert len(anns) >= 3
    chance = sum(1 / _labels(bench, a["video"]).count(_labels(bench, a["video"])[a["metadata"]["object_id"]])
                 for a in anns) / len(anns)

    right = relation_breakdown(bench, split, _answers(tmp_path / "right.jsonl", bench, anns,
                                                      lambda a, labels: a["metadata"]["object_id"]))
    assert right == pytest.approx({"descriptions": len(anns), "right_label": 1.0, "accuracy": 1.0,
                                   "accuracy_given_label": 1.0, "same_label_chance": chance})
    assert chance < 1.0  # relation targets have same-label neighbours

    def twin(a: dict, labels: list[str]) -> int:  # another object of the target's label where there is one
        want = a["metadata"]["object_id"]
        return next((i for i, label in enumerate(labels) if label == labels[want] and i != want), want)

    def other_label(a: dict, labels: list[str]) -> int:
        return next(i for i, label in enumerate(labels) if label != labels[a["metadata"]["object_id"]])

    twins = relation_breakdown(bench, split, _answers(tmp_path / "twin.jsonl", bench, anns, twin))
    alone = sum(_labels(bench, a["video"]).count(_labels(bench, a["video"])[a["metadata"]["object_id"]]) == 1
                for a in anns)
    assert twins["right_label"] == 1.0 and twins["accuracy"] == pytest.approx(alone / len(anns))
    wrong = relation_breakdown(bench, split, _answers(tmp_path / "wrong.jsonl", bench, anns, other_label))
    assert wrong["right_label"] == wrong["accuracy"] == wrong["accuracy_given_label"] == 0.0
    table = relation_table({"right": right, "wrong": wrong})
    assert "| right | 100.0 | 100.0 | 100.0 |" in table and "| wrong | 0.0 | 0.0 | 0.0 |" in table


def test_relation_breakdown_without_relation_answers_says_so(small_model_benchmark: Path, tmp_path: Path) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text(json.dumps({"sample_id": "0", "scene_id": "s", "question_type": "attribute", "pred_index": 0}) + "\n")
    with pytest.raises(ValueError, match="no ScanRefer answers with question_type 'relation'"):
        relation_breakdown(small_model_benchmark, "train", path)
