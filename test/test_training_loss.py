"""Training losses: InfoNCE by hand, and the batched forward against the model's own paths.

The batched forward pads merged sequences of different lengths into one decoder call; its LM loss
must equal transformers' own causal-LM loss per sample (token-weighted), and its grounding loss the
InfoNCE of the scores `Video3DLLM.ground` computes on the unpadded sequence.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.constants import IGNORE_INDEX
from video3dllm_core.model.prompts import Task, human_turn
from video3dllm_training.data import DatasetConfig, SceneStore, Video3DDataset, load_box_file, load_data_mixture
from video3dllm_training.data.annotations import parse_annotation
from video3dllm_training.data.dataset import Collator, Sample, description_token_ids, grounding_description, with_spatial_instruction
from video3dllm_training.forward import batch_forward
from video3dllm_training.init_model import add_relation_match
from video3dllm_training.loss import description_recall_loss, infonce_loss
from video3dllm_training.synthetic_benchmark import make_benchmark

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"


def test_infonce_matches_a_hand_computation() -> None:
    scores = torch.tensor([0.2, 0.5, -0.1, 0.3])  # last = no object
    e = np.exp(np.array([0.2, 0.5, -0.1, 0.3]) / 0.07)
    assert math.isclose(float(infonce_loss(scores, [1])), -math.log(e[1] / e.sum()), rel_tol=1e-5)
    assert math.isclose(float(infonce_loss(scores, [0, 2])), -math.log((e[0] + e[2]) / e.sum()), rel_tol=1e-5)
    assert math.isclose(float(infonce_loss(scores, [])), -math.log(e[3] / e.sum()), rel_tol=1e-5)  # zero-target
    assert math.isclose(float(infonce_loss(scores, [1], temperature=1.0)), -math.log(np.exp(0.5) / np.exp(scores.numpy()).sum()),
                        rel_tol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        infonce_loss(scores, [7])


def test_description_recall_matches_a_hand_computation() -> None:
    logits = torch.tensor([1.0, -0.5, 2.0, 0.25, 0.0])
    log_p = np.log(np.exp(logits.numpy().astype(np.float64)) / np.exp(logits.numpy().astype(np.float64)).sum())
    assert math.isclose(float(description_recall_loss(logits, [2, 0])), -(log_p[2] + log_p[0]) / 2, rel_tol=1e-6)
    # minimised when the LM head spreads its mass evenly over the description's tokens
    even = torch.tensor([5.0, 5.0, -30.0, -30.0, -30.0])
    assert math.isclose(float(description_recall_loss(even, [0, 1])), math.log(2), rel_tol=1e-4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        description_recall_loss(logits, [5])
    with pytest.raises(ValueError, match="no tokens"):
        description_recall_loss(logits, [])


def test_the_description_is_the_line_after_the_grounding_instruction(model: Video3DLLM) -> None:
    human = "<image>\nIdentify the object according to the following description.\nThe red chair closest to the door.\n"
    assert grounding_description(human) == "The red chair closest to the door."
    ids = description_token_ids(model.tokenizer, human + " ")
    expected = model.tokenizer("The red chair closest to the door.", add_special_tokens=False).input_ids
    assert list(ids) == list(dict.fromkeys(expected)) and len(ids) == len(set(ids))
    # Multi3DRefer turns end with a fixed note: the description is still the line after the instruction
    multi = human_turn("multi3drefer", description="all the red objects.")
    assert grounding_description(multi) == "All the red objects."
    # with upstream's spatial instruction in front, and without any instruction line
    assert grounding_description(with_spatial_instruction(multi)) == "All the red objects."
    assert grounding_description("<image>\nThe tall lamp.") == "The tall lamp."
    with pytest.raises(ValueError, match="no description"):
        grounding_description("<image>\n  \n")
    with pytest.raises(ValueError, match="no description"):
        grounding_description("<image>Identify the object according to the following description.\n")


@pytest.fixture(scope="module")
def model() -> Video3DLLM:
    return Video3DLLM.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, model: Video3DLLM) -> dict[Task, Sample]:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_benchmark(out, scenes=2, seed=9, frames_per_scene=4, width=64, height=48, val_fraction=0.5)
    anns, _ = load_data_mixture(out / "multi.yaml")
    ds = Video3DDataset(anns, SceneStore(out / "posed_images"), model.tokenizer,
                        load_box_file(out / "metadata" / "scannet_train_gt_box.json"), DatasetConfig(frames_upbound=2))
    picked: dict[Task, Sample] = {}
    for i, a in enumerate(ds.annotations):
        if a.task not in picked and (a.task is not Task.MULTI3DREFER or len(a.object_ids) > 1):
            picked[a.task] = ds[i]
    return picked


def _reference_lm(model: Video3DLLM, s: Sample) -> tuple[float, int]:
    """transformers' own causal-LM loss on the unpadded merged sequence (mean, token count)."""
    visual = model.encode_frames(s.crop_rgb, s.world_coords, s.patch_world_coords)
    merged = model.build_inputs_embeds(s.input_ids.tolist(), visual, None if s.coord_xyz is None else s.coord_xyz.tolist())
    labels = s.labels.tolist()  # type: ignore[union-attr]
    p, n = merged.image_start, merged.image_end - merged.image_start  # type: ignore[operator]
    merged_labels = torch.tensor(labels[:p] + [IGNORE_INDEX] * n + labels[p + 1:])
    out = model.language_model(inputs_embeds=merged.embeds[None], labels=merged_labels[None])
    return float(out.loss), int((merged_labels[1:] != IGNORE_INDEX).sum())


