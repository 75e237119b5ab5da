"""The grounding head's relation match (ours, ``ground_relation_match``): its geometry against an independent
computation, where its score is added, that adding it changes nothing until it is trained, its checkpoint keys
and config key, and the training option that trains it alone."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _model_support import ground_scores_after_reload
from safetensors.torch import load_file

from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.config import ConfigError, Video3DLLMConfig
from video3dllm_core.model.grounding import (RELATION_FEATURES, GroundingHead, relation_features,
                                             standardise_over_candidates)
from video3dllm_core.model.prompts import build_input_ids
from video3dllm_training.init_model import add_attribute_match, add_relation_match
from video3dllm_training.trainer import configure_trainable

HUMAN = "<image>Identify the object according to the following description.\nThe box closest to the door."

# a room seen from above: a door on the west wall (x = -3), a box near it, a box across the room, a tall lamp
BOXES_M = np.array([
    [-3.0, 0.0, 1.0, 0.02, 0.9, 2.0],   # 0 door
    [-2.0, 1.0, 0.25, 0.5, 0.5, 0.5],   # 1 box, 1 m in, 1 m to the north
    [2.0, -1.5, 0.25, 0.5, 0.5, 0.5],   # 2 box, far east, south
    [1.0, 2.0, 0.6, 0.3, 0.3, 1.2],     # 3 lamp
])


def test_features_are_the_geometry_seen_from_the_landmark() -> None:
    weight = torch.tensor([1.0, 0.0, 0.0, 0.0])  # all attention on the door
    got = relation_features(torch.tensor(BOXES_M), weight).numpy()
    assert got.shape == (4, len(RELATION_FEATURES))
    door = BOXES_M[0, :2]
    facing = BOXES_M[:, :2].mean(0) - door  # the viewer at the door faces the mean candidate centre
    forward = facing / np.linalg.norm(facing)
    left = np.array([-forward[1], forward[0]])
    for i, (x, y, z, dx, dy, dz) in enumerate(BOXES_M):
        offset = np.array([x, y]) - door
        assert got[i, 0] == pytest.approx(math.hypot(*offset), abs=1e-3)  # distance_m
        assert got[i, 1] == pytest.approx(math.atan2(offset @ left, offset @ forward), abs=1e-5)  # bearing, left +
        assert got[i, 2] == pytest.approx(offset @ left, abs=1e-5)  # left offset
        assert got[i, 3] == pytest.approx(math.log(max(dx, 0.05) * max(dy, 0.05) * max(dz, 0.05)), abs=1e-5)
        assert got[i, 4] == pytest.approx(abs((z - dz / 2) - 2.0), abs=1e-5)  # bottom against the door's top (2 m)
    np.testing.assert_array_equal(got[:, 5], weight.numpy())
    # box 1 (north, y = +1) is on the left of a viewer at the west wall looking east; box 2 on the right
    assert got[1, 1] > 0 > got[2, 1]
    # a soft landmark is the weighted mean of the centres
    half = relation_features(torch.tensor(BOXES_M), torch.tensor([0.5, 0.5, 0.0, 0.0])).numpy()
    assert half[2, 0] == pytest.approx(np.linalg.norm(BOXES_M[2, :2] - BOXES_M[:2, :2].mean(0)), abs=1e-3)
    with pytest.raises(ValueError, match=r"landmark weights \(3,\) do not match 4 boxes"):
        relation_features(torch.tensor(BOXES_M), torch.ones(3) / 3)


def test_standardised_columns_have_zero_mean_and_unit_spread() -> None:
    x = torch.tensor([[1.0, 5.0], [2.0, 5.0], [6.0, 5.0]])
    z = standardise_over_candidates(x)
    expected = (x[:, 0] - x[:, 0].mean()) / (x[:, 0].std(unbiased=False) + 1e-3)
    torch.testing.assert_close(z[:, 0], expected)
    assert float(z[:, 1].abs().max()) == 0.0  # a constant column (one size for all) says nothing


def test_head_adds_the_relation_score_to_the_real_candidates_only() -> None:
    torch.manual_seed(0)
    head, plain = GroundingHead(8, relation_match=True), GroundingHead(8)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("relation.")})
    assert head.relation is not None
    head.relation.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.zero_target.normal_()
        plain.zero_target.copy_(head.zero_target)
    features, hidden, t, boxes = torch.randn(4, 8), torch.randn(1, 8), torch.randn(8), torch.tensor(BOXES_M).float()
    with torch.no_grad():
        fresh, cosine = head(features, hidden, text_mean=t, boxes_m=boxes), plain(features, hidden)
    torch.testing.assert_close(fresh.scores, cosine.scores, rtol=0, atol=0)  # zero weights: nothing added
    assert fresh.landmark is not None and float(fresh.landmark.sum()) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        head.relation.weights.bias.copy_(torch.tensor([-1.0, 0, 0, 0, 0, 0]))  # "closest": minus the distance
        out = head(features, hidden, text_mean=t, boxes_m=boxes)
    assert out.relation is not None and out.landmark is not None
    z = standardise_over_candidates(relation_features(boxes, out.landmark))
    expected = -z[:, 0] - (-z[:, 0]).max()  # the closest candidate keeps its cosine, the others drop
    torch.testing.assert_close(out.relation, expected)
    assert float(out.relation.max()) == 0.0 and int(out.relation.argmax()) == int(z[:, 0].argmin())
    torch.testing.assert_close(out.scores, cosine.scores + torch.cat([expected, torch.zeros(1)]))
    with pytest.raises(ValueError, match="pass text_mean and boxes_m"):
        head(features, hidden, text_mean=t)
    with pytest.raises(ValueError, match="has no relation match"):
        plain(features, hidden, boxes_m=boxes)
    with pytest.raises(ValueError, match="3 boxes for 4 candidates"):
        head(features, hidden, text_mean=t, boxes_m=boxes[:3])
    with torch.no_grad():  # no candidate at all: only the "no object" score, unchanged
        none = head(features[:0], hidden, text_mean=t, boxes_m=boxes[:0])
    assert none.scores.shape == (1,) and none.relation is not None and none.relation.shape == (0,)
    torch.testing.assert_close(none.scores, plain(features[:0], hidden).scores)


def test_an_added_relation_match_changes_nothing_until_trained_and_round_trips(small_init_model: Path, tmp_path: Path) -> None:
    model = Video3DLLM.from_pretrained(small_init_model, device="cpu")
    assert not model.config.ground_relation_match and model.ground_head is not None and model.ground_head.relation is None
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (2, 384, 384, 3), dtype=np.uint8)
    coords = rng.uniform(-3, 3, (2, 384, 384, 3)).astype(np.float32)
    ids = build_input_ids(model.tokenizer, "scanrefer", HUMAN, newline_after_image=False).input_ids
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        merged = model.build_inputs_embeds(ids, visual)
        before = model.ground(merged, model.object_features(visual, BOXES_M)).scores
        add_relation_match(model, seed=0)
        add_attribute_match(model, seed=0)  # both extensions together: each gets its inputs
        objects = model.object_features(visual, BOXES_M)
        added = model.ground(merged, objects)
    assert model.config.ground_relation_match and model.config.raw["ground_relation_match"] is True
    torch.testing.assert_close(added.scores, before, rtol=0, atol=0)
    torch.testing.assert_close(objects.boxes_m, torch.tensor(BOXES_M, dtype=torch.float32))
    with pytest.raises(ValueError, match="already has the relation match"):
        add_relation_match(model)
    assert model.ground_head is not None and model.ground_head.relation is not None
    with torch.no_grad():
        model.ground_head.relation.weights.weight.normal_(generator=torch.Generator().manual_seed(2))
        trained = model.ground(merged, objects)
    assert trained.relation is not None and float((trained.scores - before).abs().max()) > 1e-3
    saved = save_checkpoint(model, tmp_path / "with_relation")
    weights = load_file(str(saved / "model.safetensors"))
    assert weights["ground_head_relation_weights.weight"].shape == (len(RELATION_FEATURES), 2 * model.hidden_size)
    assert weights["ground_head_relation_landmark_out.weight"].shape == (model.hidden_size, 2 * model.hidden_size)
    assert "ground_head_relation_landmark.0.weight" in weights
    assert json.loads((saved / "config.json").read_text())["ground_relation_match"] is True
    torch.testing.assert_close(ground_scores_after_reload(saved, crops, coords, ids, BOXES_M), trained.scores)


def test_config_key_is_validated_by_name(small_init_model: Path) -> None:
    raw = json.loads((small_init_model / "config.json").read_text())
    with pytest.raises(ConfigError, match="ground_relation_match must be true or false"):
        Video3DLLMConfig.from_dict({**raw, "ground_relation_match": 1})
    with pytest.raises(ConfigError, match="ground_relation_match needs the grounding head"):
        Video3DLLMConfig.from_dict({**raw, "ground_relation_match": True, "ground_head_type": None})
    assert not Video3DLLMConfig.from_dict(raw).ground_relation_match


def test_training_the_relation_match_alone_changes_only_it(small_init_model: Path, tmp_path: Path,
                                                          train_head_extension_alone: Callable[[Path, str, Path], Path]) -> None:
    trained = train_head_extension_alone(small_init_model, "--relation-match", tmp_path / "s4")
    start, end = load_file(str(small_init_model / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert {k for k in set(end) - set(start)} == {k for k in end if k.startswith("ground_head_relation_")}
    for key, value in start.items():
        torch.testing.assert_close(end[key], value, rtol=0, atol=0, msg=key)
    assert float(end["ground_head_relation_weights.weight"].abs().max()) > 0  # trained away from its zero start
    assert json.loads((trained / "config.json").read_text())["ground_relation_match"] is True
    model = Video3DLLM.from_pretrained(trained, device="cpu")
    configure_trainable(model, False, False, False, tune_ground_head=False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("ground_head.relation.")}
