"""SigLIP vision tower, built from transformers' ``SiglipVisionModel``.

Upstream (LLaVA ``SigLipVisionTower``) loads the tower folder, deletes the last encoder layer and
returns the hidden state after the remaining last layer, without the post-layernorm and without
the pooling head: that deletion is what "select layer -2" means for this model. The weights
themselves come from the main checkpoint (``model.vision_tower.vision_tower.vision_model.*``),
so only the tower's *config* is needed here. It is read from a local folder (relative to the
checkpoint, as the fixture does) or from a built-in table for the released SigLIP names; no hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from .config import ConfigError, read_config_json
from .constants import SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD

#: Configs of the SigLIP towers released LLaVA-Video models name, so no hub access is needed.
BUILTIN_TOWER_CONFIGS: dict[str, dict[str, Any]] = {
    "google/siglip-so400m-patch14-384": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 384,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    },
}


def _tower_config_from_dict(raw: dict[str, Any], where: str) -> SiglipVisionConfig:
    kind = raw.get("model_type", "siglip_vision_model")
    if kind == "siglip" and isinstance(raw.get("vision_config"), dict):
        raw = raw["vision_config"]
    elif kind != "siglip_vision_model":
        raise ConfigError(f"{where}: model_type {kind!r} is not a SigLIP vision tower (need 'siglip_vision_model')")
    keys = set(BUILTIN_TOWER_CONFIGS["google/siglip-so400m-patch14-384"])
    return SiglipVisionConfig(**{k: v for k, v in raw.items() if k in keys})


def resolve_tower_config(mm_vision_tower: str, checkpoint_dir: str | Path | None) -> SiglipVisionConfig:
    """Find the tower config: ``<checkpoint>/<name>/config.json``, an absolute folder, or the built-in table."""
    candidates: list[Path] = []
    if checkpoint_dir is not None:
        candidates.append(Path(checkpoint_dir) / mm_vision_tower)
    candidates.append(Path(mm_vision_tower))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return _tower_config_from_dict(read_config_json(folder), str(folder / "config.json"))
    if mm_vision_tower in BUILTIN_TOWER_CONFIGS:
        return SiglipVisionConfig(**BUILTIN_TOWER_CONFIGS[mm_vision_tower])
    raise ConfigError(
        f"config.json: mm_vision_tower {mm_vision_tower!r} is neither a folder with config.json "
        f"(looked in {[str(c) for c in candidates]}) nor a known tower {sorted(BUILTIN_TOWER_CONFIGS)}; "
        "copy the tower's config.json into a folder next to the checkpoint and name it there"
    )


def kept_tower_config(tower_config: SiglipVisionConfig, attn_implementation: str) -> SiglipVisionConfig:
    """The config of the tower as upstream runs it: last encoder layer deleted, no pooling head."""
    if tower_config.num_hidden_layers < 2:
        raise ConfigError("vision tower needs >= 2 encoder layers (upstream deletes the last one)")
    cfg = SiglipVisionConfig(**tower_config.to_dict())
    cfg.num_hidden_layers = tower_config.num_hidden_layers - 1
    cfg.vision_use_head = False
    cfg._attn_implementation = attn_implementation
    return cfg


class VisionTower(nn.Module):
    """``SiglipVisionModel`` run up to its (kept) last encoder layer, without post-layernorm.

    ``post_layernorm`` stays a parameter so that the checkpoint's keys load one-to-one, but it is
    not applied (upstream reads ``hidden_states[-1]``).
    """

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.tower = SiglipVisionModel(config)
        self.tower.use_head = False

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)  # type: ignore[arg-type]

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)  # type: ignore[arg-type]

    @property
    def grid(self) -> int:
        """Patches per side (27 for 384 / 14)."""
        return self.image_size // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[V, 3, S, S] normalised pixels -> [V, grid*grid, mm_hidden] patch features (row-major)."""
        hidden = self.tower.embeddings(pixel_values)
        return self.tower.encoder(inputs_embeds=hidden).last_hidden_state


def pixel_values_from_crops(crop_rgb: np.ndarray | torch.Tensor, image_size: int, device: torch.device,
                            dtype: torch.dtype) -> torch.Tensor:
    """[V, S, S, 3] uint8 RGB crops -> [V, 3, S, S] SigLIP input, exactly as the SigLIP processor.

    The processor rescales by 1/255 in float64, casts to float32, then normalises with mean/std 0.5.
    """
    crops = torch.as_tensor(crop_rgb)
    if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1:] != (image_size, image_size, 3):
        raise ValueError(
            f"crop_rgb must be uint8 [V, {image_size}, {image_size}, 3] (the model-ready centre crop), "
            f"got {crops.dtype} {tuple(crops.shape)}"
        )
    if crops.shape[0] == 0:
        raise ValueError("crop_rgb holds no frames (V = 0)")
    scaled = (crops.to(device=device, dtype=torch.float64) / 255.0).to(torch.float32)
    pixels = (scaled - SIGLIP_IMAGE_MEAN) / SIGLIP_IMAGE_STD
    return pixels.permute(0, 3, 1, 2).contiguous().to(dtype)
