"""The embedded default model: a tiny Video-3D LLM whose weights are made at load time from a seed.

No trained Video-3D LLM small enough to ship exists yet, and no weights may be downloaded, so
``SceneEngine.load()`` without a ``model_path`` uses this stand-in: the architecture of the
reference-parity fixture (Qwen2 decoder, hidden 128, 2 layers, vocabulary 593; SigLIP-layout
tower, hidden 64, 2 kept layers; mlp2x_gelu projector; avg-discrete-sin3d position embedding;
infonce grounding head), its tokenizer and generation config (files in this folder, ~60 KB), and
weights drawn from a fixed seed on the CPU.

**Its answers are meaningless**: the weights are random. It exists so that the whole pipeline
(ingest, keyframes, scene frame, proposals, prompts, KV cache, grounding, replay, ROS node) runs
and is tested end to end on any machine, offline, with the same code paths a real checkpoint
takes. Point ``EngineConfig.model_path`` at a real checkpoint for real answers.

Determinism: the weights depend only on ``seed`` and the parameter names and shapes (drawn in
float32 on the CPU with one ``torch.Generator``, in sorted parameter-name order), so every
machine and every call builds bitwise the same model; the float32 weights are generated once per
process and cached (a few MB), each call builds a fresh model from them on the requested device
and dtype.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch

from video3dllm_core.model.checkpoint import load_generation_config
from video3dllm_core.model.config import Video3DLLMConfig
from video3dllm_core.model.modeling import Video3DLLM, default_attn_implementation, default_device, default_dtype
from video3dllm_core.model.prompts import load_tokenizer
from video3dllm_core.model.vision import resolve_tower_config

__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_SEED", "load_default_model", "default_weights", "random_init_"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent
"""Folder with config.json, the tower config, tokenizer files and generation_config.json."""

DEFAULT_SEED = 20241130
"""Seed of the embedded weights (fixed: changing it changes every default-model answer)."""


def _std_for(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of the normal distribution a parameter is drawn from (the fixture's recipe).

    Token embeddings and ``image_newline`` N(0, 0.5^2); the "no object" target N(0, 1); the
    SigLIP position embedding N(0, 0.2^2); weight matrices and the patch convolution
    N(0, 1/fan_in); norm scales 1 + N(0, 0.1^2); biases N(0, 0.05^2).
    """
    if name.endswith("embed_tokens.weight") or name == "image_newline":
        return 0.0, 0.5
    if name.endswith("zero_target"):
        return 0.0, 1.0
    if name.endswith("position_embedding.weight"):
        return 0.0, 0.2
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return 0.0, 1.0 / math.sqrt(fan_in)
    if name.endswith(".weight"):  # RMSNorm / LayerNorm scale
        return 1.0, 0.1
    return 0.0, 0.05  # biases


@lru_cache(maxsize=4)
def default_weights(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The default model's float32 CPU weights by parameter name (generated once per seed, cached).

    The returned tensors are shared by every caller: treat them as read-only.
    """
    model = _build("cpu", torch.float32, "eager")
    random_init_(model, seed)
    return {name: param.detach() for name, param in model.named_parameters()}


def random_init_(model: torch.nn.Module, seed: int) -> None:
    """Draw every parameter of ``model`` in place from ``seed`` (float32 on the CPU, one ``torch.Generator``,
    sorted parameter-name order; distributions from ``_std_for``), the same on every machine."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            mean, std = _std_for(name, tuple(param.shape))
            values = torch.randn(tuple(param.shape), generator=generator, dtype=torch.float32) * std + mean
            param.copy_(values.to(param.dtype))


def _build(device: str | torch.device, dtype: torch.dtype, attn_implementation: str) -> Video3DLLM:
    config = Video3DLLMConfig.from_pretrained(DEFAULT_MODEL_DIR)
    tower_config = resolve_tower_config(config.mm_vision_tower, DEFAULT_MODEL_DIR)
    return Video3DLLM.build(config, tower_config, device=device, dtype=dtype, attn_implementation=attn_implementation)


def load_default_model(device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                       attn_implementation: str | None = None, seed: int = DEFAULT_SEED) -> Video3DLLM:
    """Build the embedded tiny model (random weights from ``seed``) with its tokenizer, offline.

    Defaults follow ``Video3DLLM.from_pretrained``: CPU float32 + eager attention, CUDA bfloat16.
    Returns a ``Video3DLLM`` in eval mode without gradients; ``checkpoint_dir`` is this folder.
    """
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    attn = attn_implementation or default_attn_implementation(dev, dt)
    model = _build(dev, dt, attn)
    weights = default_weights(int(seed))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name])
    model.eval().requires_grad_(False)
    model.checkpoint_dir = DEFAULT_MODEL_DIR
    model.generation_config = load_generation_config(DEFAULT_MODEL_DIR, model.config.text_config)
    model.tokenizer = load_tokenizer(DEFAULT_MODEL_DIR)
    return model
