"""The small-model recipe behind the embedded default: tokenizer trained on benchmark text, fresh seeded
weights, the no-3D-position ablation, and training labels with a non-Qwen vocabulary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from video3dllm_core.cli import main as cli_main
from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.config import ConfigError, Video3DLLMConfig
from video3dllm_core.model.prompts import IGNORE_INDEX, build_training_ids, human_turn, special_token_ids
from video3dllm_training.small_model import SMALL_MODEL_CONFIG, benchmark_texts


@pytest.fixture(scope="module")
def bench(small_model_benchmark: Path) -> Path:
    return small_model_benchmark


@pytest.fixture(scope="module")
def models(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, extra in (("pe", []), ("pe_again", []), ("seed1", ["--seed", "1"]), ("nope", ["--no-position-embedding"]),
                        ("qk1", ["--attention-init-scale", "1"]), ("upstream", ["--object-feature-type", "patch14-pe"]),
                        ("calibrated", ["--calibrate-projector"]),
                        ("calibrated_nope", ["--calibrate-projector", "--no-position-embedding"])):
        assert cli_main(["init-model", str(bench), str(root / name), *extra]) == 0
        out[name] = root / name
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_model_is_deterministic_and_loads(models: dict[str, Path]) -> None:
    pe, again, seed1 = models["pe"], models["pe_again"], models["seed1"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(pe / name) == _sha(again / name), name
    assert _sha(pe / "model.safetensors") != _sha(seed1 / "model.safetensors")
    assert _sha(pe / "tokenizer.json") == _sha(seed1 / "tokenizer.json")  # the tokenizer depends on the text only
    model = Video3DLLM.from_pretrained(pe, device="cpu")
    config = json.loads((pe / "config.json").read_text())
    for key, value in SMALL_MODEL_CONFIG.items():
        assert config[key] == value, key
    ids = special_token_ids(model.tokenizer)
    assert config["ground_token_ids"] == [ids.ground] and config["coord_token_ids"] == [ids.coord]
    assert config["eos_token_id"] == ids.im_end and model.eos_token_ids == [ids.im_end]
    assert config["vocab_size"] == len(model.tokenizer) == model.language_model.get_input_embeddings().weight.shape[0]
    assert (pe / "model.safetensors").stat().st_size < 30 * 2**20


def test_attention_init_scale_multiplies_query_and_key_projections_only(models: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    scaled, plain = load_file(str(models["pe"] / "model.safetensors")), load_file(str(models["qk1"] / "model.safetensors"))
    assert scaled.keys() == plain.keys()
    projections = [k for k in scaled if k.startswith("model.layers.") and k.endswith(("q_proj.weight", "k_proj.weight"))]
    assert len(projections) == 2 * SMALL_MODEL_CONFIG["num_hidden_layers"]
    for key in scaled:
        factor = 4.0 if key in projections else 1.0
        torch.testing.assert_close(scaled[key], plain[key] * factor, rtol=0, atol=0, msg=key)
    # transformers' N(0, 0.02^2) before the factor
    std = float(torch.cat([plain[k].flatten() for k in projections]).std())
    assert 0.018 < std < 0.022


def test_box_size_embedding_is_the_learned_map_of_the_log_size(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = Video3DLLM.from_pretrained(models["pe"], device="cpu")
    upstream = Video3DLLM.from_pretrained(models["upstream"], device="cpu")
    assert model.config.box_size_embedding and not upstream.config.box_size_embedding
    weights = load_file(str(models["pe"] / "model.safetensors"))
    w = weights["ground_head_box_size.weight"].double().numpy()  # [H, 3]
    b = weights["ground_head_box_size.bias"].double().numpy()
    assert w.shape == (SMALL_MODEL_CONFIG["hidden_size"], 3)
    assert not any(k.startswith("ground_head_box_size") for k in load_file(str(models["upstream"] / "model.safetensors")))
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (2, 384, 384, 3), dtype=np.uint8)
    coords = rng.uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    # same centre, two sizes that both contain every point (same patches), and a flat box clamped to 5 cm
    boxes = np.array([[0.0, 0.0, 0.0, 2.5, 2.5, 2.5], [0.0, 0.0, 0.0, 4.0, 3.0, 2.5], [0.0, 0.0, 0.0, 4.0, 3.0, 0.0]])
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        objects = model.object_features(visual, boxes)
        plain = upstream.object_features(upstream.encode_frames(crops, coords), boxes)
    assert plain.size_embedding is None and torch.equal(plain.features, plain.before_pe + plain.center_pe)
    expected = np.log(np.maximum(boxes[:, 3:], 0.05)) @ w.T + b
    assert objects.size_embedding is not None
    np.testing.assert_allclose(objects.size_embedding.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(objects.features, objects.before_pe + objects.center_pe + objects.size_embedding)
    assert objects.num_selected[0] == objects.num_selected[1] > 0
    torch.testing.assert_close(objects.before_pe[0], objects.before_pe[1])
    assert float((objects.features[0] - objects.features[1]).abs().max()) > 0.1  # the size tells them apart
    assert bool(torch.isfinite(objects.features).all())
    # training can change it, and a saved checkpoint keeps it under its own key
    from video3dllm_core.model.checkpoint import save_checkpoint
    from video3dllm_training.trainer import parameter_groups

    model.requires_grad_(True)
    box_size_params = {id(p) for p in model.ground_head.box_size.parameters()}  # type: ignore[union-attr]
    grouped = {id(p) for g in parameter_groups(model, 1e-3) for p in g["params"]}
    assert box_size_params <= grouped
    with torch.no_grad():
        model.ground_head.box_size.bias.add_(1.0)  # type: ignore[union-attr]
    again = Video3DLLM.from_pretrained(save_checkpoint(model, tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(again.ground_head.box_size.bias, model.ground_head.box_size.bias)  # type: ignore[union-attr]


def _visual(model: Video3DLLM, bench: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tower patches [N, mm_hidden], pooled visual tokens [T, H], their position embedding [T, H]) of the
    4 max-coverage keyframes of the benchmark's ``split`` room."""
    from video3dllm_training.data import SceneStore, load_box_file, load_frames_file

    meta = bench / "metadata"
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(meta / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    (room,) = load_box_file(meta / f"scannet_{split}_gt_box.json")
    frames = store.frames(room, "mc", 4)
    with torch.no_grad():
        visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                     np.stack([f.patch_world_coords for f in frames]))
    return visual.siglip.flatten(0, 1), visual.pooled.flatten(0, 1), visual.position_embedding.flatten(0, 1)


