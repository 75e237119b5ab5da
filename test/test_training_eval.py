"""`video3dllm eval` machinery: resumable answers, ScanQA question grouping, prefix reuse = full path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from video3dllm_core.model import Video3DLLM, select_scanrefer
from video3dllm_core.model.prompts import Task, build_input_ids, human_turn
from video3dllm_training.data import SceneStore
from video3dllm_training.data.annotations import parse_annotation
from video3dllm_training.evaluate import EvalConfig, evaluate, read_answers, unique_questions
from video3dllm_training.synthetic_benchmark import make_benchmark

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_benchmark(out, scenes=2, seed=4, frames_per_scene=4, width=64, height=48, val_fraction=0.5)
    return out


@pytest.fixture(scope="module")
def model() -> Video3DLLM:
    return Video3DLLM.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


def _cfg(bench: Path, task: str, answers: Path, **kw: Any) -> EvalConfig:
    stem = {"scanrefer": "scanrefer_vg"}.get(task, task)
    base: dict[str, Any] = dict(task=task, model=str(CKPT), annotations=str(bench / "processed" / f"{stem}_val_llava_style.json"),
                                posed_images=str(bench / "posed_images"), answers=str(answers),
                                boxes=str(bench / "metadata" / "scannet_val_pred_box.json"), frames_upbound=2,
                                max_new_tokens=3, meteor=False, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_answers_resume_and_survive_a_torn_last_line(bench: Path, model: Video3DLLM, tmp_path: Path) -> None:
    answers = tmp_path / "a" / "sqa3d.jsonl"
    first = evaluate(_cfg(bench, "sqa3d", answers, limit=2), model=model)
    assert (first.answered, first.skipped, first.total) == (2, 0, 2)
    with open(answers, "a") as f:
        f.write('{"sample_id": "torn by a crash')
    assert len(read_answers(answers)) == 2 and not answers.read_text().endswith("crash")
    second = evaluate(_cfg(bench, "sqa3d", answers, limit=6), model=model)  # the first 6 questions, 2 of them done
    n = 6
    assert len(json.loads((bench / "processed" / "sqa3d_val_llava_style.json").read_text())) > n
    assert (second.answered, second.skipped, second.total) == (n - 2, 2, n)
    ids = [r["sample_id"] for r in read_answers(answers)]
    assert len(ids) == len(set(ids)) == n
    metrics = json.loads(answers.with_suffix(".metrics.json").read_text())
    assert metrics["questions"] == n and metrics["metrics"]["count"]["all"] == n


def test_scanqa_questions_are_answered_once_with_all_references() -> None:
    def item(i: int, answer: str) -> dict[str, Any]:
        return {"id": f"scanqa_val-scene0000-5_{i}", "video": "scannet/scene0000_00",
                "conversations": [{"from": "human", "value": human_turn("scanqa", question="Where?")}, {"from": "gpt", "value": answer}],
                "metadata": {"dataset": "scanQA", "question_type": "unknow"}}
    anns = [parse_annotation(item(0, "left")), parse_annotation(item(1, "on the left"))]
    assert [a.question_id for a in unique_questions(anns)] == ["scanqa_val-scene0000-5"]


def test_grounding_with_a_shared_prefix_equals_the_full_path(bench: Path, model: Video3DLLM, tmp_path: Path) -> None:
    answers = tmp_path / "scanrefer.jsonl"
    result = evaluate(_cfg(bench, "scanrefer", answers, limit=4, batch_size=2), model=model)
    assert result.answered == 4 and set(result.metrics["all"]) == {"acc@0.25", "acc@0.5", "count"}
    records = read_answers(answers)
    store = SceneStore(bench / "posed_images")
    boxes = {k.split("/")[-1]: np.asarray(v) for k, v in json.loads((bench / "metadata" / "scannet_val_pred_box.json").read_text()).items()}
    anns = json.loads((bench / "processed" / "scanrefer_vg_val_llava_style.json").read_text())
    for rec, ann in zip(records, anns):
        frames = store.frames(rec["scene_id"], "uniform", 2)
        assert rec["frames"] == [f.name for f in frames]
        with torch.no_grad():
            visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]))
            ids = build_input_ids(model.tokenizer, Task.SCANREFER, ann["conversations"][0]["value"]).input_ids
            scores = model.ground(model.build_inputs_embeds(ids, visual), model.object_features(visual, boxes[rec["scene_id"]])).scores
        np.testing.assert_allclose(rec["scores"], scores.numpy(), atol=2e-5)
        index, _ = select_scanrefer(scores)
        assert rec["pred_index"] == index
        np.testing.assert_allclose(rec["pred_response"], boxes[rec["scene_id"]][index])
        np.testing.assert_allclose(rec["gt_response"], ann["box"])


def test_the_prompt_layout_follows_the_model_config_unless_overridden(bench: Path, model: Video3DLLM, tmp_path: Path) -> None:
    """newline_after_image None -> the config's prompt_newline_after_image (the fixture: upstream's newline);
    False -> the training layout; the recorded scores are the model's on exactly those ids."""
    assert model.config.prompt_newline_after_image is True
    anns = json.loads((bench / "processed" / "scanrefer_vg_val_llava_style.json").read_text())
    store = SceneStore(bench / "posed_images")
    boxes = {k.split("/")[-1]: np.asarray(v) for k, v in json.loads((bench / "metadata" / "scannet_val_pred_box.json").read_text()).items()}
    scores_by_layout = {}
    for newline in (None, False):
        answers = tmp_path / f"{newline}.jsonl"
        evaluate(_cfg(bench, "scanrefer", answers, limit=1, newline_after_image=newline), model=model)
        rec = read_answers(answers)[0]
        frames = store.frames(rec["scene_id"], "uniform", 2)
        with torch.no_grad():
            visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]))
            ids = build_input_ids(model.tokenizer, Task.SCANREFER, anns[0]["conversations"][0]["value"],
                                  newline_after_image=newline is None).input_ids
            scores = model.ground(model.build_inputs_embeds(ids, visual), model.object_features(visual, boxes[rec["scene_id"]])).scores
        np.testing.assert_allclose(rec["scores"], scores.numpy(), atol=2e-5)
        scores_by_layout[newline] = rec["scores"]
    assert scores_by_layout[None] != scores_by_layout[False]


