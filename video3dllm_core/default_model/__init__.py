"""The embedded default model: a small Video-3D LLM trained on our synthetic rooms, shipped in this folder.

No downloadable Video-3D LLM fits a package, so ``SceneEngine.load()``, ``video3dllm demo``,
``replay`` and the ROS node use this model when no ``model_path`` is given. It has the released
model's architecture scaled down (``video3dllm_training.small_model``: Qwen2 decoder hidden 192 x 4
layers, the parity fixture's SigLIP-layout tower with 2 kept layers, mlp2x_gelu projector, pooling
stride 9, avg-discrete-sin3d position embedding, InfoNCE grounding head with object features that also
carry the box size (``patch14-pe-size``), attribute and relation matches in the head; 2.6 M parameters,
10.4 MB of float32 safetensors), a
byte-level BPE tokenizer trained on the benchmark's text, and weights trained with ``video3dllm train``
on CPU on the synthetic five-task benchmark (``training/recipes/default_model.sh`` reproduces it).

It knows the benchmark's world only (rooms with a few coloured objects, the benchmark's phrasings).
Its grounding head finds the described object (colour, label, size, and relations to a landmark such as
"closest to the door"); its decoder does not read the video, so its short answers are language priors
and its captions are chosen by the grounding head among the decoder's words (docs/engine.md, "Captions").
Its measured accuracy on held-out rooms, next to chance and to the ablation without 3D position
embedding, and how often `video3dllm demo` is right over ten rooms, are in ``results.json`` here and in
docs/benchmarks.md. For real scenes, point
``EngineConfig.model_path`` at a real Video-3D LLM checkpoint.

The folder is an ordinary upstream-layout checkpoint (config.json, model.safetensors, the tower's
config, tokenizer files, generation_config.json), loaded by ``Video3DLLM.from_pretrained``.
``random_init_`` is the seeded initialisation ``video3dllm_training.small_model`` starts from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from video3dllm_core.model.modeling import Video3DLLM

__all__ = ["DEFAULT_MODEL_DIR", "load_default_model", "default_model_results", "default_model_parameters", "random_init_"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent
"""The checkpoint folder (config.json, model.safetensors, tokenizer, results.json)."""


def _std_for(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of the normal distribution a parameter is drawn from (the parity fixture's recipe).

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


def random_init_(model: torch.nn.Module, seed: int) -> None:
    """Draw every parameter of ``model`` in place from ``seed`` (float32 on the CPU, one ``torch.Generator``,
    sorted parameter-name order; distributions from ``_std_for``), the same on every machine."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            mean, std = _std_for(name, tuple(param.shape))
            values = torch.randn(tuple(param.shape), generator=generator, dtype=torch.float32) * std + mean
            param.copy_(values.to(param.dtype))


def load_default_model(device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                       attn_implementation: str | None = None) -> Video3DLLM:
    """Load the embedded model with its tokenizer, offline (``Video3DLLM.from_pretrained`` of this folder).

    Defaults follow ``Video3DLLM.from_pretrained``: CPU float32 + eager attention, CUDA bfloat16.

    Raises:
        FileNotFoundError: the weights are missing from the installed package (reinstall it).
    """
    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded default model's weights {DEFAULT_MODEL_DIR / 'model.safetensors'} are missing: reinstall "
            "video3dllm (pip install -e . ships them as package data) or pass a checkpoint as model_path"
        )
    return Video3DLLM.from_pretrained(DEFAULT_MODEL_DIR, device=device, dtype=dtype, attn_implementation=attn_implementation)


def default_model_results() -> dict[str, Any]:
    """``results.json``: how the model was made (benchmark, training command) and its recorded accuracy."""
    return dict(json.loads((DEFAULT_MODEL_DIR / "results.json").read_text(encoding="utf-8")))


def default_model_parameters() -> int:
    """Number of parameters in the shipped model.safetensors (read from its header; no weights are loaded)."""
    from video3dllm_core.model.checkpoint import WeightReader

    with WeightReader([DEFAULT_MODEL_DIR / "model.safetensors"]) as reader:
        return sum(math.prod(reader.shape(key)) for key in reader.keys())
