"""Checkpoint loading (strict, offline, safetensors-first) and the model API's input validation.

Error paths run on corrupted copies of the fixture checkpoint in tmp_path; every error must name
the file, key, shape or field at fault.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from video3dllm_core.model import CheckpointError, ConfigError, Video3DLLM, Video3DLLMConfig
from video3dllm_core.model.checkpoint import module_key_to_upstream, upstream_key_to_module
from video3dllm_core.model.config import released_7b_config_dict
from video3dllm_core.model.modeling import default_attn_implementation
from video3dllm_core.model.vision import BUILTIN_TOWER_CONFIGS, resolve_tower_config

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", REPO / "test" / "fixtures" / "reference_parity"))
CKPT = FIXTURE / "checkpoint"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(CKPT, dst)
    return dst


def _edit_weights(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _load(folder: Path, allow_pickle: bool = False) -> Video3DLLM:
    return Video3DLLM.from_pretrained(folder, device="cpu", dtype=torch.float32, load_tokenizer_files=False,
                                      allow_pickle=allow_pickle)


@pytest.fixture(scope="module")
def model() -> Video3DLLM:
    return Video3DLLM.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------- successful loading
def test_every_checkpoint_tensor_lands_in_its_parameter(model: Video3DLLM) -> None:
    tensors = load_file(str(CKPT / "model.safetensors"))
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == sum(t.numel() for t in tensors.values())
    for key, tensor in tensors.items():
        name = upstream_key_to_module(key)
        assert name in params, key
        assert module_key_to_upstream(name) == key
        torch.testing.assert_close(params[name], tensor, rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in params.values())
    assert not model.training


def test_sizes_come_from_checkpoint_and_configs(model: Video3DLLM) -> None:
    raw = json.loads((CKPT / "config.json").read_text())
    tower_raw = json.loads((CKPT / raw["mm_vision_tower"] / "config.json").read_text())
    tensors = load_file(str(CKPT / "model.safetensors"))
    assert model.language_model.config.vocab_size == tensors["model.embed_tokens.weight"].shape[0]
    assert model.hidden_size == raw["hidden_size"]
    # upstream deletes the tower's last encoder layer
    assert len(model.vision_tower.tower.encoder.layers) == tower_raw["num_hidden_layers"] - 1
    assert model.vision_tower.grid == tower_raw["image_size"] // tower_raw["patch_size"]
    assert model.eos_token_ids == [json.loads((CKPT / "generation_config.json").read_text())["eos_token_id"]]
    assert len(model.tokenizer) == model.language_model.config.vocab_size


def test_sharded_checkpoint_loads_the_same(tmp_path: Path, model: Video3DLLM) -> None:
    folder = _copy(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = _load(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), sharded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        _load(folder)


def test_pickled_weights_need_explicit_permission(tmp_path: Path, model: Video3DLLM) -> None:
    folder = _copy(tmp_path)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        _load(folder)
    loaded = _load(folder, allow_pickle=True)
    torch.testing.assert_close(loaded.image_newline, model.image_newline, rtol=0, atol=0)


def test_tied_embeddings_when_lm_head_absent(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="missing keys.*'lm_head.weight'"):
        _load(folder)
    _edit_config(folder, tie_word_embeddings=True)
    tied = _load(folder)
    lm: Any = tied.language_model
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()


def test_released_7b_shapes_build_on_meta_device() -> None:
    config = Video3DLLMConfig.from_dict(released_7b_config_dict())
    tower = resolve_tower_config(config.mm_vision_tower, None)  # built-in table, no files, no hub
    model = Video3DLLM.build(config, tower, device="meta", dtype=torch.bfloat16, attn_implementation="sdpa")
    assert model.language_model.get_input_embeddings().weight.shape == (151649, 3584)
    tower_layers = BUILTIN_TOWER_CONFIGS[config.mm_vision_tower]["num_hidden_layers"]
    assert len(model.vision_tower.tower.encoder.layers) == tower_layers - 1
    first_linear: Any = model.mm_projector[0]  # type: ignore[index]
    assert first_linear.weight.shape == (3584, 1152)
    assert model.vision_tower.grid == 27
    assert all(p.dtype == torch.bfloat16 and p.is_meta for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < total < 8.2e9  # Qwen2-7B (7.6 B) + SigLIP so400m minus one layer + projector + heads


def test_default_attention_choice() -> None:
    assert default_attn_implementation(torch.device("cpu"), torch.float32) == "eager"
    expected = "flash_attention_2" if _flash_attn_imports() else "sdpa"
    assert default_attn_implementation(torch.device("cuda"), torch.bfloat16) == expected
    assert default_attn_implementation(torch.device("cuda"), torch.float32) == "sdpa"


def _flash_attn_imports() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- loading errors
def test_missing_config_names_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        _load(folder)


def test_missing_weights_name_the_expected_files(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        _load(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _load(tmp_path / "nowhere")


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.update({"model.extra_head.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match="unexpected keys.*'model.extra_head.weight'"):
        _load(folder)


def test_deleted_tower_layer_present_is_unexpected(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    prefix = "model.vision_tower.vision_tower.vision_model.encoder.layers."
    tower_dir = folder / json.loads((folder / "config.json").read_text())["mm_vision_tower"]
    tower_layers = json.loads((tower_dir / "config.json").read_text())["num_hidden_layers"]
    extra = f"{prefix}{tower_layers - 1}.layer_norm1.weight"
    _edit_weights(folder, lambda t: t.update({extra: torch.ones(t[prefix + "0.layer_norm1.weight"].shape)}))
    with pytest.raises(CheckpointError, match=extra.replace(".", r"\.")):
        _load(folder)


def test_missing_key_is_named_in_upstream_terms(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match="missing keys.*'model.norm.weight'"):
        _load(folder)
    folder2 = _copy(tmp_path / "b")
    _edit_weights(folder2, lambda t: t.pop("ground_head_zero_target"))
    with pytest.raises(CheckpointError, match="'ground_head_zero_target'"):
        _load(folder2)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    shapes: dict[str, list[int]] = {}

    def shrink(t: dict[str, torch.Tensor]) -> None:
        shapes["before"] = list(t["model.mm_projector.0.weight"].shape)
        t["model.mm_projector.0.weight"] = t["model.mm_projector.0.weight"][:, :-1].contiguous()
        shapes["after"] = list(t["model.mm_projector.0.weight"].shape)

    _edit_weights(folder, shrink)
    with pytest.raises(CheckpointError) as err:
        _load(folder)
    message = str(err.value)
    assert "'model.mm_projector.0.weight'" in message
    assert str(shapes["after"]) in message and str(shapes["before"]) in message


def test_corrupt_safetensors_names_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        _load(folder)


def test_duplicate_key_across_shards(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(folder / "a.safetensors"), metadata={"format": "pt"})
    save_file({"lm_head.weight": tensors["lm_head.weight"]}, str(folder / "b.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "a.safetensors" for k in tensors}
    weight_map["lm_head.weight"] = "b.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="'lm_head.weight' appears in more than one"):
        _load(folder)


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        Video3DLLM.from_pretrained(folder, device="cpu")


def test_unknown_vision_tower_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_config(folder, mm_vision_tower="some/unknown-tower")
    with pytest.raises(ConfigError, match="mm_vision_tower 'some/unknown-tower'"):
        _load(folder)


def test_builtin_tower_with_wrong_width_names_mm_hidden_size(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    width = json.loads((folder / "config.json").read_text())["mm_hidden_size"]
    assert width != 1152, "fixture tower is meant to be narrower than so400m"
    _edit_config(folder, mm_vision_tower="google/siglip-so400m-patch14-384")
    with pytest.raises(ConfigError, match=f"mm_hidden_size {width} differs .* 1152"):
        _load(folder)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mm_newline_position", "frame"),
        ("mm_spatial_pool_mode", "average"),
        ("mm_projector_type", "identity"),
        ("world_position_embedding_type", "sample9-discrete-sin3d"),
        ("object_feature_type", "patch27-pe"),
        ("ground_head_type", "score"),
        ("ground_token_ids", [100000]),
        ("prompt_newline_after_image", "no"),
    ],
)
def test_unsupported_config_values_are_named(tmp_path: Path, key: str, value: object) -> None:
    folder = _copy(tmp_path)
    _edit_config(folder, **{key: value})
    with pytest.raises(ConfigError, match=key):
        _load(folder)


def test_missing_required_config_key_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    del data["voxel_size"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="'voxel_size'"):
        _load(folder)


def test_plain_decoder_checkpoint_is_not_a_video3dllm() -> None:
    with pytest.raises(ConfigError, match="mm_vision_tower"):
        _load(FIXTURE / "supplementary" / "qwen2_gqa" / "checkpoint")


# ---------------------------------------------------------------- input validation
@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return data["crops_uint8"][:2], data["world_coords"][:2]


@pytest.fixture(scope="module")
def cases() -> dict[str, Any]:
    return json.loads((FIXTURE / "cases.json").read_text())["cases"]


def test_frame_inputs_are_validated(model: Video3DLLM, frames: tuple[np.ndarray, np.ndarray]) -> None:
    crops, coords = frames
    with pytest.raises(ValueError, match="crop_rgb must be uint8"):
        model.encode_frames(crops.astype(np.float32), coords)
    with pytest.raises(ValueError, match="crop_rgb must be uint8"):
        model.encode_frames(crops[:, :-1], coords)
    with pytest.raises(ValueError, match="world_coords must be"):
        model.encode_frames(crops, coords[:1])
    with pytest.raises(ValueError, match="patch_world_coords must be"):
        model.encode_frames(crops, coords, patch_world_coords=np.zeros((2, 13, 13, 3), np.float32))


def test_batched_tower_equals_one_call(model: Video3DLLM, frames: tuple[np.ndarray, np.ndarray]) -> None:
    crops, coords = frames
    with torch.no_grad():
        whole = model.encode_frames(crops, coords)
        split = model.encode_frames(crops, coords, batch_size=1, patch_world_coords=whole.patch_coords)
    torch.testing.assert_close(split.siglip, whole.siglip, rtol=0, atol=1e-6)
    torch.testing.assert_close(split.image_block, whole.image_block, rtol=0, atol=1e-6)


def test_sequence_inputs_are_validated(model: Video3DLLM, frames: tuple[np.ndarray, np.ndarray],
                                       cases: dict[str, Any]) -> None:
    crops, coords = frames
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
    text_case = next(c for c in cases.values() if "generated_ids" in c and "box_input" not in c)
    coord_case = next(c for c in cases.values() if "box_input" in c)
    ids = text_case["input_ids"]
    with pytest.raises(ValueError, match="exactly once"):
        model.build_inputs_embeds(ids + [-200], visual)
    with pytest.raises(ValueError, match="no visual features"):
        model.build_inputs_embeds(ids, None)
    with pytest.raises(ValueError, match="vocab_size"):
        model.build_inputs_embeds(ids + [model.language_model.config.vocab_size], visual)
    with pytest.raises(ValueError, match="no coord_xyz"):
        model.build_inputs_embeds(coord_case["input_ids"], visual)
    with pytest.raises(ValueError, match="no <coord> token"):
        model.build_inputs_embeds(ids, visual, coord_xyz=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="3 numbers"):
        model.build_inputs_embeds(coord_case["input_ids"], visual, coord_xyz=(0.0, 0.0))
    merged = model.build_inputs_embeds(ids, visual)
    boxes = np.array([[0, 0, 0, 1, 1, 1]], np.float32)
    with pytest.raises(ValueError, match="no <ground> token"):
        model.ground(merged, model.object_features(visual, boxes))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 6\]"):
        model.object_features(visual, boxes[:, :5])
    with pytest.raises(ValueError, match="negative size"):
        model.object_features(visual, -boxes)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(merged, max_new_tokens=0)


def test_benchmark_real_shapes_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench_model.py --real-shapes --dry-run`` builds the 7B architecture on the meta device."""
    from _bench_support import load_benchmark_script

    bench = load_benchmark_script("bench_model")
    assert bench.main(["--real-shapes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8.08 B parameters" in out and "decoder layers 28" in out and "vision layers 26" in out


def test_grounding_without_candidates_scores_only_no_object(model: Video3DLLM, frames: tuple[np.ndarray, np.ndarray],
                                                            cases: dict[str, Any]) -> None:
    from video3dllm_core.model import select_multi3drefer, select_scanrefer

    crops, coords = frames
    ground_case = next(c for c in cases.values() if "scores" in c)
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        objects = model.object_features(visual, np.zeros((0, 6), np.float32))
        merged = model.build_inputs_embeds(ground_case["input_ids"], visual)
        result = model.ground(merged, objects)
    assert objects.features.shape == (0, model.hidden_size)
    assert result.scores.shape == (1,)
    assert select_multi3drefer(result.scores) == []
    with pytest.raises(ValueError, match="at least one candidate"):
        select_scanrefer(result.scores)
