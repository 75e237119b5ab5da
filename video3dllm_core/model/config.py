"""Model configuration read from an upstream (LLaVA ``llava_qwen``) ``config.json``.

The upstream config is one flat Qwen2 config with the multimodal and 3D settings added as extra
keys. :class:`Video3DLLMConfig` splits it into the decoder's own transformers config (built with
``AutoConfig.for_model`` so that any decoder transformers knows can be used) and the multimodal
settings, and rejects values this implementation does not reproduce, naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

#: Upstream LLaVA model types and the decoder they wrap.
LLAVA_TEXT_MODEL_TYPES = {
    "llava_qwen": "qwen2",
    "llava_llama": "llama",
    "llava_mistral": "mistral",
    "llava_mixtral": "mixtral",
    "llava_gemma": "gemma",
}

#: Keys of the upstream config.json that describe the checkpoint's files, not the decoder.
_NOT_DECODER_KEYS = {"model_type", "architectures", "auto_map", "transformers_version"}

#: Only bilinear keeps the ceil(27 / 2) = 14 grid that the patch-averaged coordinates assume.
SUPPORTED_POOL_MODES = ("bilinear",)


class ConfigError(ValueError):
    """The checkpoint's config.json is missing a key or holds a value this code does not support."""


def text_model_type(model_type: str) -> str:
    """Map an upstream ``model_type`` (``llava_qwen``) to the decoder's transformers type (``qwen2``)."""
    if model_type in LLAVA_TEXT_MODEL_TYPES:
        return LLAVA_TEXT_MODEL_TYPES[model_type]
    if model_type.startswith("llava"):
        raise ConfigError(
            f"config.json: model_type {model_type!r} is not a known LLaVA decoder; "
            f"known: {sorted(LLAVA_TEXT_MODEL_TYPES)}"
        )
    return model_type


def text_config_from_dict(raw: dict[str, Any]) -> PretrainedConfig:
    """Build the decoder's transformers config from an (upstream or plain) config.json dict.

    No remote code: the decoder type must be one transformers ships.
    """
    if "model_type" not in raw:
        raise ConfigError("config.json: missing key 'model_type' (e.g. 'llava_qwen' or 'qwen2')")
    kind = text_model_type(str(raw["model_type"]))
    kwargs = {k: v for k, v in raw.items() if k not in _NOT_DECODER_KEYS}
    if kwargs.get("rope_scaling", "absent") is None:  # upstream sets it to None; transformers 5 warns on it
        del kwargs["rope_scaling"]
    try:
        config = AutoConfig.for_model(kind, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"config.json: decoder model_type {kind!r} is not supported by transformers: {exc}") from exc
    return config


