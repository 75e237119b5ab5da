"""The grounding head's attribute match (ours, ``ground_attribute_match``): its numbers against an independent
computation, where it is added, that adding it changes nothing until it is trained, its checkpoint keys, the
text it reads, and the training option that trains it alone."""

from __future__ import annotations

import json
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
from video3dllm_core.model.grounding import ATTRIBUTE_MATCH_WIDTH, AttributeMatch, GroundingHead
from video3dllm_core.model.prompts import build_input_ids
from video3dllm_training.init_model import add_attribute_match
from video3dllm_training.trainer import configure_trainable

HUMAN = "<image>Identify the object according to the following description.\nThe pink stool."


def _layer_norm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _visual_inputs(model: Video3DLLM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (2, 384, 384, 3), dtype=np.uint8)
    coords = rng.uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 0.0, 2.5, 2.5, 2.5], [0.5, 0.5, 0.0, 1.0, 1.0, 2.5], [-0.5, 0.0, 0.0, 1.0, 2.5, 2.5]])
    return crops, coords, boxes


def test_match_is_the_bilinear_form_of_the_layer_normalised_means() -> None:
    torch.manual_seed(0)
    match = AttributeMatch(12, 5, width=4)
    with torch.no_grad():
        match.obj.weight.normal_()
    t, o = torch.randn(12), torch.randn(3, 5)
    a, b = match.text.weight.detach().double().numpy(), match.obj.weight.detach().double().numpy()
    expected = (_layer_norm(o.double().numpy()) @ b.T) @ (a @ _layer_norm(t.double().numpy()))
    np.testing.assert_allclose(match(t, o).detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"text_mean \[H\] and tower_mean \[N, W\]"):
        match(t[None], o)


def test_head_adds_the_match_to_the_real_candidates_only() -> None:
    torch.manual_seed(1)
    head, plain = GroundingHead(8, match_tower_width=5), GroundingHead(8)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("match.")})
    assert head.match is not None and head.match.text.weight.shape == (ATTRIBUTE_MATCH_WIDTH, 8)
    with torch.no_grad():
        head.zero_target.normal_()
        plain.zero_target.copy_(head.zero_target)
        head.match.obj.weight.normal_()
    features, hidden, t, o = torch.randn(3, 8), torch.randn(1, 8), torch.randn(8), torch.randn(3, 5)
    with torch.no_grad():
        out, cosine = head(features, hidden, text_mean=t, tower_mean=o), plain(features, hidden)
    assert out.match is not None and cosine.match is None
    torch.testing.assert_close(out.scores, cosine.scores + torch.cat([head.match(t, o).detach(), torch.zeros(1)]))
    assert float(out.match.abs().min()) > 0  # the last score (no object) is the plain one
    assert float(out.scores[-1]) == float(cosine.scores[-1])
    with pytest.raises(ValueError, match="pass text_mean and tower_mean"):
        head(features, hidden)
    with pytest.raises(ValueError, match="has no attribute match"):
        plain(features, hidden, text_mean=t, tower_mean=o)
    with pytest.raises(ValueError, match="2 rows for 3 candidates"):
        head(features, hidden, text_mean=t, tower_mean=o[:2])