def test_projector_calibration_puts_visual_content_at_the_position_embeddings_scale(
        bench: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from video3dllm_training.small_model import calibrate_projector_

    calibrated = Video3DLLM.from_pretrained(models["calibrated"], device="cpu")
    default = Video3DLLM.from_pretrained(models["pe"], device="cpu")
    # only the projector differs; the ablation gets the same projector (same tower, same frames)
    a, b, c = (load_file(str(models[n] / "model.safetensors")) for n in ("calibrated", "pe", "calibrated_nope"))
    assert a.keys() == b.keys()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert all(torch.equal(a[k], c[k]) for k in changed)
    # on the train room it was calibrated on: every projected unit has mean 0 and the sin3d embedding's RMS
    patches, _, _ = _visual(calibrated, bench, "train")
    with torch.no_grad():
        projected = calibrated.mm_projector(patches)
    assert float(projected.mean(0).abs().max()) < 1e-3
    torch.testing.assert_close(projected.std(0), torch.full((projected.shape[1],), 2 ** -0.5), rtol=1e-3, atol=1e-4)
    # on a held-out room: how much the visual tokens differ from one another, against the position embedding
    # they are added to (PyTorch's defaults: about a quarter)
    ratios = {}
    for name, model in (("calibrated", calibrated), ("default", default)):
        _, pooled, pe = _visual(model, bench, "val")
        ratios[name] = float((pooled - pooled.mean(0)).norm(dim=-1).mean() / pe.norm(dim=-1).mean())
    assert ratios["calibrated"] > 0.7 and ratios["default"] < 0.35, ratios
    empty = tmp_path / "empty"
    (empty / "metadata").mkdir(parents=True)
    (empty / "metadata" / "scannet_train_gt_box.json").write_text("{}")
    with pytest.raises(ValueError, match="no train room.*--calibrate-projector"):
        calibrate_projector_(default, empty)


def test_tokenizer_learns_the_benchmark_words(bench: Path, models: dict[str, Path]) -> None:
    tokenizer = Video3DLLM.from_pretrained(models["pe"], device="cpu").tokenizer
    words = {w.strip(".?,").lower() for text in benchmark_texts(bench) for w in text.split()}
    for word in ("chair", "colour", "standing", "behind", "left"):
        if word in words:
            assert len(tokenizer.tokenize(" " + word)) == 1, word
    text = "I am standing at the door facing the window. How many chairs are on my left?"
    assert tokenizer.decode(tokenizer(text).input_ids) == text  # byte-level: lossless
    assert len(tokenizer(text).input_ids) <= 18  # whole words, not bytes
    with pytest.raises(FileNotFoundError, match="make-benchmark"):
        list(benchmark_texts(bench / "nowhere"))


def test_training_labels_unmask_the_tokenizers_own_newline(models: dict[str, Path]) -> None:
    tokenizer = Video3DLLM.from_pretrained(models["pe"], device="cpu").tokenizer
    newline = tokenizer.get_vocab()["\u010a"]
    assert newline != 198  # the point: upstream's hard-coded id is Qwen2's newline only
    prompt = build_training_ids(tokenizer, "scanqa", human_turn("scanqa", question="What colour is the chair?"), "red")
    ids, labels = prompt.input_ids, prompt.labels
    specials = special_token_ids(tokenizer)
    answer_start = max(i for i, t in enumerate(ids) if t == specials.im_start)
    for i, (t, label) in enumerate(zip(ids, labels)):
        if i >= answer_start or t in (newline, specials.im_start, specials.im_end):
            assert label == t, (i, t)
        else:
            assert label == IGNORE_INDEX, (i, t)
    assert any(t == newline for t in ids[:answer_start])


def test_no_position_embedding_ablation(models: dict[str, Path]) -> None:
    with_pe = Video3DLLM.from_pretrained(models["pe"], device="cpu")
    without = Video3DLLM.from_pretrained(models["nope"], device="cpu")
    assert without.config.world_position_embedding_type == "none" and not without.config.uses_position_embedding
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 384, 384, 3), dtype=np.uint8)
    coords = rng.uniform(-2, 2, (2, 384, 384, 3)).astype(np.float32)
    box = np.array([[0.5, -0.5, 0.5, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        plain, sin = without.encode_frames(crops, coords), with_pe.encode_frames(crops, coords)
        assert torch.count_nonzero(plain.position_embedding) == 0
        assert torch.count_nonzero(sin.position_embedding) > 0
        # identical weights except the config: the visual tokens differ exactly by the embedding
        assert torch.allclose(sin.pooled - plain.pooled, torch.zeros_like(plain.pooled))
        objects = without.object_features(plain, box)
        assert objects.size_embedding is not None  # size is not position: the ablation keeps it
        assert torch.equal(objects.features, objects.before_pe + objects.size_embedding)
        assert not torch.equal(with_pe.object_features(sin, box).features, objects.features)
        # the Scan2Cap location keeps its embedding: it is the only way to name the box
        assert torch.count_nonzero(without.location_embedding((0.5, 0.5, 0.5))[1]) > 0
    raw = json.loads((models["nope"] / "config.json").read_text())
    raw["object_feature_type"] = "patch14-size"
    with pytest.raises(ConfigError, match="object_feature_type 'patch14-size'.*'patch14-pe-size'"):
        Video3DLLMConfig.from_dict(raw)
    raw["object_feature_type"] = "patch14-pe-size"
    raw["world_position_embedding_type"] = "learned"
    with pytest.raises(ConfigError, match="world_position_embedding_type 'learned'.*'none'"):
        Video3DLLMConfig.from_dict(raw)


def test_a_coarser_pooling_flows_through_ingest_training_data_and_engine(bench: Path, tmp_path: Path) -> None:
    from video3dllm_core.engine import EngineConfig, SceneEngine
    from video3dllm_core.synthetic import make_scene, render_frames
    from video3dllm_training.small_model import init_small_model

    path = init_small_model(bench, tmp_path / "s4", overrides={"mm_spatial_pool_stride": 4})
    model = Video3DLLM.from_pretrained(path, device="cpu")
    config = model.ingest_config(voxel_size_m=0.2)
    assert (config.patch_grid, config.patch_block_px, config.crop_size, config.voxel_size_m) == (7, 54, 384, 0.2)
    engine = SceneEngine(model, EngineConfig(device="cpu", max_frames=3, max_new_tokens=2))
    for frame in render_frames(make_scene(2), 4, 96, 72):
        assert engine.add_frame(frame)
    answer = engine.query("How many chairs are there?", task="qa")
    assert answer.ok, answer.error
    grounded = engine.query("the red chair.", task="ground")
    assert grounded.ok and len(grounded.objects) == 1, grounded.error
