"""Visual token layout and the merged LLM input sequence (upstream conventions 8-9).

* pooling: the projected 27x27 patch grid is resized to ceil(27 / stride) = 14 per side with
  bilinear interpolation (``align_corners=False``), not averaged;
* image block: per frame, per row of 14 tokens, the learned ``image_newline`` is appended
  (``mm_newline_position='grid'``): V x 14 x 15 tokens, frame-major, row-major. Newlines get no
  position embedding;
* merged sequence: embeddings of the ids before the ``-200`` placeholder, the image block, the
  embeddings of the ids after it; every ``<coord>`` row gets the sine embedding of the Scan2Cap
  location added. Positions are 0..L-1 with a plain causal mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .constants import IMAGE_TOKEN_INDEX


def pooled_grid_size(grid: int, stride: int) -> int:
    return math.ceil(grid / stride)


def pool_features(features: torch.Tensor, grid: int, stride: int) -> torch.Tensor:
    """[V, grid*grid, H] -> [V, g*g, H] with g = ceil(grid / stride), bilinear, align_corners=False."""
    frames, tokens, width = features.shape
    if tokens != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} patch features per frame, got {tokens}")
    size = pooled_grid_size(grid, stride)
    maps = features.view(frames, grid, grid, width).permute(0, 3, 1, 2)
    pooled = F.interpolate(maps, size=[size, size], mode="bilinear", align_corners=False)
    return pooled.permute(0, 2, 3, 1).reshape(frames, size * size, width)


def image_block(tokens: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """[V, g*g, H] visual tokens -> [V*g*(g+1), H]: each row of g tokens followed by ``newline``."""
    frames, count, width = tokens.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"visual tokens per frame must form a square grid, got {count}")
    rows = tokens.view(frames, side, side, width)
    newlines = newline.to(tokens.dtype).view(1, 1, 1, width).expand(frames, side, 1, width)
    return torch.cat([rows, newlines], dim=2).reshape(frames * side * (side + 1), width)


@dataclass(frozen=True)
class MergedInputs:
    """The decoder input of one query: embeddings plus the bookkeeping to map ids to positions.

    ``image_start``/``image_end`` (exclusive) delimit the image block in the merged sequence;
    both are None for a text-only input.
    """

    embeds: torch.Tensor
    input_ids: tuple[int, ...]
    image_start: int | None
    image_end: int | None

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])

    def merged_position(self, id_index: int) -> int:
        """Position in the merged sequence of ``input_ids[id_index]`` (which must not be the placeholder)."""
        if id_index < 0:
            id_index += len(self.input_ids)
        if not 0 <= id_index < len(self.input_ids):
            raise IndexError(f"id index {id_index} outside input_ids of length {len(self.input_ids)}")
        if self.image_start is None or self.image_end is None or id_index < self.image_start:
            return id_index
        if id_index == self.image_start:
            raise ValueError(f"input_ids[{id_index}] is the image placeholder, not a token")
        return id_index - 1 + (self.image_end - self.image_start)

    def token_positions(self, token_ids: Sequence[int]) -> list[int]:
        """Merged positions of every occurrence of any of ``token_ids``."""
        wanted = set(int(t) for t in token_ids)
        return [self.merged_position(i) for i, t in enumerate(self.input_ids) if t in wanted]


def merge_sequence(input_ids: Sequence[int], embed_tokens: torch.nn.Module, block: torch.Tensor | None,
                   coord_token_id: int | None = None, coord_pe: torch.Tensor | None = None,
                   max_length: int | None = None) -> MergedInputs:
    """Splice the image block into the token embeddings at the ``-200`` placeholder.

    ``coord_pe`` ([H]) is added to the embedding of every ``coord_token_id`` (Scan2Cap location).
    """
    ids = tuple(int(i) for i in input_ids)
    image_positions = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    if block is None and image_positions:
        raise ValueError("input_ids contain the image placeholder -200 but no visual features were given")
    if block is not None and len(image_positions) != 1:
        raise ValueError(
            f"input_ids must contain the image placeholder {IMAGE_TOKEN_INDEX} exactly once, "
            f"found {len(image_positions)} times"
        )
    bad = [t for t in ids if t < 0 and t != IMAGE_TOKEN_INDEX]
    if bad:
        raise ValueError(f"input_ids contain negative ids {sorted(set(bad))} (only {IMAGE_TOKEN_INDEX} is allowed)")
    weight: torch.Tensor = embed_tokens.weight  # type: ignore[assignment]
    text_ids = torch.tensor([t for t in ids if t != IMAGE_TOKEN_INDEX], dtype=torch.long, device=weight.device)
    vocab = int(weight.shape[0])
    if text_ids.numel() and int(text_ids.max()) >= vocab:
        raise ValueError(f"input_ids contain id {int(text_ids.max())} >= vocab_size {vocab}")
    text = embed_tokens(text_ids)
    has_coord = coord_token_id is not None and bool((text_ids == coord_token_id).any())
    if has_coord:
        if coord_pe is None:
            raise ValueError("input_ids contain the <coord> token but no coord_xyz location was given")
        text = text.clone()
        text[text_ids == coord_token_id] += coord_pe.to(text.dtype)
    elif coord_pe is not None:
        raise ValueError("coord_xyz was given but input_ids contain no <coord> token")
    if block is None:
        merged, start, end = text, None, None
    else:
        cut = image_positions[0]
        block = block.to(device=text.device, dtype=text.dtype)
        merged = torch.cat([text[:cut], block, text[cut:]], dim=0)
        start, end = cut, cut + int(block.shape[0])
    if max_length is not None and merged.shape[0] > max_length:
        raise ValueError(
            f"merged sequence of {merged.shape[0]} tokens exceeds tokenizer_model_max_length {max_length}; "
            "use fewer frames or a shorter prompt"
        )
    return MergedInputs(embeds=merged, input_ids=ids, image_start=start, image_end=end)
