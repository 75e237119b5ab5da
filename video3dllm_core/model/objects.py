"""Object features for grounding (``object_feature_type='patch14-pe'``, upstream convention 10).

For an axis-aligned box (centre c, full size d; lo = c - d/2, hi = c + d/2 in float32), a SigLIP
patch (a 14x14-pixel block of the 378x378 region the tower sees, 27x27 per frame) belongs to the
box when at least half of its 196 world points satisfy lo <= p <= hi on all three axes. The box
feature is the mean of the *un-pooled* projected features of all selected (frame, patch) pairs
over all frames (zeros when none) plus the sine embedding of the discretised box centre; with
``object_feature_type: patch14-pe-size`` (ours) also plus the grounding head's learned embedding of the
box's log size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ObjectFeatures:
    """Per-box grounding inputs and the intermediate quantities (for inspection and tests)."""

    features: torch.Tensor  # [N, H] before_pe + center_pe (+ size_embedding), handed to the grounding head
    before_pe: torch.Tensor  # [N, H] mean projected feature of the selected patches (zeros if none)
    center_discrete: torch.Tensor  # [N, 3] discretised box centres (float32 voxel indices)
    center_pe: torch.Tensor  # [N, H] sine embedding of center_discrete
    inside_count: torch.Tensor  # [N, V, grid, grid] int32: points of each patch inside each box
    patch_mask: torch.Tensor  # [N, V, grid, grid] bool: selected patches
    size_embedding: torch.Tensor | None = None  # [N, H] learned log-size embedding (patch14-pe-size only)
    tower_mean: torch.Tensor | None = None  # [N, mm_hidden] mean tower feature of the selected patches (attribute match only)
    boxes_m: torch.Tensor | None = None  # [N, 6] the candidate boxes (centre xyz, size xyz; scene frame, metres), float32

    @property
    def num_selected(self) -> list[int]:
        return [int(n) for n in self.patch_mask.flatten(1).sum(dim=1)]


def check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Validate [N, 6] (cx, cy, cz, dx, dy, dz) boxes; returns them as float32."""
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"boxes must be [N, 6] (center_xyz, size_xyz), got {tuple(boxes.shape)}")
    out = boxes.to(torch.float32)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("boxes contain NaN or inf")
    if bool((out[:, 3:] < 0).any()):
        raise ValueError("boxes have a negative size (size_xyz must be >= 0)")
    return out


def patch_inside_counts(world_coords: torch.Tensor, boxes: torch.Tensor, patch_size: int, grid: int) -> torch.Tensor:
    """[V, S, S, 3] world points, [N, 6] float32 boxes -> [N, V, grid, grid] int32 counts of inside points."""
    used = grid * patch_size
    frames = world_coords.shape[0]
    blocks = (
        world_coords[:, :used, :used, :]
        .reshape(frames, grid, patch_size, grid, patch_size, 3)
        .transpose(2, 3)
        .flatten(3, 4)
    )  # [V, grid, grid, patch*patch, 3]
    counts = []
    for box in boxes:
        lo = box[:3] - box[3:] / 2
        hi = box[:3] + box[3:] / 2
        inside = torch.all((lo <= blocks) & (blocks <= hi), dim=-1)
        counts.append(inside.sum(dim=3, dtype=torch.int32))
    if not counts:
        return torch.zeros((0, frames, grid, grid), dtype=torch.int32, device=world_coords.device)
    return torch.stack(counts)


def mean_selected_features(projected: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """[V, grid*grid, H] features, [N, V, grid, grid] mask -> [N, H] means over the selected patches."""
    frames, tokens, width = projected.shape
    out = []
    for mask in patch_mask:
        selected = projected[mask.reshape(frames, tokens)]
        if selected.shape[0] == 0:
            out.append(torch.zeros(width, dtype=projected.dtype, device=projected.device))
        else:
            out.append(selected.mean(dim=0))
    if not out:
        return torch.zeros((0, width), dtype=projected.dtype, device=projected.device)
    return torch.stack(out)


def min_inside_points(patch_size: int) -> int:
    """Points of a patch that must lie inside a box to select it: int(14 * 14 * 0.5) = 98."""
    return int(patch_size * patch_size * 0.5)
