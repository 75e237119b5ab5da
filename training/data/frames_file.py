"""The maximum-coverage frame-sampling file, in upstream's format, made with the core keyframe code.

Upstream (`scripts/3d/preprocessing/max_coverage_sampling.py`) writes `scannet_select_frames.json`,
a JSON list with one entry per scene:

    {"video_id": "scannet/scene0000_00",
     "frame_files": ["data/scannet/posed_images/scene0000_00/00420.jpg", ...],   # greedy pick order
     "voxel_nums": [1843, 975, ...],          # new voxels each pick added
     "num_all_voxels": 12345,                 # voxels seen by all candidate frames
     "num_select_voxels": 12001}

Candidates are every 2nd exported frame (all frames when that leaves fewer than 32), the budget is
32 frames. At load time (`llava/video_utils.py:sample_frame_files_mc`) `mc` takes the first
`frames_upbound` entries, `mc-ratio90/95` cut that list where the cumulative `voxel_nums` reach 90 %
/ 95 % of `num_all_voxels`, and the kept files are sorted by frame number.

Here the per-frame voxels are `video3dllm_core.ingest.coverage_voxel_keys` and the greedy is
`video3dllm_core.keyframes.greedy_max_coverage`, the same code the robot's online selector runs
(deviations from upstream's set loop: docs/keyframes.md). Readers use only the file stems of
`frame_files`, so any path prefix works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from video3dllm_core.keyframes import PRESETS, greedy_max_coverage
from video3dllm_training.data.annotations import scene_id_of

__all__ = [
    "FrameSelection",
    "candidate_stems",
    "select_scene_frames",
    "mc_frame_stems",
    "load_frames_file",
    "write_frames_file",
    "UPSTREAM_PATH_PREFIX",
    "stem_order",
]

UPSTREAM_PATH_PREFIX = "data/scannet/posed_images"
UPSTREAM_MAX_FRAMES = 32
UPSTREAM_CANDIDATE_STRIDE = 2


@dataclass(frozen=True)
class FrameSelection:
    """One scene's entry of the frame-sampling file."""

    video_id: str
    frame_files: tuple[str, ...]
    voxel_nums: tuple[int, ...]
    num_all_voxels: int
    num_select_voxels: int

    @property
    def scene_id(self) -> str:
        return scene_id_of(self.video_id)

    @property
    def stems(self) -> tuple[str, ...]:
        """Frame stems in pick order."""
        return tuple(PurePosixPath(f).stem for f in self.frame_files)

    def to_json(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "frame_files": list(self.frame_files),
            "voxel_nums": list(self.voxel_nums),
            "num_all_voxels": self.num_all_voxels,
            "num_select_voxels": self.num_select_voxels,
        }


def candidate_stems(stems: Sequence[str], stride: int = UPSTREAM_CANDIDATE_STRIDE,
                    min_candidates: int = UPSTREAM_MAX_FRAMES) -> list[str]:
    """Upstream's candidates: every `stride`-th frame, or all frames when that leaves fewer than `min_candidates`."""
    if stride < 1:
        raise ValueError(f"candidate stride must be >= 1, got {stride}")
    thinned = list(stems[::stride])
    return thinned if len(thinned) >= min_candidates else list(stems)


def select_scene_frames(video_id: str, stems: Sequence[str], voxel_keys: Sequence[np.ndarray],
                        max_frames: int = UPSTREAM_MAX_FRAMES, path_prefix: str = UPSTREAM_PATH_PREFIX) -> FrameSelection:
    """Greedy maximum coverage over the candidates' voxel keys -> the scene's file entry."""
    if len(stems) != len(voxel_keys):
        raise ValueError(f"{video_id}: {len(stems)} stems but {len(voxel_keys)} voxel key arrays")
    result = greedy_max_coverage(list(voxel_keys), max_frames)
    scene = scene_id_of(video_id)
    prefix = path_prefix.rstrip("/")
    files = tuple(f"{prefix}/{scene}/{stems[int(i)]}.jpg" if prefix else f"{scene}/{stems[int(i)]}.jpg" for i in result.order)
    return FrameSelection(
        video_id=video_id,
        frame_files=files,
        voxel_nums=tuple(int(g) for g in result.gains),
        num_all_voxels=int(result.total),
        num_select_voxels=int(result.covered),
    )


def mc_frame_stems(selection: FrameSelection, strategy: str, frames_upbound: int) -> list[str]:
    """Upstream's `sample_frame_files_mc`: the first `frames_upbound` picks, cut at the strategy's
    coverage ratio (cumulative `voxel_nums` >= ratio x `num_all_voxels`), sorted by frame number."""
    if strategy not in PRESETS or PRESETS[strategy][0] != "mc":
        raise ValueError(f"frame strategy {strategy!r} is not a max-coverage one (mc, mc-ratio90, mc-ratio95)")
    if frames_upbound < 1:
        raise ValueError(f"frames_upbound must be >= 1, got {frames_upbound}")
    ratio = PRESETS[strategy][1]
    stems = list(selection.stems[:frames_upbound])
    if ratio is not None:
        kept: list[str] = []
        total = 0
        for stem, gain in zip(stems, selection.voxel_nums[:frames_upbound]):
            kept.append(stem)
            total += gain
            if total >= selection.num_all_voxels * ratio:
                break
        stems = kept
    return sorted(stems, key=stem_order)


def stem_order(stem: str) -> tuple[int, str]:
    """Sort key of frame stems: by frame number (upstream sorts by `int(stem)`), others after."""
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def load_frames_file(path: str | Path) -> dict[str, FrameSelection]:
    """`{scene_id: FrameSelection}` from an upstream frame-sampling JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"frame-sampling file not found: {p} (make it with `video3dllm prepare frames`)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of {{video_id, frame_files, voxel_nums, num_all_voxels}} entries")
    out: dict[str, FrameSelection] = {}
    for i, entry in enumerate(data):
        where = f"{p.name}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for key in ("video_id", "frame_files", "voxel_nums", "num_all_voxels"):
            if key not in entry:
                raise ValueError(f"{where}: missing field {key!r}")
        if len(entry["frame_files"]) != len(entry["voxel_nums"]):
            raise ValueError(f"{where}: 'frame_files' and 'voxel_nums' must have the same length")
        sel = FrameSelection(
            video_id=str(entry["video_id"]),
            frame_files=tuple(str(f) for f in entry["frame_files"]),
            voxel_nums=tuple(int(v) for v in entry["voxel_nums"]),
            num_all_voxels=int(entry["num_all_voxels"]),
            num_select_voxels=int(entry.get("num_select_voxels", sum(int(v) for v in entry["voxel_nums"]))),
        )
        out[sel.scene_id] = sel
    return out


def write_frames_file(path: str | Path, selections: Sequence[FrameSelection]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([s.to_json() for s in selections]), encoding="utf-8")
