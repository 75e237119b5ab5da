"""Per-keyframe vision features, cached by frame id and split by what they depend on.

A keyframe's visual tokens are ``pooled(projector(SigLIP(crop))) + sin3d(patch coordinates)``:

* the SigLIP output, the projector output and the pooled tokens depend only on the 384x384
  colour crop, so they are cached per frame id for as long as the frame is pooled;
* the per-pixel coordinates, the patch coordinates and the 3D position embedding depend on the
  scene frame too, so they are cached per (frame id, scene frame) and recomputed (cheap: ~2 ms
  per frame, no network) when the engine adopts a new scene frame.

Scene-frame coordinates are computed exactly as upstream computes world coordinates from an
axis-aligned pose: ``T_scene_cam = T_scene_world @ T_world_cam`` is formed in float64, cast to
float32 and applied to the crop's depth samples with the same float32 arithmetic as
``IngestedFrame.world_coords`` (`ingest.crop_world_coords`); patch coordinates are the upstream
27x27 block means (`ingest.patch_average`). With the identity scene frame both are bitwise the
ingested frame's own world coordinates.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from video3dllm_core.ingest import IngestConfig, IngestedFrame, crop_world_coords, patch_average
from video3dllm_core.model import Video3DLLM, VisualFeatures
from video3dllm_core.model.layout import image_block
from video3dllm_core.scene import SceneFrame

__all__ = ["FrameVision", "VisionCache", "scene_coords"]


def scene_coords(frame: IngestedFrame, scene: SceneFrame, config: IngestConfig) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel [S, S, 3], patch [g, g, 3]) float32 coordinates of a frame in the scene frame."""
    T_scene_cam = scene.T_scene_world @ frame.T_world_cam  # float64; exact for the identity
    world = crop_world_coords(frame.crop_depth_m, frame.geometry.rows, frame.geometry.cols, frame.K_depth, T_scene_cam)
    return world, patch_average(world, config)


@dataclass
class FrameVision:
    """Cached tensors of one keyframe (on the model's device)."""

    siglip: torch.Tensor  # [T, mm_hidden] tower output
    projected: torch.Tensor  # [T, H] projector output, un-pooled (object features)
    pooled: torch.Tensor  # [P, H] bilinear-pooled tokens
    scene_serial: int = -1  # scene frame the coordinate part below belongs to
    world_coords: torch.Tensor | None = None  # [S, S, 3] float32 scene-frame pixel coordinates
    patch_coords: torch.Tensor | None = None  # [g, g, 3] float32
    pe_coords: torch.Tensor | None = None  # [g, g, 3] float32 (voxel indices when discrete)
    position_embedding: torch.Tensor | None = None  # [P, H] float32


class VisionCache:
    """Frame id -> FrameVision, least recently used first out, bounded by ``capacity`` frames.

    Not thread-safe: the engine uses it from its (serialised) query path only.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._entries: OrderedDict[int, FrameVision] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, frame_id: object) -> bool:
        return frame_id in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def prune(self, keep: Sequence[int], alive: set[int] | None = None) -> None:
        """Drop entries of frames not in ``alive`` (no longer pooled), then the least recently
        used beyond ``capacity``; the frames in ``keep`` (the current keyframes) always stay."""
        keep_set = set(keep)
        if alive is not None:
            for fid in [f for f in self._entries if f not in alive and f not in keep_set]:
                del self._entries[fid]
        for fid in list(self._entries):
            if len(self._entries) <= self.capacity:
                break
            if fid not in keep_set:
                del self._entries[fid]

    def visual_features(self, model: Video3DLLM, frame_ids: Sequence[int], frames: Sequence[IngestedFrame],
                        scene: SceneFrame, scene_serial: int, ingest_config: IngestConfig,
                        batch_size: int) -> tuple[VisualFeatures, int, int]:
        """VisualFeatures of the keyframes in the scene frame, reusing whatever is cached.

        Returns (features, frames run through the vision tower, frames whose coordinate part was
        recomputed). The result equals ``model.encode_frames`` on the same crops and scene-frame
        coordinates (the vision tower is run in batches of ``batch_size`` frames).
        """
        missing = [i for i, fid in enumerate(frame_ids) if fid not in self._entries]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            coords = [scene_coords(frames[i], scene, ingest_config) for i in chunk]
            encoded = model.encode_frames(
                np.stack([frames[i].crop_rgb for i in chunk]),
                np.stack([c[0] for c in coords]),
                patch_world_coords=np.stack([c[1] for c in coords]),
            )
            for j, i in enumerate(chunk):
                self._entries[frame_ids[i]] = FrameVision(
                    siglip=encoded.siglip[j], projected=encoded.projected[j], pooled=encoded.pooled[j],
                    scene_serial=scene_serial, world_coords=encoded.world_coords[j],
                    patch_coords=encoded.patch_coords[j], pe_coords=encoded.pe_coords[j],
                    position_embedding=encoded.position_embedding[j],
                )
        moved = [fid for fid in frame_ids if self._entries[fid].scene_serial != scene_serial]
        for fid, frame in zip(frame_ids, frames):
            entry = self._entries[fid]
            if entry.scene_serial != scene_serial:
                self._update_coordinates(model, entry, frame, scene, scene_serial, ingest_config)
            self._entries.move_to_end(fid)
        entries = [self._entries[fid] for fid in frame_ids]
        return _assemble(model, entries), len(missing), len(moved)

    @staticmethod
    def _update_coordinates(model: Video3DLLM, entry: FrameVision, frame: IngestedFrame, scene: SceneFrame,
                            scene_serial: int, ingest_config: IngestConfig) -> None:
        """Recompute the scene-dependent part (same arithmetic as Video3DLLM.encode_frames)."""
        world, patch = scene_coords(frame, scene, ingest_config)
        device = model.device
        patch_t = torch.from_numpy(patch).to(device=device, dtype=torch.float32)
        pe_coords = model.pe_coords(patch_t[None])[0]
        entry.world_coords = torch.from_numpy(world).to(device=device, dtype=torch.float32)
        entry.patch_coords = patch_t
        entry.pe_coords = pe_coords
        entry.position_embedding = model.position_embedding(pe_coords[None].flatten(1, 2))[0]
        entry.scene_serial = scene_serial


def _assemble(model: Video3DLLM, entries: Sequence[FrameVision]) -> VisualFeatures:
    def stack(name: str) -> torch.Tensor:
        return torch.stack([getattr(e, name) for e in entries])

    pooled = stack("pooled")
    pe = stack("position_embedding")
    block = image_block(pooled + pe.to(pooled.dtype), model.image_newline)
    return VisualFeatures(siglip=stack("siglip"), projected=stack("projected"), pooled=pooled,
                          patch_coords=stack("patch_coords"), pe_coords=stack("pe_coords"), position_embedding=pe,
                          image_block=block, world_coords=stack("world_coords"))