def _reference_ground(model: Video3DLLM, s: Sample) -> float:
    from video3dllm_core.model.prompts import build_training_ids  # noqa: F401  (ids come from the sample)

    visual = model.encode_frames(s.crop_rgb, s.world_coords, s.patch_world_coords)
    merged = model.build_inputs_embeds(s.input_ids.tolist(), visual)
    scores = model.ground(merged, model.object_features(visual, s.boxes)).scores.numpy().astype(np.float64)
    e = np.exp(scores / 0.07)
    idx = list(s.ground_targets) if s.ground_targets else [len(scores) - 1]  # type: ignore[arg-type]
    return -math.log(e[idx].sum() / e.sum())


@torch.no_grad()
def test_batched_loss_equals_per_sample_references(model: Video3DLLM, samples: dict[Task, Sample]) -> None:
    order = [Task.SCANQA, Task.SCANREFER, Task.SCAN2CAP, Task.MULTI3DREFER, Task.SQA3D]
    batch = Collator()([samples[t] for t in order])
    assert len(set(batch.lengths)) > 1  # padding is exercised
    out = batch_forward(model, batch, ground_loss_scale=0.5)
    refs = {t: _reference_lm(model, samples[t]) for t in (Task.SCANQA, Task.SCAN2CAP, Task.SQA3D)}
    tokens = sum(n for _, n in refs.values())
    expected_lm = sum(loss * n for loss, n in refs.values()) / tokens
    expected_ground = (_reference_ground(model, samples[Task.SCANREFER]) + _reference_ground(model, samples[Task.MULTI3DREFER])) / 2
    assert out.lm_tokens == tokens and out.ground_samples == 2
    assert out.lm_loss is not None and out.ground_loss is not None
    assert math.isclose(out.lm_loss, expected_lm, rel_tol=1e-4)
    assert math.isclose(out.ground_loss, expected_ground, rel_tol=1e-4)
    assert math.isclose(float(out.loss), expected_lm + 0.5 * expected_ground, rel_tol=1e-4)
    # upstream: grounding samples carry no LM loss; asking for it adds their answer tokens
    with_lm = batch_forward(model, Collator()([samples[Task.SCANREFER]]), lm_loss_on_grounding=True)
    assert with_lm.lm_tokens > 0 and batch_forward(model, Collator()([samples[Task.SCANREFER]])).lm_tokens == 0


def _reference_recall(model: Video3DLLM, s: Sample) -> float:
    """Description recall from the unpadded sequence: log-softmax of the LM head at <ground>, mean over the words."""
    visual = model.encode_frames(s.crop_rgb, s.world_coords, s.patch_world_coords)
    merged = model.build_inputs_embeds(s.input_ids.tolist(), visual)
    hidden = model.run_decoder(merged).hidden_at(model.ground_position(merged))
    log_p = torch.log_softmax(model.logits(hidden).double(), dim=-1)
    assert s.description_ids
    return -float(log_p[list(s.description_ids)].mean())


@torch.no_grad()
def test_description_recall_loss_is_added_for_grounding_samples_only(model: Video3DLLM, samples: dict[Task, Sample]) -> None:
    order = [Task.SCANREFER, Task.SCANQA, Task.MULTI3DREFER]
    batch = Collator()([samples[t] for t in order])
    assert samples[Task.SCANQA].description_ids is None and samples[Task.SCANREFER].description_ids
    plain = batch_forward(model, batch)
    out = batch_forward(model, batch, description_loss_weight=0.25)
    expected = (_reference_recall(model, samples[Task.SCANREFER]) + _reference_recall(model, samples[Task.MULTI3DREFER])) / 2
    assert plain.description_loss is None and out.description_loss is not None
    assert math.isclose(out.description_loss, expected, rel_tol=1e-4)
    assert math.isclose(float(out.loss), float(plain.loss) + 0.25 * expected, rel_tol=1e-4)
    # the grounding and LM terms are unchanged by the auxiliary loss
    assert out.ground_loss == plain.ground_loss and out.lm_loss == plain.lm_loss


