"""Video-3D LLM assembled from transformers' parts: SigLIP tower, projector, 3D PE, decoder, grounding.

Inference API (explicit, one step per method)::

    model = Video3DLLM.from_pretrained(path)                  # CPU float32 / CUDA bf16 by default
    visual = model.encode_frames(crop_rgb, world_coords)      # [V,384,384,3] uint8 / float32 metres
    merged = model.build_inputs_embeds(input_ids, visual)     # ids with -200 where the video goes
    answer = model.generate(merged, max_new_tokens=64)        # greedy, stops at <|im_end|>
    objects = model.object_features(visual, boxes)            # [N,6] centre + size, scene frame
    scores = model.ground(merged, objects).scores             # [N+1], last = "no object"

Visual-prefix KV cache: ``prefix = model.prefill_prefix(visual, input_ids)`` runs the decoder once
over the system prompt + image block; ``generate``/``ground``/``run_decoder`` with ``prefix=``
then feed only the query's own tokens (positions continue after the prefix) on a copy of it.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, SiglipVisionConfig
from transformers.initialization import no_init_weights
from transformers.modeling_utils import local_torch_dtype

from .checkpoint import (
    WeightReader,
    find_weight_files,
    load_generation_config,
    load_weights,
    module_key_to_upstream,
    upstream_key_to_module,
)
from .config import ConfigError, Video3DLLMConfig
from .decoding import GenerationOutput, decode, greedy_continue, new_cache, repetition_processors
from .listener_decoding import ListenerDecoding, listener_beam_search
from .grounding import GroundingHead, GroundingOutput
from .layout import MergedInputs, image_block, merge_sequence, pool_features, pooled_grid_size
from .objects import ObjectFeatures, check_boxes, mean_selected_features, min_inside_points, patch_inside_counts
from video3dllm_core.ingest import IngestConfig

from .position import discretize_coords, patch_average_coords, sin3d_embedding
from .projector import build_projector
from .prompts import load_tokenizer, special_token_ids
from .vision import VisionTower, kept_tower_config, pixel_values_from_crops, resolve_tower_config


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (parity), bfloat16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def default_attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """``eager`` on CPU (what the parity fixture used), FlashAttention-2 on CUDA when it imports, else SDPA."""
    if device.type != "cuda":
        return "eager"
    if dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401
        except Exception:  # a broken flash_attn build must not stop the model from loading
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


@dataclass(frozen=True)
class VisualFeatures:
    """Everything computed from the keyframes once and reused by every query on them."""

    siglip: torch.Tensor  # [V, 729, mm_hidden] tower output (kept last layer, no post-LN)
    projected: torch.Tensor  # [V, 729, H] projector output, un-pooled (object features use it)
    pooled: torch.Tensor  # [V, 196, H] bilinear 27x27 -> 14x14
    patch_coords: torch.Tensor  # [V, 14, 14, 3] float32 block-mean world coordinates (metres)
    pe_coords: torch.Tensor  # [V, 14, 14, 3] float32 coordinates fed to sin3d (voxel indices if discrete)
    position_embedding: torch.Tensor  # [V, 196, H] float32 sin3d of pe_coords
    image_block: torch.Tensor  # [V*14*15, H] pooled + PE with a newline after each row
    world_coords: torch.Tensor  # [V, 384, 384, 3] float32 per-pixel world coordinates (object selection)

    @property
    def num_frames(self) -> int:
        return int(self.siglip.shape[0])


@dataclass
class DecoderOutput:
    """Final (post-norm) hidden states of the positions fed to the decoder, plus its KV cache."""

    hidden: torch.Tensor  # [T, H]
    start: int  # merged-sequence position of hidden[0] (the prefix length when a prefix was used)
    cache: Any = field(repr=False)

    def hidden_at(self, position: int) -> torch.Tensor:
        if not self.start <= position < self.start + self.hidden.shape[0]:
            raise IndexError(
                f"position {position} was not computed here (positions {self.start}.."
                f"{self.start + self.hidden.shape[0] - 1}; earlier ones live in the prefix cache)"
            )
        return self.hidden[position - self.start]


@dataclass
class VisualPrefix:
    """Decoder KV cache of the merged sequence up to the end of the image block, for one keyframe set."""

    cache: Any = field(repr=False)
    length: int  # tokens in the prefix (= image_end of every query built on it)
    input_ids: tuple[int, ...]  # ids before the image placeholder
    embeds: torch.Tensor = field(repr=False)  # [length, H] the embeddings the cache was computed from


class Video3DLLM(nn.Module):
    """The full model. Sub-module names follow :data:`checkpoint.UPSTREAM_PREFIXES`."""

    def __init__(self, config: Video3DLLMConfig, tower_config: SiglipVisionConfig,
                 attn_implementation: str = "eager", dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        text_config = copy.deepcopy(config.text_config)
        self.language_model: PreTrainedModel = AutoModelForCausalLM.from_config(
            text_config, attn_implementation=attn_implementation, dtype=dtype or torch.get_default_dtype()
        )
        kept = kept_tower_config(tower_config, attn_implementation)
        if kept.hidden_size != config.mm_hidden_size:
            raise ConfigError(
                f"config.json: mm_hidden_size {config.mm_hidden_size} differs from the vision tower's "
                f"hidden_size {kept.hidden_size}"
            )
        self.vision_tower = VisionTower(kept)
        grid = self.vision_tower.grid
        pooled = pooled_grid_size(grid, config.mm_spatial_pool_stride)
        if (grid * self.vision_tower.patch_size) % pooled != 0:
            raise ConfigError(
                f"vision tower grid {grid} pooled to {pooled} does not split its {grid * self.vision_tower.patch_size}"
                " pixels into equal blocks for the patch coordinates"
            )
        self.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, hidden)
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.ground_head = (GroundingHead(hidden, box_size_embedding=config.box_size_embedding,
                                          match_tower_width=config.mm_hidden_size if config.ground_attribute_match else None,
                                          relation_match=config.ground_relation_match)
                            if config.ground_head_type == "infonce" else None)
        self.tokenizer: Any = None
        self.generation_config: Any = None
        self.checkpoint_dir: Path | None = None

    # ------------------------------------------------------------------ construction / loading
    @classmethod
    def build(cls, config: Video3DLLMConfig, tower_config: SiglipVisionConfig, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, attn_implementation: str = "eager") -> Video3DLLM:
        """Allocate the model directly on ``device`` in ``dtype`` with uninitialised weights.

        Use ``device='meta'`` to check shapes of a large configuration without memory.
        """
        with torch.device(device), local_torch_dtype(dtype), no_init_weights():
            model = cls(config, tower_config, attn_implementation=attn_implementation, dtype=dtype)
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                        allow_pickle: bool = False, load_tokenizer_files: bool = True) -> Video3DLLM:
        """Load an upstream (``llava_qwen`` layout) checkpoint folder, fully offline."""
        root = Path(path)
        dev = torch.device(device) if device is not None else default_device()
        dt = dtype or default_dtype(dev)
        attn = attn_implementation or default_attn_implementation(dev, dt)
        config = Video3DLLMConfig.from_pretrained(root)
        with WeightReader(find_weight_files(root, allow_pickle=allow_pickle)) as reader:
            config, tied = _fit_text_config_to_weights(config, reader, "model.embed_tokens.weight", "lm_head.weight")
            tower_config = resolve_tower_config(config.mm_vision_tower, root)
            model = cls.build(config, tower_config, device=dev, dtype=dt, attn_implementation=attn)
            optional = frozenset({"language_model.lm_head.weight"}) if tied else frozenset()
            load_weights(model, reader, upstream_key_to_module, optional=optional, source=str(root),
                         key_name=module_key_to_upstream)
        if tied:
            model.language_model.tie_weights()
        model.eval().requires_grad_(False)
        model.checkpoint_dir = root
        model.generation_config = load_generation_config(root, config.text_config)
        if load_tokenizer_files:
            model.tokenizer = load_tokenizer(root)
        return model

    def ingest_config(self, **overrides: Any) -> IngestConfig:
        """The frame ingestor's settings that produce this model's inputs: the tower's crop and patch size and the
        pooled grid the patch coordinates are averaged over (14 for the released model's 27 patches and stride 2).
        ``overrides`` set the other fields (e.g. ``voxel_size_m``)."""
        tower = self.vision_tower
        side = pooled_grid_size(tower.grid, self.config.mm_spatial_pool_stride)
        return IngestConfig(crop_size=tower.image_size, vision_patch_px=tower.patch_size, patch_grid=side, **overrides)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end generation: generation_config's eos (``<|im_end|>``), else the decoder config's."""
        source = self.generation_config if self.generation_config is not None else self.config.text_config
        eos = getattr(source, "eos_token_id", None)
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    # ------------------------------------------------------------------ visual path
    def encode_frames(self, crop_rgb: np.ndarray | torch.Tensor, world_coords: np.ndarray | torch.Tensor,
                      patch_world_coords: np.ndarray | torch.Tensor | None = None,
                      batch_size: int | None = None) -> VisualFeatures:
        """Encode V keyframes: SigLIP, projector, bilinear pooling, 3D position embedding, image block.

        ``crop_rgb`` [V, S, S, 3] uint8 and ``world_coords`` [V, S, S, 3] (metres, scene frame) are
        the model-ready centre crops from the ingestor; ``patch_world_coords`` [V, 14, 14, 3], when
        given, replaces the block means computed here. ``batch_size`` bounds frames per tower call.
        """
        tower = self.vision_tower
        size = tower.image_size
        pixels = pixel_values_from_crops(crop_rgb, size, self.device, self.dtype)
        frames = pixels.shape[0]
        coords = torch.as_tensor(world_coords).to(device=self.device, dtype=torch.float32)
        if coords.shape != (frames, size, size, 3):
            raise ValueError(f"world_coords must be [V={frames}, {size}, {size}, 3], got {tuple(coords.shape)}")
        step = frames if not batch_size else max(1, int(batch_size))
        siglip = torch.cat([tower(pixels[i:i + step]) for i in range(0, frames, step)], dim=0)
        projected = self.mm_projector(siglip)
        stride = self.config.mm_spatial_pool_stride
        pooled = pool_features(projected, tower.grid, stride)
        side = pooled_grid_size(tower.grid, stride)
        if patch_world_coords is None:
            patch_coords = patch_average_coords(coords, tower.grid * tower.patch_size, side)
        else:
            patch_coords = torch.as_tensor(patch_world_coords).to(device=self.device, dtype=torch.float32)
            if patch_coords.shape != (frames, side, side, 3):
                raise ValueError(
                    f"patch_world_coords must be [V={frames}, {side}, {side}, 3], got {tuple(patch_coords.shape)}"
                )
        pe_coords = self.pe_coords(patch_coords)
        pe = self.position_embedding(pe_coords.flatten(1, 2))
        block = image_block(pooled + pe.to(pooled.dtype), self.image_newline)
        return VisualFeatures(siglip=siglip, projected=projected, pooled=pooled, patch_coords=patch_coords,
                              pe_coords=pe_coords, position_embedding=pe, image_block=block, world_coords=coords)

    def pe_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates ``[..., 3]`` (scene frame, metres) as fed to the sinusoidal 3D position embedding.

        With ``config.discrete_positions`` (the upstream default) they are clamped to
        ``[min_xyz_range, max_xyz_range]`` and discretised to voxel indices of ``voxel_size``;
        otherwise they pass through unchanged. Public because the engine's per-frame vision cache
        recomputes position embeddings when the scene frame moves and must use the very same
        arithmetic as ``encode_frames``, ``location_embedding`` and ``object_features``.
        """
        cfg = self.config
        if cfg.discrete_positions:
            return discretize_coords(coords, cfg.min_xyz_range, cfg.max_xyz_range, cfg.voxel_size)
        return coords

    def position_embedding(self, pe_coords: torch.Tensor) -> torch.Tensor:
        """The 3D position embedding ``[..., H]`` float32 added to video tokens and object features: sin3d of
        ``pe_coords`` (from :meth:`pe_coords`), or zeros for the no-3D-position ablation
        (``config.uses_position_embedding`` False)."""
        if not self.config.uses_position_embedding:
            return torch.zeros((*pe_coords.shape[:-1], self.hidden_size), dtype=torch.float32, device=pe_coords.device)
        return sin3d_embedding(pe_coords, self.hidden_size)

    def location_embedding(self, xyz: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(coordinates fed to sin3d [3], embedding [H] float32) of one scene-frame location."""
        point = torch.as_tensor(np.asarray(xyz, dtype=np.float32)).to(self.device)
        if point.shape != (3,):
            raise ValueError(f"a location must be 3 numbers (x, y, z), got shape {tuple(point.shape)}")
        coords = self.pe_coords(point[None])[0]
        return coords, sin3d_embedding(coords[None], self.hidden_size)[0]

    # ------------------------------------------------------------------ sequence
    def build_inputs_embeds(self, input_ids: Any, visual: VisualFeatures | None,
                            coord_xyz: Any = None) -> MergedInputs:
        """Merged decoder input for one query; ``coord_xyz`` is the Scan2Cap location of ``<coord>``."""
        ids = [int(i) for i in (input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids)]
        coord_pe = None if coord_xyz is None else self.location_embedding(coord_xyz)[1]
        coord_id = self.config.coord_token_ids[0] if self.config.coord_token_ids else None
        return merge_sequence(
            ids, self.language_model.get_input_embeddings(), None if visual is None else visual.image_block,
            coord_token_id=coord_id, coord_pe=coord_pe, max_length=self.config.tokenizer_model_max_length,
        )

    # ------------------------------------------------------------------ decoder
    @torch.no_grad()
    def prefill_prefix(self, visual: VisualFeatures, input_ids: Any) -> VisualPrefix:
        """Run the decoder once over [ids before -200] + image block and keep its KV cache.

        ``input_ids`` may be any query's ids (only the part up to the placeholder is used).
        """
        ids = [int(i) for i in (input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids)]
        if -200 not in ids:
            raise ValueError("input_ids for a visual prefix must contain the image placeholder -200")
        head = ids[: ids.index(-200) + 1]
        merged = self.build_inputs_embeds(head, visual)
        cache = new_cache(self.language_model)
        decode(self.language_model, merged.embeds, 0, cache)
        return VisualPrefix(cache=cache, length=merged.length, input_ids=tuple(head[:-1]), embeds=merged.embeds)

    def _check_prefix(self, merged: MergedInputs, prefix: VisualPrefix) -> None:
        same = (
            merged.image_end == prefix.length
            and merged.image_start is not None
            and tuple(merged.input_ids[: merged.image_start]) == prefix.input_ids
            and torch.equal(merged.embeds[: prefix.length], prefix.embeds)
        )
        if not same:
            raise ValueError(
                "visual prefix does not match this query (different system prompt, keyframes or model); "
                "prefill a prefix for these keyframes"
            )
        if merged.length <= prefix.length:
            raise ValueError("query has no tokens after the image block; nothing to run beyond the prefix")

    def run_decoder(self, merged: MergedInputs, prefix: VisualPrefix | None = None) -> DecoderOutput:
        """Final hidden states of the merged sequence (only the suffix when ``prefix`` is given)."""
        if prefix is None:
            cache, start = new_cache(self.language_model), 0
        else:
            self._check_prefix(merged, prefix)
            cache, start = copy.deepcopy(prefix.cache), prefix.length
        hidden = decode(self.language_model, merged.embeds[start:], start, cache)
        return DecoderOutput(hidden=hidden, start=start, cache=cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of hidden state rows [..., H] -> [..., vocab]."""
        head: Any = self.language_model.get_output_embeddings()
        return head(hidden)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, merged: MergedInputs, max_new_tokens: int = 512, num_beams: int = 1,
                 prefix: VisualPrefix | None = None, eos_token_ids: list[int] | None = None) -> GenerationOutput:
        """Greedy decoding with KV cache (beam search through transformers' ``generate``), stopping at eos.

        A ``repetition_penalty`` in generation_config.json is applied to the generated tokens, as
        transformers' ``generate`` does when fed embeddings only; sampling settings are ignored.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = self.eos_token_ids if eos_token_ids is None else [int(e) for e in eos_token_ids]
        if num_beams > 1:
            if prefix is not None:  # beams re-run the full sequence; still refuse a mismatched prefix
                self._check_prefix(merged, prefix)
            return self._beam_search(merged, max_new_tokens, num_beams, eos)
        out = self.run_decoder(merged, prefix)
        return greedy_continue(self.language_model, out.hidden[-1], out.cache, merged.length, max_new_tokens,
                               eos, repetition_processors(self.generation_config))

    @torch.no_grad()
    def generate_with_listener(self, merged: MergedInputs, visual: VisualFeatures, objects: ObjectFeatures,
                               target_index: int, listener_input_ids: Callable[[str], Sequence[int]],
                               settings: ListenerDecoding, max_new_tokens: int = 512, prefix: VisualPrefix | None = None,
                               listener_prefix: VisualPrefix | None = None) -> GenerationOutput:
        """A caption of ``objects``' box ``target_index`` by the speaker-listener beam search
        (:mod:`.listener_decoding`): this decoder speaks from ``merged`` (the caption prompt, ``<coord>`` at
        the box), this grounding head listens. ``listener_input_ids(text)`` is the grounding prompt that
        asks for ``text`` as a description (ending in ``<ground>``); ``listener_prefix`` its visual prefix. The
        speaker never proposes the tokenizer's added tokens other than the end of the answer."""
        if self.ground_head is None:
            raise ValueError("listener decoding needs the grounding head; this checkpoint has none")
        if self.tokenizer is None:
            raise ValueError("listener decoding needs the model's tokenizer; load it with the checkpoint")
        count = int(objects.features.shape[0])
        if not 0 <= int(target_index) < count:
            raise ValueError(f"target_index {target_index} outside the {count} candidate boxes")
        eos = self.eos_token_ids
        temperature = float(self.config.raw.get("ground_head_temperature", 0.07))
        prompt = self.run_decoder(merged, prefix)  # the caption prompt's cache; each beam runs on it, then crops back
        embed: Any = self.language_model.get_input_embeddings()
        processors = repetition_processors(self.generation_config)  # as greedy decoding applies them
        vocab = int(self.language_model.get_output_embeddings().weight.shape[0])
        # a caption is words: the tokenizer's added tokens (<coord>, <ground>, <image>, chat markers) are never
        # proposed, except the end of the answer (a description holding them is no grounding prompt)
        banned = sorted(i for i in set(self.tokenizer.get_added_vocab().values()) - set(eos) if 0 <= i < vocab)
        heard: dict[str, float] = {}

        def speaker(tokens: list[int]) -> torch.Tensor:
            hidden = prompt.hidden[-1]
            if tokens:
                ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
                hidden = decode(self.language_model, embed(ids), merged.length, prompt.cache)[-1]
                prompt.cache.crop(-len(tokens))  # transformers 5: a negative count drops that many
            logits = self.logits(hidden[None]).float()
            if processors is not None:
                logits = processors(torch.tensor([tokens], dtype=torch.long, device=self.device), logits)
            logits[:, banned] = -torch.inf
            return torch.log_softmax(logits[0], dim=-1)

        def listener(candidates: list[list[int]]) -> list[float]:
            texts = [str(self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)).strip()
                     for tokens in candidates]
            new = sorted({text for text in texts if text and text not in heard})
            merged_new = [self.build_inputs_embeds(list(listener_input_ids(text)), visual) for text in new]
            for text, result in zip(new, self.ground_batch(merged_new, objects, prefix=listener_prefix)):
                heard[text] = float(result.scores[int(target_index)]) / temperature
            return [heard[text] if text else 0.0 for text in texts]

        return listener_beam_search(speaker, listener, settings, max_new_tokens, eos)

    def _beam_search(self, merged: MergedInputs, max_new_tokens: int, num_beams: int, eos: list[int]) -> GenerationOutput:
        from transformers import GenerationConfig

        base = self.generation_config.to_dict() if self.generation_config is not None else {}
        base.update(do_sample=False, num_beams=num_beams, max_new_tokens=max_new_tokens,
                    eos_token_id=eos or None, temperature=None, top_p=None, top_k=None)
        if base.get("pad_token_id") is None and eos:
            base["pad_token_id"] = eos[0]
        gen_config = GenerationConfig(**{k: v for k, v in base.items() if not k.startswith("_")})
        lm: Any = self.language_model
        sequences = lm.generate(
            inputs_embeds=merged.embeds[None],
            attention_mask=torch.ones((1, merged.length), dtype=torch.long, device=self.device),
            generation_config=gen_config,
        )
        ids = [int(t) for t in sequences[0].tolist()]
        if eos and any(t in eos for t in ids):
            first = min(i for i, t in enumerate(ids) if t in eos)
            return GenerationOutput(token_ids=ids[: first + 1], step_logits=None, stopped_at_eos=True)
        return GenerationOutput(token_ids=ids, step_logits=None, stopped_at_eos=False)

    # ------------------------------------------------------------------ grounding
    def object_features(self, visual: VisualFeatures, boxes: np.ndarray | torch.Tensor) -> ObjectFeatures:
        """Features of candidate boxes [N, 6] (centre xyz, size xyz; scene frame, metres)."""
        tower = self.vision_tower
        box = check_boxes(torch.as_tensor(np.asarray(boxes) if not torch.is_tensor(boxes) else boxes).to(self.device))
        counts = patch_inside_counts(visual.world_coords, box, tower.patch_size, tower.grid)
        mask = counts >= min_inside_points(tower.patch_size)
        before = mean_selected_features(visual.projected, mask)
        centers = self.pe_coords(box[:, :3])
        center_pe = self.position_embedding(centers)
        features = before + center_pe.to(before.dtype)
        size_embedding = None
        if self.config.box_size_embedding and self.ground_head is not None:
            size_embedding = self.ground_head.size_embedding(box[:, 3:])
            features = features + size_embedding.to(before.dtype)
        tower_mean = None
        if self.ground_head is not None and self.ground_head.match is not None:
            tower_mean = mean_selected_features(visual.siglip, mask)
        return ObjectFeatures(features=features, before_pe=before, center_discrete=centers, center_pe=center_pe,
                              inside_count=counts, patch_mask=mask, size_embedding=size_embedding, tower_mean=tower_mean,
                              boxes_m=box)

    def ground_position(self, merged: MergedInputs) -> int:
        """Merged position of the (last) ``<ground>`` token, whose hidden state the head reads."""
        positions = merged.token_positions(self.config.ground_token_ids)
        if not positions:
            raise ValueError(
                f"input_ids contain no <ground> token (ids {list(self.config.ground_token_ids)}); grounding prompts "
                "end with the assistant answer '<ground><|im_end|>\\n'"
            )
        return positions[-1]

    def text_mean(self, merged: MergedInputs) -> torch.Tensor:
        """[H] mean input embedding of the user's text after the image block (up to its ``<|im_end|>``): the
        description as the attribute match reads it (``GroundingHead.match``)."""
        ids = merged.input_ids
        if merged.image_start is None:
            raise ValueError("the attribute match reads the text after the image placeholder; input_ids have none")
        if self.tokenizer is None:
            raise ValueError("the attribute match needs the model's tokenizer (for <|im_end|>); load it with the checkpoint")
        im_end = special_token_ids(self.tokenizer).im_end
        start = merged.image_start + 1
        stop = next((i for i in range(start, len(ids)) if ids[i] == im_end), len(ids))
        if stop == start:
            raise ValueError("no text between the image placeholder and <|im_end|>: the description is empty")
        rows = [merged.merged_position(i) for i in range(start, stop)]
        return merged.embeds[rows].float().mean(dim=0)

    def ground_inputs(self, merged: MergedInputs, objects: ObjectFeatures) -> dict[str, torch.Tensor]:
        """The grounding head's keyword inputs beyond features and state: text_mean / tower_mean with the
        attribute match, text_mean / boxes_m with the relation match, none without either."""
        head = self.ground_head
        if head is None or (head.match is None and head.relation is None):
            return {}
        inputs = {"text_mean": self.text_mean(merged)}
        if head.match is not None:
            if objects.tower_mean is None:
                raise ValueError("object features lack tower_mean; compute them with this model's object_features")
            inputs["tower_mean"] = objects.tower_mean
        if head.relation is not None:
            if objects.boxes_m is None:
                raise ValueError("object features lack boxes_m; compute them with this model's object_features")
            inputs["boxes_m"] = objects.boxes_m
        return inputs

    @torch.no_grad()
    def ground(self, merged: MergedInputs, objects: ObjectFeatures,
               prefix: VisualPrefix | None = None) -> GroundingOutput:
        """Scores [N+1] of the candidates (last = "no object") for a grounding prompt: cosines, plus the
        attribute match when the model has one."""
        return self.ground_batch([merged], objects, prefix=prefix)[0]

    @torch.no_grad()
    def ground_batch(self, merged: Sequence[MergedInputs], objects: ObjectFeatures, prefix: VisualPrefix | None = None,
                     batch_size: int = 16) -> list[GroundingOutput]:
        """``ground`` of several grounding prompts against the same candidates (``ground`` is this for one), their
        decoder runs batched (``batch_size`` sequences at a time, right-padded: the causal decoder's ``<ground>``
        states do not see the padding; each batch repeats the prefix cache, so a long prefix wants a small batch)."""
        if self.ground_head is None:
            raise ValueError("this checkpoint has no grounding head (config ground_head_type is not 'infonce')")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        positions = [self.ground_position(m) for m in merged]
        if prefix is not None:
            for m in merged:
                self._check_prefix(m, prefix)
        start = 0 if prefix is None else prefix.length
        out: list[GroundingOutput] = []
        for first in range(0, len(merged), batch_size):
            chunk = list(merged[first:first + batch_size])
            suffixes = [m.embeds[start:] for m in chunk]
            steps = max(int(x.shape[0]) for x in suffixes)
            embeds = suffixes[0].new_zeros((len(chunk), steps, suffixes[0].shape[-1]))
            for row, x in enumerate(suffixes):
                embeds[row, : x.shape[0]] = x
            cache = new_cache(self.language_model) if prefix is None else copy.deepcopy(prefix.cache)
            if prefix is not None:
                cache.batch_repeat_interleave(len(chunk))
            hidden = decode(self.language_model, embeds, start, cache)
            for row, m in enumerate(chunk):
                at = hidden[row, positions[first + row] - start][None]
                out.append(self.ground_head(objects.features, at, **self.ground_inputs(m, objects)))
        return out


def _fit_text_config_to_weights(config: Video3DLLMConfig, reader: WeightReader, embed_key: str,
                                head_key: str) -> tuple[Video3DLLMConfig, bool]:
    """Take the vocabulary size from the embedding matrix and decide on tied embeddings.

    The eval scripts force ``vocab_size = len(tokenizer)`` and ``tie_word_embeddings = False``; the
    checkpoint's own tensors are the ground truth for both. Returns (config, tied).
    """
    text_config = config.text_config
    if embed_key in reader:
        text_config.vocab_size = int(reader.shape(embed_key)[0])
    tied = head_key not in reader and bool(getattr(text_config, "tie_word_embeddings", False))
    text_config.tie_word_embeddings = tied
    config.validate()
    return config, tied


def load_language_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        attn_implementation: str | None = None, allow_pickle: bool = False) -> PreTrainedModel:
    """Load a plain decoder checkpoint (e.g. ``qwen2``) with the same strict, offline loader."""
    from .config import read_config_json, text_config_from_dict

    root = Path(path)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    attn = attn_implementation or default_attn_implementation(dev, dt)
    text_config = text_config_from_dict(read_config_json(root))
    with WeightReader(find_weight_files(root, allow_pickle=allow_pickle)) as reader:
        if "model.embed_tokens.weight" in reader:
            text_config.vocab_size = int(reader.shape("model.embed_tokens.weight")[0])
        tied = "lm_head.weight" not in reader and bool(getattr(text_config, "tie_word_embeddings", False))
        text_config.tie_word_embeddings = tied
        with torch.device(dev), local_torch_dtype(dt), no_init_weights():
            model: PreTrainedModel = AutoModelForCausalLM.from_config(text_config, attn_implementation=attn, dtype=dt)
        load_weights(model, reader, lambda key: key, optional=frozenset({"lm_head.weight"}) if tied else frozenset(),
                     source=str(root))
    if tied:
        model.tie_weights()
    model.eval().requires_grad_(False)
    return model