def test_sqa3d_metrics_split_by_the_upstream_question_type_when_the_benchmark_has_its_own() -> None:
    from video3dllm_training.evaluate import compute_metrics

    rows = [
        {"task": "sqa3d", "pred_response": "left", "gt_response": "left", "question_type": "relation",
         "upstream_question_type": "which"},
        {"task": "sqa3d", "pred_response": "two", "gt_response": "three", "question_type": "count",
         "upstream_question_type": "how"},
        {"task": "sqa3d", "pred_response": "red", "gt_response": "red", "question_type": "what"},  # upstream data
    ]
    metrics = compute_metrics("sqa3d", rows)
    assert metrics["em"] == {"all": 2 / 3, "which": 1.0, "how": 0.0, "what": 1.0}
    assert metrics["count"]["all"] == 3


def test_scan2cap_listener_decoding_hears_the_scene_boxes_in_the_eval_layout(bench: Path, model: Video3DLLM,
                                                                               tmp_path: Path) -> None:
    """`caption_decoding="listener"`: the caption is `generate_with_listener` over the box file's boxes (plus the input
    box when it is not one of them) with the eval's ScanRefer prompt as listener; the metrics file records the
    settings; greedy stays greedy; beams and the listener do not mix."""
    from video3dllm_core.model.listener_decoding import ListenerDecoding
    from video3dllm_training.evaluate import listener_candidates

    listened = evaluate(_cfg(bench, "scan2cap", tmp_path / "l.jsonl", limit=2, caption_decoding="listener"), model=model)
    greedy = evaluate(_cfg(bench, "scan2cap", tmp_path / "g.jsonl", limit=2, caption_decoding="greedy"), model=model)
    assert listened.total == greedy.total == 2
    assert json.loads((tmp_path / "l.metrics.json").read_text())["caption_decoding"] == {"mode": "listener",
                                                                                         **ListenerDecoding().to_dict()}
    assert json.loads((tmp_path / "g.metrics.json").read_text())["caption_decoding"] is None
    boxes = {k.split("/")[-1]: np.asarray(v) for k, v in json.loads((bench / "metadata" / "scannet_val_pred_box.json").read_text()).items()}
    store = SceneStore(bench / "posed_images")
    newline = model.config.prompt_newline_after_image
    for rec, greedy_rec in zip(read_answers(tmp_path / "l.jsonl"), read_answers(tmp_path / "g.jsonl")):
        box_input = rec["pred_box"]
        frames = store.frames(rec["scene_id"], "uniform", 2)
        candidates, target = listener_candidates(boxes[rec["scene_id"]], box_input)
        with torch.no_grad():
            visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]))
            ids = build_input_ids(model.tokenizer, Task.SCAN2CAP, rec["prompt"], newline_after_image=newline).input_ids

            def ground_ids(text: str) -> list[int]:
                return build_input_ids(model.tokenizer, Task.SCANREFER, human_turn(Task.SCANREFER, description=text),
                                       newline_after_image=newline).input_ids

            merged = model.build_inputs_embeds(ids, visual, coord_xyz=box_input[:3])
            out = model.generate_with_listener(merged, visual, model.object_features(visual, candidates), target, ground_ids,
                                               ListenerDecoding(), max_new_tokens=3)
            plain = model.generate(merged, max_new_tokens=3)
        assert rec["pred_response"] == model.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()
        assert greedy_rec["pred_response"] == model.tokenizer.decode(plain.token_ids, skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="use num_beams=1 with it"):
        evaluate(_cfg(bench, "scan2cap", tmp_path / "b.jsonl", limit=1, caption_decoding="listener", num_beams=2), model=model)
