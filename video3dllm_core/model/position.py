"""3D world position embedding of visual tokens, boxes and the Scan2Cap location (upstream conventions 5-7).

* patch coordinates: per-pixel world points of the model crop averaged over the pixel block that
  one pooled token covers (27x27 pixels of the 378x378 region the tower sees -> 14x14 per frame);
* discretisation: clamp to [min_xyz_range, max_xyz_range], subtract the minimum, divide by the
  voxel size, round half-to-even (``torch.round``);
* sin3d: ``F = H // 3`` sine/cosine features per axis with ``w_k = 10000 ** (2k / F)`` in float32,
  blocks x, y, z concatenated and zero-padded to the LLM width ``H``.

All of it is computed in float32 whatever the model dtype (the upstream eval scripts cast the
coordinates to float16 first, which can move a value by one voxel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SIN3D_TEMPERATURE = 10000


def patch_average_coords(world_coords: torch.Tensor, used_size: int, pooled_grid: int) -> torch.Tensor:
    """[V, S, S, 3] per-pixel world coordinates -> [V, g, g, 3] block means (g = ``pooled_grid``).

    Only the top-left ``used_size`` x ``used_size`` pixels are averaged (the tower never sees the
    rest: 378 of 384 for SigLIP patch 14), in blocks of ``used_size // pooled_grid`` pixels.
    """
    if world_coords.ndim != 4 or world_coords.shape[-1] != 3:
        raise ValueError(f"world_coords must be [V, S, S, 3], got {tuple(world_coords.shape)}")
    if used_size % pooled_grid != 0:
        raise ValueError(f"cannot average {used_size} pixels into {pooled_grid} equal blocks per side")
    block = used_size // pooled_grid
    coords = world_coords[:, :used_size, :used_size, :].permute(0, 3, 1, 2)
    averaged = F.avg_pool2d(coords, kernel_size=block, stride=block)
    return averaged.permute(0, 2, 3, 1)


def discretize_coords(coords: torch.Tensor, min_xyz: Sequence[float], max_xyz: Sequence[float],
                      voxel_size: float) -> torch.Tensor:
    """Clamp to the model's range, shift to the minimum and divide by the voxel size; round half-to-even."""
    lo = torch.tensor(list(min_xyz), dtype=coords.dtype, device=coords.device)
    hi = torch.tensor(list(max_xyz), dtype=coords.dtype, device=coords.device)
    clamped = torch.minimum(torch.maximum(coords, lo), hi)
    return ((clamped - lo) / voxel_size).round()


def clamped_components(coords: torch.Tensor, min_xyz: Sequence[float], max_xyz: Sequence[float]) -> int:
    """How many coordinate components fall outside the model's range (they get clamped)."""
    lo = torch.tensor(list(min_xyz), dtype=coords.dtype, device=coords.device)
    hi = torch.tensor(list(max_xyz), dtype=coords.dtype, device=coords.device)
    return int(((coords < lo) | (coords > hi)).sum())


def _axis_features(t: torch.Tensor, dim_t: torch.Tensor, odd: bool) -> torch.Tensor:
    pos = t[..., None] / dim_t
    if odd:
        pos = torch.cat([pos, torch.zeros_like(pos[..., :1])], dim=-1)
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)[..., :-1]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def sin3d_embedding(coords: torch.Tensor, embedding_size: int) -> torch.Tensor:
    """[..., 3] coordinates (voxel indices) -> [..., embedding_size] sine embedding (float32 math)."""
    if coords.shape[-1] != 3:
        raise ValueError(f"sin3d needs [..., 3] coordinates, got {tuple(coords.shape)}")
    num_feats = embedding_size // 3
    if num_feats < 1:
        raise ValueError(f"embedding size {embedding_size} too small for a 3D sine embedding")
    x = coords.to(torch.float32)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = SIN3D_TEMPERATURE ** (2 * (dim_t // 2) / num_feats)
    odd = num_feats % 2 != 0
    pos = torch.cat([_axis_features(x[..., axis], dim_t, odd) for axis in range(3)], dim=-1)
    out = torch.zeros((*x.shape[:-1], embedding_size), dtype=torch.float32, device=x.device)
    out[..., : pos.shape[-1]] = pos
    return out
