"""Load a checkpoint for training: a Video-3D LLM checkpoint, or the LLaVA-Video base it starts from.

Upstream fine-tunes `LLaVA-Video-7B-Qwen2`, which has the vision tower, projector and Qwen2 decoder
but no grounding head, no `<ground>`/`<coord>` tokens and none of the 3D settings. Training then
(`llava/train/train_3d.py`) sets the 3D config keys, adds the tokens (`add_tokens`, embeddings
resized, new rows initialised to the mean of the old ones) and creates the InfoNCE heads
(Linear -> ReLU -> LayerNorm -> Linear, freshly initialised; the "no object" target ~ N(0, 1)).
`load_training_model` does the same when the checkpoint lacks the grounding head, and otherwise is
`Video3DLLM.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from video3dllm_core.model import Video3DLLM, Video3DLLMConfig
from video3dllm_core.model.checkpoint import (
    WeightReader,
    find_weight_files,
    load_generation_config,
    load_weights,
    module_key_to_upstream,
    upstream_key_to_module,
)
from video3dllm_core.model.config import UPSTREAM_3D_DEFAULTS, read_config_json
from video3dllm_core.model.prompts import ensure_special_tokens, load_tokenizer
from video3dllm_core.model.vision import resolve_tower_config

__all__ = ["UPSTREAM_3D_DEFAULTS", "add_attribute_match", "add_relation_match", "load_training_model", "init_from_base"]


def add_attribute_match(model: Video3DLLM, seed: int = 0) -> None:
    """Give ``model``'s grounding head the attribute match (ours; ``GroundingHead.match``) and set
    ``ground_attribute_match`` in its config, so that checkpoints saved from it carry both.

    The text side is initialised like a fresh ``nn.Linear`` from ``seed``, the object side with zeros:
    the model's scores are unchanged until the match is trained (``video3dllm train --attribute-match``).
    Raises ValueError when the model has no grounding head or already has a match.
    """
    from video3dllm_core.model.grounding import AttributeMatch

    _add_head_extension(model, "match", "ground_attribute_match", "attribute match",
                        AttributeMatch(model.hidden_size, model.config.mm_hidden_size), seed)


def add_relation_match(model: Video3DLLM, seed: int = 0) -> None:
    """Give ``model``'s grounding head the relation match (ours; ``GroundingHead.relation``) and set
    ``ground_relation_match`` in its config, so that checkpoints saved from it carry both.

    The landmark query is initialised like fresh layers from ``seed``, the feature weights with zeros: the
    model's scores are unchanged until the match is trained (``video3dllm train --relation-match``).
    Raises ValueError when the model has no grounding head or already has a relation match.
    """
    from video3dllm_core.model.grounding import RelationMatch

    _add_head_extension(model, "relation", "ground_relation_match", "relation match", RelationMatch(model.hidden_size), seed)


def _add_head_extension(model: Video3DLLM, attribute: str, config_key: str, what: str, module: torch.nn.Module,
                        seed: int) -> None:
    """Set ``module`` (seeded by its ``reset_parameters``) as ``model.ground_head.<attribute>`` and ``config_key``
    true in the model's config; raises ValueError when there is no grounding head or it already has one."""
    head = model.ground_head
    if head is None:
        raise ValueError(f"the {what} belongs to the grounding head; this model has none (ground_head_type)")
    if getattr(head, attribute) is not None:
        raise ValueError(f"this model already has the {what} (config {config_key}: true)")
    ref = head.zero_target
    module = module.to(device=ref.device, dtype=ref.dtype)
    module.reset_parameters(torch.Generator().manual_seed(int(seed)))  # type: ignore[operator]
    setattr(head, attribute, module)
    model.config = dataclasses.replace(model.config, **{config_key: True}, raw={**model.config.raw, config_key: True})


def load_training_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        attn_implementation: str | None = None, allow_pickle: bool = False) -> Video3DLLM:
    """A Video-3D LLM checkpoint as it is, or a LLaVA-Video base completed as upstream training does."""
    with WeightReader(find_weight_files(path, allow_pickle=allow_pickle)) as reader:
        has_head = "ground_head_zero_target" in reader
    if has_head:
        return Video3DLLM.from_pretrained(path, device=device, dtype=dtype, attn_implementation=attn_implementation,
                                          allow_pickle=allow_pickle)
    return init_from_base(path, device=device, dtype=dtype, attn_implementation=attn_implementation, allow_pickle=allow_pickle)


def init_from_base(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   attn_implementation: str | None = None, allow_pickle: bool = False, seed: int | None = None) -> Video3DLLM:
    """Build Video3DLLM from a base checkpoint without grounding head (see the module docstring)."""
    root = Path(path)
    raw = read_config_json(root)
    for key, value in UPSTREAM_3D_DEFAULTS.items():
        if raw.get(key) is None:
            raw[key] = value
    tokenizer = load_tokenizer(root)
    ids = ensure_special_tokens(tokenizer)
    raw["ground_token_ids"] = [ids.ground]
    raw["coord_token_ids"] = [ids.coord]
    with WeightReader(find_weight_files(root, allow_pickle=allow_pickle)) as reader:
        rows = int(reader.shape("model.embed_tokens.weight")[0])
        raw["vocab_size"] = max(rows, len(tokenizer))
        raw["tie_word_embeddings"] = "lm_head.weight" not in reader and bool(raw.get("tie_word_embeddings", False))
        config = Video3DLLMConfig.from_dict(raw)
        config.text_config.vocab_size = rows  # build with the checkpoint's rows, grow after loading
        tower = resolve_tower_config(config.mm_vision_tower, root)
        dev = torch.device(device)
        model = Video3DLLM.build(config, tower, device=dev, dtype=dtype, attn_implementation=attn_implementation or "eager")
        own = model.state_dict()
        optional = {name for name in own if name.startswith("ground_head.")}
        if raw["tie_word_embeddings"]:
            optional.add("language_model.lm_head.weight")
        load_weights(model, reader, upstream_key_to_module, optional=frozenset(optional), source=str(root),
                     key_name=module_key_to_upstream)
    if raw["tie_word_embeddings"]:
        model.language_model.tie_weights()
    if model.ground_head is not None:
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for module in model.ground_head.modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)):
                    module.reset_parameters()
            values = torch.randn(model.ground_head.zero_target.shape, generator=generator)
            model.ground_head.zero_target.copy_(values.to(model.ground_head.zero_target))
    if len(tokenizer) > rows:
        _grow_embeddings(model, len(tokenizer))
    config.text_config.vocab_size = len(tokenizer)
    model.config.raw.update({"vocab_size": len(tokenizer)})
    model.tokenizer = tokenizer
    model.generation_config = load_generation_config(root, config.text_config)
    model.checkpoint_dir = root
    model.eval().requires_grad_(False)
    return model


def _grow_embeddings(model: Video3DLLM, size: int) -> None:
    """resize_token_embeddings + new rows = mean of the old ones (upstream add_tokens_and_resize_embeddings)."""
    lm: Any = model.language_model
    old = int(lm.get_input_embeddings().weight.shape[0])
    lm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None}.values():
            weight = emb.weight
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