def test_loss_backpropagates_to_every_trained_part(model: Any, samples: dict[Task, Sample]) -> None:
    model.requires_grad_(True)
    try:
        batch = Collator()([samples[Task.SCANREFER], samples[Task.SCAN2CAP]])
        batch_forward(model, batch).loss.backward()
        for name in ("vision_tower.tower.encoder.layers.0.mlp.fc1.weight", "mm_projector.0.weight", "image_newline",
                     "language_model.model.layers.1.mlp.down_proj.weight", "ground_head.obj.0.weight", "ground_head.zero_target"):
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and float(grad.abs().sum()) > 0, name
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


@torch.no_grad()
def test_landmark_loss_is_the_relation_match_attention_on_the_anchor(model: Video3DLLM, samples: dict[Task, Sample],
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    relation = copy.deepcopy(model)
    add_relation_match(relation, seed=0)
    refer = samples[Task.SCANREFER]
    n = len(refer.boxes)  # type: ignore[arg-type]
    anchored = dataclasses.replace(refer, anchor_ids=(n - 1,))
    batch = Collator()([anchored, samples[Task.SCANQA]])
    assert batch.anchor_ids == [(n - 1,), ()]
    plain = batch_forward(relation, batch)
    out = batch_forward(relation, batch, landmark_loss_weight=0.5)
    visual = relation.encode_frames(refer.crop_rgb, refer.world_coords, refer.patch_world_coords)
    merged = relation.build_inputs_embeds(refer.input_ids.tolist(), visual)
    landmark = relation.ground(merged, relation.object_features(visual, refer.boxes)).landmark
    assert landmark is not None and landmark.shape == (n,)
    expected = -math.log(float(landmark[n - 1]) + 1e-6)
    assert math.isclose(float(out.loss), float(plain.loss) + 0.5 * expected, rel_tol=1e-4)
    assert out.ground_loss == plain.ground_loss
    # without anchors, or without a relation match, the weight adds nothing
    unanchored = Collator()([refer, samples[Task.SCANQA]])
    assert float(batch_forward(relation, unanchored, landmark_loss_weight=0.5).loss) == float(batch_forward(relation, unanchored).loss)
    assert float(batch_forward(model, batch, landmark_loss_weight=0.5).loss) == float(batch_forward(model, batch).loss)


def test_dataset_reads_anchor_ids_and_rejects_ones_outside_the_room(tmp_path: Path, model: Video3DLLM) -> None:
    out = tmp_path / "b"
    make_benchmark(out, scenes=2, seed=9, frames_per_scene=4, width=64, height=48, val_fraction=0.5)
    anns, _ = load_data_mixture(out / "multi.yaml")
    boxes = load_box_file(out / "metadata" / "scannet_train_gt_box.json")
    ds = Video3DDataset(anns, SceneStore(out / "posed_images"), model.tokenizer, boxes, DatasetConfig(frames_upbound=1))
    with_anchor = [i for i, a in enumerate(ds.annotations) if a.raw["metadata"].get("anchor_ids")]
    assert with_anchor, "the benchmark's relation descriptions carry anchor_ids"
    i = with_anchor[0]
    assert ds[i].anchor_ids == ds.annotations[i].anchor_ids == tuple(ds.annotations[i].raw["metadata"]["anchor_ids"])
    plain = next(i for i, a in enumerate(ds.annotations) if a.task.is_grounding and "anchor_ids" not in a.raw["metadata"])
    assert ds[plain].anchor_ids == ds.annotations[plain].anchor_ids == ()
    ds.annotations[i] = dataclasses.replace(ds.annotations[i], anchor_ids=(99,))
    with pytest.raises(ValueError, match=r"metadata.anchor_ids \[99\] outside the scene's \d+ ground-truth boxes"):
        ds[i]
    bad = {**ds.annotations[i].raw, "metadata": {**ds.annotations[i].raw["metadata"], "anchor_ids": ["door"]}}
    with pytest.raises(ValueError, match=r"field 'metadata.anchor_ids' must be an integer or a list of integers"):
        parse_annotation(bad, "x")
