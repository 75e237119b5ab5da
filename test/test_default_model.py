"""The embedded default model (seeded random weights, shipped tokenizer) and the checkpoint writer."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from video3dllm_core.default_model import DEFAULT_MODEL_DIR, DEFAULT_SEED, default_weights, load_default_model
from video3dllm_core.engine import EngineConfig, SceneEngine
from video3dllm_core.model import CheckpointError, Video3DLLM
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.prompts import build_input_ids, human_turn, special_token_ids
from video3dllm_core.synthetic import make_scene, render_frames

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", REPO / "test" / "fixtures" / "reference_parity"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_model_is_deterministic_and_seeded() -> None:
    first, second = load_default_model(device="cpu"), load_default_model(device="cpu")
    assert first is not second and _same_weights(first, second)
    # Recorded values: a change here changes every default-model answer (bump DEFAULT_SEED's docs).
    weights = first.state_dict()
    embed = weights["language_model.model.embed_tokens.weight"]
    np.testing.assert_allclose(embed[0, :4].tolist(), [0.14591844, -0.32871708, -0.29911399, -0.04285656], atol=1e-7)
    zero_target = weights["ground_head.zero_target"]
    np.testing.assert_allclose(zero_target[:3].tolist(), [2.88408422, -0.32231578, 0.96738708], atol=1e-7)
    other = load_default_model(device="cpu", seed=DEFAULT_SEED + 1)
    assert not torch.equal(other.image_newline, first.image_newline)
    # statistics of the recipe: N(0, 1/fan_in) matrices, 1 + N(0, 0.1^2) norm scales
    q = weights["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert abs(float(q.std()) - 128 ** -0.5) < 0.01
    norm = weights["language_model.model.norm.weight"]
    assert abs(float(norm.mean()) - 1.0) < 0.05
    wide = load_default_model(device="cpu", dtype=torch.float64)
    assert wide.dtype == torch.float64 and torch.equal(wide.image_newline, first.image_newline.double())
    assert default_weights() is default_weights()  # generated once per process


def test_default_model_ships_only_small_files() -> None:
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    names = {p.name for p in files}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    assert sum(p.stat().st_size for p in files) < 300_000
    model = load_default_model(device="cpu")
    ids = special_token_ids(model.tokenizer)
    assert [ids.ground] == list(model.config.ground_token_ids) and [ids.coord] == list(model.config.coord_token_ids)
    assert model.eos_token_ids == [ids.im_end] and model.checkpoint_dir == DEFAULT_MODEL_DIR


def test_engine_load_without_model_path_runs_offline() -> None:
    frames = render_frames(make_scene(4), 6, 320, 240)
    engines = [SceneEngine.load(EngineConfig(device="cpu", max_new_tokens=6)) for _ in range(2)]
    answers = []
    for engine in engines:
        assert engine.model.checkpoint_dir == DEFAULT_MODEL_DIR
        for frame in frames:
            assert engine.add_frame(frame)
        answers.append(engine.query("what is in the room?"))
    assert all(a.ok for a in answers), [a.error for a in answers]
    assert answers[0].task == "qa" and answers[0].text == answers[1].text  # same seed, same answer
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        SceneEngine.load(EngineConfig(device="cpu", model_path=str(REPO / "no-such-checkpoint")))


def _outputs(model: Video3DLLM) -> tuple[list[int], torch.Tensor]:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 384, 384, 3), dtype=np.uint8)
    coords = rng.uniform(-2, 2, (2, 384, 384, 3)).astype(np.float32)
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        ids = build_input_ids(model.tokenizer, "scanqa", human_turn("scanqa", question="What is here?")).input_ids
        generated = model.generate(model.build_inputs_embeds(ids, visual), max_new_tokens=4).token_ids
        g_ids = build_input_ids(model.tokenizer, "scanrefer", human_turn("scanrefer", description="a chair")).input_ids
        objects = model.object_features(visual, np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]))
        scores = model.ground(model.build_inputs_embeds(g_ids, visual), objects).scores
    return generated, scores


@pytest.mark.parametrize("source", ["default", "fixture"])
def test_save_checkpoint_round_trip(source: str, tmp_path: Path) -> None:
    if source == "default":
        model = load_default_model(device="cpu")
    else:
        model = Video3DLLM.from_pretrained(FIXTURE / "checkpoint", device="cpu")
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llava_qwen" and config["ground_token_ids"] == list(model.config.ground_token_ids)
    tower = json.loads((folder / config["mm_vision_tower"] / "config.json").read_text())
    assert tower["num_hidden_layers"] == model.vision_tower.config.num_hidden_layers + 1  # upstream drops one
    loaded = Video3DLLM.from_pretrained(folder, device="cpu")
    assert _same_weights(model, loaded)
    assert loaded.eos_token_ids == model.eos_token_ids and len(loaded.tokenizer) == len(model.tokenizer)
    before, after = _outputs(model), _outputs(loaded)
    assert before[0] == after[0] and torch.equal(before[1], after[1])


def test_save_checkpoint_tied_embeddings_and_errors(tmp_path: Path) -> None:
    model = load_default_model(device="cpu")
    model.language_model.config.tie_word_embeddings = True
    model.language_model.tie_weights()
    folder = save_checkpoint(model, tmp_path / "tied")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    loaded = Video3DLLM.from_pretrained(folder, device="cpu")
    state = loaded.state_dict()
    head, embed = state["language_model.lm_head.weight"], state["language_model.model.embed_tokens.weight"]
    assert head.data_ptr() == embed.data_ptr()  # tied again, not a copy
    model.config = replace(model.config, raw={})
    with pytest.raises(CheckpointError, match="config.raw"):
        save_checkpoint(model, tmp_path / "broken")
