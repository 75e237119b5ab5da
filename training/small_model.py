"""A fresh, scaled-down Video-3D LLM for the embedded default model, with a tokenizer trained on benchmark text.

The released Video-3D LLM is 7B parameters; nothing that size can ship in a package or train on a
CPU. The embedded default (``video3dllm_core/default_model``) is instead a model with the same
architecture scaled down (Qwen2 decoder hidden 192 x 4 layers, SigLIP-layout tower hidden 64,
mlp2x_gelu projector, InfoNCE head, the upstream 3D settings) and a byte-level BPE tokenizer
(Qwen2's pre-tokenizer, normaliser and special tokens) trained on the synthetic benchmark's train
split, so that its small vocabulary covers exactly the words the benchmark uses.

``init_small_model`` writes such a model, weights drawn from a seed, as an upstream checkpoint folder
that ``video3dllm train --model`` fine-tunes like any other. ``--no-position-embedding`` builds the
paper's ablation (``world_position_embedding_type: none``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from video3dllm_core.default_model import DEFAULT_MODEL_DIR, random_init_
from video3dllm_core.model import Video3DLLM, Video3DLLMConfig
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.prompts import (
    DEFAULT_SYSTEM_MESSAGE,
    IM_END_TOKEN,
    IM_START_TOKEN,
    ensure_special_tokens,
    load_tokenizer,
)
from video3dllm_core.model.vision import resolve_tower_config

__all__ = ["SMALL_MODEL_CONFIG", "benchmark_texts", "train_tokenizer", "init_small_model"]

SMALL_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_window_layers": 4,
    "tokenizer_model_max_length": 4096,
    "max_position_embeddings": 4096,
    "mm_spatial_pool_stride": 9,
    "object_feature_type": "patch14-pe-size",
    "prompt_newline_after_image": False,
}
"""Settings of the embedded default over the reference-parity architecture (tower, projector, 3D settings,
head: ``video3dllm_core/default_model/config.json``): a 192-wide 4-layer decoder, and 2D pooling stride 9
(3x3 visual tokens per frame instead of 14x14: with 4 keyframes the description is a larger share of
what the decoder attends to, and CPU training is faster; object features still average the un-pooled
27x27 patches), and object features that also carry the box's size (``patch14-pe-size``: the small tower
cannot see a one-colour cuboid's size, the box can; docs/training.md). Inference prompts have the layout
these models are trained with, without upstream eval's newline after the image placeholder
(``prompt_newline_after_image``; docs/prompts.md)."""

_TOKENIZER_VOCAB_SIZE = 1024
_TEXT_FILES = ("scanqa", "sqa3d", "scan2cap", "scanrefer_vg", "multi3drefer")


def benchmark_texts(benchmark_dir: str | Path, split: str = "train") -> Iterator[str]:
    """Every human and assistant turn of a benchmark split (``processed/*_{split}_llava_style.json``),
    plus the system message: the text the tokenizer learns its merges from."""
    root = Path(benchmark_dir) / "processed"
    files = [root / f"{name}_{split}_llava_style.json" for name in _TEXT_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"benchmark_dir {str(benchmark_dir)!r} lacks {', '.join(missing)}; write one with `video3dllm make-benchmark`"
        )
    yield DEFAULT_SYSTEM_MESSAGE
    for path in files:
        for sample in json.loads(path.read_text()):
            for turn in sample["conversations"]:
                yield str(turn["value"]).replace("<image>", " ").replace("<ground>", " ").replace("<coord>", " ")


def train_tokenizer(texts: Iterator[str] | list[str], vocab_size: int = _TOKENIZER_VOCAB_SIZE) -> Any:
    """A Qwen2-style byte-level BPE tokenizer trained on ``texts`` with transformers' ``train_new_from_iterator``.

    The pipeline (normaliser, pre-tokenizer, decoder, chat special tokens) is the reference tokenizer's,
    so prompts render and tokenise as upstream's; ``<image>``, ``<ground>`` and ``<coord>`` are added as
    upstream does. Deterministic for the same texts.
    """
    base = load_tokenizer(DEFAULT_MODEL_DIR)
    specials = ["<|endoftext|>", IM_START_TOKEN, IM_END_TOKEN]
    tokenizer = base.train_new_from_iterator(list(texts), vocab_size=vocab_size, new_special_tokens=specials)
    ensure_special_tokens(tokenizer)
    return tokenizer


#: Factor on the decoder's query and key projections after the transformers initialisation. With
#: N(0, 0.02^2) projections every attention head of a fresh 192-wide decoder is uniform over the ~100 tokens
#: of a grounding prompt, so the ``<ground>`` state is the same average for every description and the
#: grounding loss sits on a plateau for thousands of steps; 4x (16x on the attention logits) gives peaked,
#: input-dependent attention from the start (docs/training.md, "The embedded default model").
ATTENTION_INIT_SCALE = 4.0

PROJECTOR_CALIBRATION_ROOMS = 24
"""Train rooms whose 4 max-coverage keyframes calibrate the projector (`calibrate_projector_`): ~70 k patches."""


def calibrate_projector_(model: Video3DLLM, benchmark_dir: str | Path, rooms: int = PROJECTOR_CALIBRATION_ROOMS) -> None:
    """Data-dependent initialisation of the projector (Salimans & Kingma 2016): each linear layer is
    shifted and scaled so that, over the tower's patch features of ``rooms`` train rooms of the benchmark,
    every output unit has mean 0 and standard deviation 1, the last layer's ``1/sqrt(2)``: the root mean
    square of one dimension of the sin3d position embedding the projected patches are added to.

    Why: with PyTorch's layer defaults the visual tokens of a fresh model differ from one another by about a
    quarter of the norm of the position embedding added to them, and in the model trained from there
    (the shipped one) by under 1 %: its decoder, whose first RMSNorm sees the sum, cannot tell one room's
    video from another's (docs/training.md, "The decoder does not read the video"). Calibrated, content and
    position enter the decoder at the same scale, and a fresh decoder starts reading a question only the
    video answers sooner; the recipe's training still flattens the tokens by the end of its stage 1
    ("The recipe's training flattens the video tokens"), so the shipped recipe does not use it yet.
    """
    from video3dllm_training.data import SceneStore, load_box_file, load_frames_file

    bench = Path(benchmark_dir)
    scenes = sorted(load_box_file(bench / "metadata" / "scannet_train_gt_box.json"))[:rooms]
    if not scenes:
        raise ValueError(f"{bench}: metadata/scannet_train_gt_box.json lists no train room to calibrate the projector on; "
                         "rebuild the benchmark with `video3dllm make-benchmark` or leave out --calibrate-projector")
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(bench / "metadata" / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    projector = model.mm_projector
    steps = list(projector) if isinstance(projector, torch.nn.Sequential) else [projector]  # mlpNx_gelu or linear
    last = max(k for k, step in enumerate(steps) if isinstance(step, torch.nn.Linear))
    with torch.no_grad():
        patches = []
        for scene in scenes:
            frames = store.frames(scene, "mc", 4)
            patches.append(model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                               np.stack([f.patch_world_coords for f in frames])).siglip.flatten(0, 1).float())
        x = torch.cat(patches)
        for k, step in enumerate(steps):  # each linear layer calibrated on the output of the steps before it
            if isinstance(step, torch.nn.Linear):
                out = step(x)
                mean, std = out.mean(0), out.std(0).clamp_min(1e-6)
                target = 2.0 ** -0.5 if k == last else 1.0
                step.weight.mul_((target / std)[:, None])
                step.bias.copy_((step.bias - mean) * target / std)
            x = step(x)


def _fresh_init_(model: Video3DLLM, seed: int, attention_init_scale: float = ATTENTION_INIT_SCALE) -> None:
    """Initialise for training from scratch: the tower (trained with the rest in our recipe) and the learned vectors from
    ``random_init_``; the decoder with its own transformers initialisation (N(0, initializer_range) matrices
    and embeddings, unit norms, zero biases); projector and grounding heads with PyTorch's layer defaults.

    The decoder's own initialisation matters: with the parity fixture's recipe (N(0, 1/fan_in), embeddings
    N(0, 0.5^2)) the grounding loss leaves its plateau later and less cleanly (docs/training.md). The query and
    key projections are then multiplied by ``attention_init_scale`` (see ``ATTENTION_INIT_SCALE``).
    """
    random_init_(model, seed)
    lm: Any = model.language_model
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(seed))
        lm.apply(lm._init_weights)
        for name, param in lm.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(float(attention_init_scale))
        for module in [*model.mm_projector.modules(), *(model.ground_head.modules() if model.ground_head else [])]:
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                module.reset_parameters()


def init_small_model(benchmark_dir: str | Path, out_dir: str | Path, *, seed: int = 0, position_embedding: bool = True,
                     vocab_size: int = _TOKENIZER_VOCAB_SIZE, overrides: dict[str, Any] | None = None,
                     attention_init_scale: float = ATTENTION_INIT_SCALE, vision_tower_from: str | Path | None = None,
                     calibrate_projector: bool = False) -> Path:
    """Write a fresh small Video-3D LLM (weights from ``seed``) with a tokenizer trained on ``benchmark_dir``.

    ``vision_tower_from``: a checkpoint whose vision tower replaces the fresh one (e.g. the output of
    `video3dllm pretrain-tower`, so that the paper's ablation starts from the same pretrained tower).
    ``calibrate_projector``: scale the projector on the benchmark's train frames (`calibrate_projector_`)
    instead of keeping PyTorch's layer defaults (the shipped model's recipe keeps the defaults).

    Returns the checkpoint folder (upstream layout: config.json, model.safetensors, tower config,
    tokenizer, generation_config.json), ready for ``video3dllm train --model``.
    """
    tokenizer = train_tokenizer(benchmark_texts(benchmark_dir), vocab_size=vocab_size)
    ids = ensure_special_tokens(tokenizer)
    raw = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    raw.pop("frames_upbound", None)  # recorded by training; a fresh model has none
    raw.pop("ground_attribute_match", None)  # added by the recipe's stage 3 (train --attribute-match)
    raw.pop("ground_relation_match", None)  # added by the recipe's stage 4 (train --relation-match)
    raw.update(SMALL_MODEL_CONFIG)
    raw.update(overrides or {})
    raw.update({
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END_TOKEN),
        "ground_token_ids": [ids.ground],
        "coord_token_ids": [ids.coord],
        "torch_dtype": "float32",
    })
    if not position_embedding:
        raw["world_position_embedding_type"] = "none"
    config = Video3DLLMConfig.from_dict(raw)
    tower = resolve_tower_config(config.mm_vision_tower, DEFAULT_MODEL_DIR)
    model = Video3DLLM.build(config, tower, device="cpu", dtype=torch.float32, attn_implementation="eager")
    _fresh_init_(model, seed, attention_init_scale)
    if vision_tower_from is not None:
        source = Video3DLLM.from_pretrained(vision_tower_from, device="cpu", dtype=torch.float32)
        try:
            model.vision_tower.load_state_dict(source.vision_tower.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"vision_tower_from={str(vision_tower_from)!r}: its vision tower does not fit the small "
                             f"model's ({exc})") from None
    if calibrate_projector:
        calibrate_projector_(model, benchmark_dir)
    model.tokenizer = tokenizer
    generation = json.loads((DEFAULT_MODEL_DIR / "generation_config.json").read_text())
    generation.update({"bos_token_id": raw["bos_token_id"], "eos_token_id": raw["eos_token_id"],
                       "pad_token_id": raw["bos_token_id"]})
    out = Path(out_dir)
    save_checkpoint(model, out)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    return out