def read_config_json(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a checkpoint folder (clear error when it is missing or not JSON)."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {path} (a checkpoint folder needs config.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _require(raw: dict[str, Any], key: str, hint: str) -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(f"config.json: missing key {key!r} ({hint})")
    return raw[key]


def _xyz(raw: dict[str, Any], key: str) -> tuple[float, float, float]:
    value = _require(raw, key, "three numbers, metres")
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"config.json: {key!r} must be a list of 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class Video3DLLMConfig:
    """Everything the model needs from config.json, validated.

    Only the settings of the released Video-3D LLM are implemented: mlp projector, ``spatial*``
    patch merge with ``grid`` newlines, ``avg[-discrete]-sin3d`` world position embedding,
    ``patch14`` object features and the ``infonce`` grounding head.
    """

    text_config: PretrainedConfig
    mm_vision_tower: str
    mm_hidden_size: int
    mm_projector_type: str = "mlp2x_gelu"
    mm_spatial_pool_stride: int = 2
    mm_spatial_pool_mode: str = "bilinear"
    mm_newline_position: str = "grid"
    mm_patch_merge_type: str = "spatial_unpad"
    world_position_embedding_type: str = "avg-discrete-sin3d"
    voxel_size: float = 0.1
    min_xyz_range: tuple[float, float, float] = (-15.0, -15.0, -5.0)
    max_xyz_range: tuple[float, float, float] = (15.0, 15.0, 5.0)
    object_feature_type: str = "patch14-pe"
    ground_head_type: str | None = "infonce"
    ground_token_ids: tuple[int, ...] = ()
    coord_token_ids: tuple[int, ...] = ()
    tokenizer_model_max_length: int | None = None
    prompt_newline_after_image: bool = True  # ours; false: no "\n" after <image> in inference prompts (training layout)
    ground_attribute_match: bool = False  # ours; true: the grounding head's attribute match (GroundingHead.match)
    ground_relation_match: bool = False  # ours; true: the grounding head's relation match (GroundingHead.relation)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def uses_position_embedding(self) -> bool:
        """False for ``world_position_embedding_type: none``, the paper's ablation without 3D position
        embedding (our extension, not an upstream value): video tokens and object features then carry no
        sin3d term; the Scan2Cap ``<coord>`` token keeps its location embedding, the only way to name the box."""
        return self.world_position_embedding_type != "none"

    @property
    def box_size_embedding(self) -> bool:
        """True for ``object_feature_type: patch14-pe-size`` (our extension, not an upstream value): object
        features also carry a learned embedding of the box's log size (``GroundingHead.size_embedding``)."""
        return self.object_feature_type == "patch14-pe-size"

    @property
    def discrete_positions(self) -> bool:
        """Whether patch/box coordinates are discretised on the voxel grid before the sine embedding."""
        return "discrete" in self.world_position_embedding_type

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> Video3DLLMConfig:
        return cls.from_dict(read_config_json(checkpoint_dir))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Video3DLLMConfig:
        text_config = text_config_from_dict(raw)
        get = raw.get
        cfg = cls(
            text_config=text_config,
            mm_vision_tower=str(
                _require(raw, "mm_vision_tower", "SigLIP tower: a folder relative to the checkpoint or a known name")
            ),
            mm_hidden_size=int(_require(raw, "mm_hidden_size", "width of the vision tower output")),
            mm_projector_type=str(get("mm_projector_type") or "linear"),
            mm_spatial_pool_stride=int(get("mm_spatial_pool_stride") or 2),
            mm_spatial_pool_mode=str(get("mm_spatial_pool_mode") or "bilinear"),
            mm_newline_position=str(get("mm_newline_position") or "one_token"),
            mm_patch_merge_type=str(get("mm_patch_merge_type") or "flat"),
            world_position_embedding_type=str(
                _require(raw, "world_position_embedding_type", "e.g. 'avg-discrete-sin3d'")
            ),
            voxel_size=float(_require(raw, "voxel_size", "metres, e.g. 0.1")),
            min_xyz_range=_xyz(raw, "min_xyz_range"),
            max_xyz_range=_xyz(raw, "max_xyz_range"),
            object_feature_type=str(get("object_feature_type") or "patch14-pe"),
            ground_head_type=get("ground_head_type"),
            ground_token_ids=tuple(int(i) for i in (get("ground_token_ids") or ())),
            coord_token_ids=tuple(int(i) for i in (get("coord_token_ids") or ())),
            tokenizer_model_max_length=get("tokenizer_model_max_length"),
            prompt_newline_after_image=get("prompt_newline_after_image", True),
            ground_attribute_match=get("ground_attribute_match", False),
            ground_relation_match=get("ground_relation_match", False),
            raw=dict(raw),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Reject settings whose upstream behaviour is not implemented here (named key + supported values)."""
        ptype = self.mm_projector_type
        if not (ptype == "linear" or (ptype.startswith("mlp") and ptype.endswith("x_gelu"))):
            raise ConfigError(f"config.json: mm_projector_type {ptype!r} not supported (use 'linear' or 'mlpNx_gelu')")
        if self.mm_spatial_pool_mode not in SUPPORTED_POOL_MODES:
            raise ConfigError(
                f"config.json: mm_spatial_pool_mode {self.mm_spatial_pool_mode!r} not supported "
                f"(one of {SUPPORTED_POOL_MODES})"
            )
        if self.mm_spatial_pool_stride < 1:
            raise ConfigError(f"config.json: mm_spatial_pool_stride must be >= 1, got {self.mm_spatial_pool_stride}")
        if not self.mm_patch_merge_type.startswith("spatial") or "unpad" not in self.mm_patch_merge_type:
            raise ConfigError(
                f"config.json: mm_patch_merge_type {self.mm_patch_merge_type!r} not supported (use 'spatial_unpad')"
            )
        if self.mm_newline_position != "grid":
            raise ConfigError(
                f"config.json: mm_newline_position {self.mm_newline_position!r} not supported (use 'grid')"
            )
        wpe = self.world_position_embedding_type
        if wpe != "none" and (not wpe.startswith("avg") or "sin3d" not in wpe):
            raise ConfigError(
                f"config.json: world_position_embedding_type {wpe!r} not supported "
                "(use 'avg-discrete-sin3d', 'avg-sin3d', or 'none' for the no-3D-position ablation)"
            )
        if self.voxel_size <= 0:
            raise ConfigError(f"config.json: voxel_size must be > 0, got {self.voxel_size}")
        if any(lo >= hi for lo, hi in zip(self.min_xyz_range, self.max_xyz_range)):
            raise ConfigError(
                f"config.json: min_xyz_range {self.min_xyz_range} must be below max_xyz_range {self.max_xyz_range}"
            )
        if self.object_feature_type not in ("patch14-pe", "patch14-pe-size"):
            raise ConfigError(
                f"config.json: object_feature_type {self.object_feature_type!r} not supported (use 'patch14-pe', "
                "or 'patch14-pe-size' for the box size embedding of models trained here)"
            )
        if not isinstance(self.prompt_newline_after_image, bool):
            raise ConfigError(
                f"config.json: prompt_newline_after_image must be true or false, got {self.prompt_newline_after_image!r} "
                "(true, the default: upstream eval's newline after the image placeholder; false: the training layout)"
            )
        for key, what in (("ground_attribute_match", "attribute match"), ("ground_relation_match", "relation match")):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise ConfigError(
                    f"config.json: {key} must be true or false, got {value!r} "
                    f"(false, the default and upstream's head; true: the {what} of models trained here)"
                )
            if value and self.ground_head_type != "infonce":
                raise ConfigError(f"config.json: {key} needs the grounding head (ground_head_type 'infonce')")
        if self.ground_head_type not in (None, "infonce"):
            raise ConfigError(f"config.json: ground_head_type {self.ground_head_type!r} not supported (use 'infonce')")
        vocab = int(self.text_config.vocab_size)
        for key, ids in (("ground_token_ids", self.ground_token_ids), ("coord_token_ids", self.coord_token_ids)):
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise ConfigError(f"config.json: {key} {list(ids)} outside the vocabulary (vocab_size {vocab})")


#: The 3D settings upstream training (train_multi.sh / train_3d.py) puts into a LLaVA-Video config;
#: the released checkpoint carries them too.
UPSTREAM_3D_DEFAULTS: dict[str, Any] = {
    "world_position_embedding_type": "avg-discrete-sin3d",
    "voxel_size": 0.1,
    "min_xyz_range": [-15, -15, -5],
    "max_xyz_range": [15, 15, 5],
    "object_feature_type": "patch14-pe",
    "ground_head_type": "infonce",
    "ground_head_hidden_size": 512,
    "ground_loss_scale": 1,
    "ground_head_temperature": 0.07,
    "mm_newline_position": "grid",
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "bilinear",
    "mm_patch_merge_type": "spatial_unpad",
}


def released_7b_config_dict() -> dict[str, Any]:
    """config.json values of the released Video-3D LLM 7B (Qwen2-7B decoder, SigLIP so400m tower).

    For shape checks and benchmarks with random weights; the eval scripts force vocab_size 151649.
    """
    return {
        "model_type": "llava_qwen",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 151649,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "max_window_layers": 28,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_hidden_size": 1152,
        "mm_projector_type": "mlp2x_gelu",
        **UPSTREAM_3D_DEFAULTS,
        "ground_token_ids": [151647],
        "coord_token_ids": [151648],
        "tokenizer_model_max_length": 32768,
    }