def test_an_added_match_changes_nothing_until_trained_and_round_trips(small_init_model: Path, tmp_path: Path) -> None:
    model = Video3DLLM.from_pretrained(small_init_model, device="cpu")
    assert not model.config.ground_attribute_match and model.ground_head is not None and model.ground_head.match is None
    crops, coords, boxes = _visual_inputs(model)
    ids = build_input_ids(model.tokenizer, "scanrefer", HUMAN, newline_after_image=False).input_ids
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        merged = model.build_inputs_embeds(ids, visual)
        before = model.ground(merged, model.object_features(visual, boxes)).scores
        add_attribute_match(model, seed=0)
        objects = model.object_features(visual, boxes)
        assert objects.tower_mean is not None and objects.tower_mean.shape == (3, model.config.mm_hidden_size)
        added = model.ground(merged, objects)
    assert model.config.ground_attribute_match and model.config.raw["ground_attribute_match"] is True
    torch.testing.assert_close(added.scores, before, rtol=0, atol=0)  # the object side starts at zero
    with pytest.raises(ValueError, match="already has the attribute match"):
        add_attribute_match(model)
    # the tower mean is the mean tower feature of each box's selected patches (zeros when none is selected)
    mask = objects.patch_mask.reshape(3, -1)
    siglip = visual.siglip.reshape(-1, visual.siglip.shape[-1])
    assert objects.num_selected[0] > 0 and objects.num_selected[1] == 0
    for i in range(3):
        expected = siglip[mask[i]].mean(0) if bool(mask[i].any()) else torch.zeros(siglip.shape[-1])
        torch.testing.assert_close(objects.tower_mean[i], expected)
    assert model.ground_head is not None and model.ground_head.match is not None
    with torch.no_grad():
        model.ground_head.match.obj.weight.normal_(generator=torch.Generator().manual_seed(2))
        trained = model.ground(merged, objects)
    assert trained.match is not None and float((trained.scores - before).abs().max()) > 1e-3
    torch.testing.assert_close(trained.scores, before + torch.cat([trained.match, torch.zeros(1)]))
    saved = save_checkpoint(model, tmp_path / "with_match")
    weights = load_file(str(saved / "model.safetensors"))
    assert weights["ground_head_match_text.weight"].shape == (ATTRIBUTE_MATCH_WIDTH, model.hidden_size)
    assert weights["ground_head_match_obj.weight"].shape == (ATTRIBUTE_MATCH_WIDTH, model.config.mm_hidden_size)
    assert json.loads((saved / "config.json").read_text())["ground_attribute_match"] is True
    torch.testing.assert_close(ground_scores_after_reload(saved, crops, coords, ids, boxes), trained.scores)


def test_text_mean_is_the_mean_input_embedding_of_the_words_after_the_image(small_init_model: Path) -> None:
    model = Video3DLLM.from_pretrained(small_init_model, device="cpu")
    add_attribute_match(model)
    crops, coords, _ = _visual_inputs(model)
    for newline in (False, True):
        ids = build_input_ids(model.tokenizer, "multi3drefer", HUMAN, newline_after_image=newline).input_ids
        with torch.no_grad():
            merged = model.build_inputs_embeds(ids, model.encode_frames(crops, coords))
            words = HUMAN.removeprefix("<image>")
            expected_ids = model.tokenizer(("\n" if newline else "") + words, add_special_tokens=False).input_ids
            expected = model.language_model.get_input_embeddings()(torch.tensor(expected_ids)).mean(0)
            torch.testing.assert_close(model.text_mean(merged), expected)
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        bare = model.build_inputs_embeds(ids[: ids.index(-200) + 1] + [im_end], model.encode_frames(crops, coords))
    with pytest.raises(ValueError, match="no text between the image placeholder"):
        model.text_mean(bare)


def test_config_key_is_validated_by_name(small_init_model: Path) -> None:
    raw = json.loads((small_init_model / "config.json").read_text())
    with pytest.raises(ConfigError, match="ground_attribute_match must be true or false"):
        Video3DLLMConfig.from_dict({**raw, "ground_attribute_match": "yes"})
    with pytest.raises(ConfigError, match="ground_attribute_match needs the grounding head"):
        Video3DLLMConfig.from_dict({**raw, "ground_attribute_match": True, "ground_head_type": None})
    assert not Video3DLLMConfig.from_dict(raw).ground_attribute_match


def test_training_the_match_alone_changes_only_the_match(small_init_model: Path, tmp_path: Path,
                                                         train_head_extension_alone: Callable[[Path, str, Path], Path]) -> None:
    trained = train_head_extension_alone(small_init_model, "--attribute-match", tmp_path / "s3")
    start, end = load_file(str(small_init_model / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert set(end) - set(start) == {"ground_head_match_text.weight", "ground_head_match_obj.weight"}
    for key, value in start.items():
        torch.testing.assert_close(end[key], value, rtol=0, atol=0, msg=key)
    assert float(end["ground_head_match_obj.weight"].abs().max()) > 0  # trained away from its zero start
    assert json.loads((trained / "config.json").read_text())["ground_attribute_match"] is True
    # what trains: only the match when the head is frozen; the whole head otherwise
    model = Video3DLLM.from_pretrained(trained, device="cpu")
    configure_trainable(model, False, False, False, tune_ground_head=False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"ground_head.match.text.weight",
                                                                          "ground_head.match.obj.weight"}
    configure_trainable(model, False, False, False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                          if n.startswith("ground_head.")}
