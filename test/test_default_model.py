"""The embedded default model (a small trained checkpoint shipped in the package) and the checkpoint writer."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from video3dllm_core.default_model import (DEFAULT_MODEL_DIR, default_model_parameters, default_model_results,
                                          load_default_model, random_init_)
from video3dllm_core.engine import EngineConfig, SceneEngine
from video3dllm_core.model import CheckpointError, Video3DLLM, Video3DLLMConfig
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.prompts import build_input_ids, human_turn, special_token_ids
from video3dllm_core.model.vision import resolve_tower_config
from video3dllm_core.synthetic import make_scene, render_frames

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", REPO / "test" / "fixtures" / "reference_parity"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_model_is_the_shipped_trained_checkpoint() -> None:
    from safetensors.torch import load_file

    first, second = load_default_model(device="cpu"), load_default_model(device="cpu")
    assert first is not second and _same_weights(first, second)
    assert first.checkpoint_dir == DEFAULT_MODEL_DIR
    stored = load_file(str(DEFAULT_MODEL_DIR / "model.safetensors"))
    assert torch.equal(stored["model.embed_tokens.weight"], first.state_dict()["language_model.model.embed_tokens.weight"])
    assert first.config.mm_spatial_pool_stride == 9 and first.config.uses_position_embedding
    # the count the demo's NOTE prints, read from the file's header, is the loaded model's
    assert default_model_parameters() == sum(p.numel() for p in first.parameters()) == 2_595_078
    wide = load_default_model(device="cpu", dtype=torch.float64)
    assert wide.dtype == torch.float64 and torch.equal(wide.image_newline, first.image_newline.double())
    results = default_model_results()
    assert results["training"]["frames_upbound"] == first.config.raw["frames_upbound"]
    assert "$V train" in results["recipe"] and "$V make-benchmark" in results["recipe"]
    assert (REPO / "training" / "recipes" / "default_model.sh").read_text() == results["recipe"]


def test_default_model_ships_within_30_mb() -> None:
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "results.json"} <= names
    assert [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")] == ["model.safetensors"]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    model = load_default_model(device="cpu")
    ids = special_token_ids(model.tokenizer)
    assert [ids.ground] == list(model.config.ground_token_ids) and [ids.coord] == list(model.config.coord_token_ids)
    assert model.eos_token_ids == [ids.im_end]


def test_random_init_recipe_is_seeded() -> None:
    config = Video3DLLMConfig.from_pretrained(FIXTURE / "checkpoint")
    tower = resolve_tower_config(config.mm_vision_tower, FIXTURE / "checkpoint")
    models = [Video3DLLM.build(config, tower, device="cpu", dtype=torch.float32) for _ in range(3)]
    random_init_(models[0], 7)
    random_init_(models[1], 7)
    random_init_(models[2], 8)
    assert _same_weights(models[0], models[1]) and not _same_weights(models[0], models[2])
    weights = models[0].state_dict()
    # the recipe: N(0, 1/fan_in) matrices, 1 + N(0, 0.1^2) norm scales, N(0, 0.5^2) token embeddings
    q = weights["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert abs(float(q.std()) - q.shape[1] ** -0.5) < 0.01
    assert abs(float(weights["language_model.model.norm.weight"].mean()) - 1.0) < 0.05
    assert abs(float(weights["language_model.model.embed_tokens.weight"].std()) - 0.5) < 0.02


def test_engine_load_without_model_path_runs_offline() -> None:
    frames = render_frames(make_scene(4), 6, 320, 240)
    engines = [SceneEngine.load(EngineConfig(device="cpu", max_new_tokens=6)) for _ in range(2)]
    answers = []
    for engine in engines:
        assert engine.model.checkpoint_dir == DEFAULT_MODEL_DIR
        assert engine.frame_budget == engine.model.config.raw["frames_upbound"]  # the budget it was trained with
        for frame in frames:
            assert engine.add_frame(frame)
        answers.append(engine.query("How many chairs are there?"))
    assert all(a.ok for a in answers), [a.error for a in answers]
    assert answers[0].task == "qa" and answers[0].text == answers[1].text
    assert len(answers[0].keyframe_stamps_ns) <= engines[0].frame_budget
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
