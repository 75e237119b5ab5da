"""ScanNet preparation steps behind `video3dllm prepare {sens,scene,frames}`.

* `prepare_sens`: `.sens` -> posed-images folders (training.scannet.export_many), upstream's
  `generate_image_scannet.py --fast`.
* `prepare_scene_boxes`: scan files -> `scannet_{split}_gt_box.json` ({"scannet/<scene>": boxes
  indexed by objectId}), upstream's `extract_scannet_pcd.py` + `extract_gt_box.py`.
* `prepare_frames`: posed images -> `scannet_select_frames.json` (max-coverage picks per scene) with
  the core's `coverage_voxel_keys` + `greedy_max_coverage`, upstream's `max_coverage_sampling.py`.

Every step takes the upstream processed-data layout as it is (`data/scannet/{scans,posed_images}`,
`data/metadata/*.json`), so upstream-made and our files are interchangeable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from video3dllm_core.ingest import IngestConfig, coverage_voxel_keys
from video3dllm_training.data.boxes import write_box_file
from video3dllm_training.data.frames_file import (
    UPSTREAM_CANDIDATE_STRIDE,
    UPSTREAM_MAX_FRAMES,
    UPSTREAM_PATH_PREFIX,
    FrameSelection,
    candidate_stems,
    select_scene_frames,
    write_frames_file,
)
from video3dllm_training.data.scenes import SceneInfo, SceneStore

__all__ = ["prepare_sens", "prepare_scene_boxes", "scene_box_list", "prepare_frames", "scene_frame_selection", "FramesJob"]


def prepare_sens(scans_dir: str | Path, out_root: str | Path, frame_stride: int = 10, workers: int = 4,
                 scene_ids: Sequence[str] | None = None) -> list[str]:
    """Export every `scans/<scene>/<scene>.sens` (or the listed scenes) to `out_root/<scene>/`."""
    from video3dllm_training.scannet import export_many

    root = Path(scans_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"ScanNet scans folder not found: {root}")
    if scene_ids:
        files = [root / s / f"{s}.sens" for s in scene_ids]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} .sens file(s) missing, e.g. {missing[0]}")
    else:
        files = sorted(root.glob("*/*.sens"))
        if not files:
            raise FileNotFoundError(f"no <scene>/<scene>.sens under {root}")
    results = export_many(files, out_root, frame_stride=frame_stride, workers=workers)
    return [r.scene_id for r in results]


def scene_box_list(scene_dir: str | Path) -> list[list[float]] | None:
    """The scene's GT boxes indexed by objectId, or None when the ids are not 0..n-1 (upstream
    `extract_gt_box.py` drops such scenes, because `metadata.object_id` indexes this list)."""
    from video3dllm_training.scannet import load_scannet_scene

    scene = load_scannet_scene(scene_dir)
    ids = [o.object_id for o in scene.objects]
    if ids != list(range(len(ids))):
        return None
    return [[float(v) for v in o.box] for o in scene.objects]


def prepare_scene_boxes(scans_dir: str | Path, out_file: str | Path, scene_ids: Sequence[str] | None = None,
                        progress: bool = True) -> tuple[int, list[str]]:
    """Write `{"scannet/<scene>": [[cx, cy, cz, dx, dy, dz], ...]}` for the scenes; returns (written, dropped)."""
    root = Path(scans_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"ScanNet scans folder not found: {root}")
    scenes = list(scene_ids) if scene_ids else sorted(p.name for p in root.iterdir() if p.is_dir())
    boxes: dict[str, list[list[float]]] = {}
    dropped: list[str] = []
    for scene in tqdm(scenes, desc="scene boxes", unit="scene", disable=not progress, file=sys.stderr):
        listed = scene_box_list(root / scene)
        if listed is None:
            dropped.append(scene)
        else:
            boxes[scene] = listed
    write_box_file(out_file, boxes)
    return len(boxes), dropped


@dataclass(frozen=True)
class FramesJob:
    """Settings of one `prepare frames` run (picklable, for worker processes)."""

    posed_root: str
    max_frames: int = UPSTREAM_MAX_FRAMES
    candidate_stride: int = UPSTREAM_CANDIDATE_STRIDE
    voxel_size_m: float = 0.1
    path_prefix: str = UPSTREAM_PATH_PREFIX


def scene_frame_selection(job: FramesJob, scene_id: str, info: SceneInfo | None = None) -> FrameSelection:
    """Max-coverage picks of one scene: candidates as upstream, voxels and greedy from the core."""
    store = SceneStore(job.posed_root, infos={scene_id: info} if info is not None else None)
    stems = candidate_stems(store.all_stems(scene_id), job.candidate_stride, job.max_frames)
    source = store.source(scene_id)
    config = IngestConfig(voxel_size_m=job.voxel_size_m)
    saved = source.stems
    source.stems = stems
    try:
        keys = {str(f.name): coverage_voxel_keys(f.depth_m, f.K_depth, f.T_world_cam, config) for f in source}
    finally:
        source.stems = saved
    usable = [s for s in stems if s in keys]
    if not usable:
        raise ValueError(f"scene {scene_id}: no usable frame (invalid poses or empty depth)")
    return select_scene_frames(f"scannet/{scene_id}", usable, [keys[s] for s in usable], job.max_frames, job.path_prefix)


def _job(args: tuple[FramesJob, str, SceneInfo | None]) -> FrameSelection:
    return scene_frame_selection(*args)


def prepare_frames(posed_root: str | Path, out_file: str | Path, scene_ids: Sequence[str] | None = None,
                   infos: dict[str, SceneInfo] | None = None, job: FramesJob | None = None, workers: int = 1,
                   progress: bool = True) -> list[FrameSelection]:
    """Write the frame-sampling file for every scene folder of `posed_root` (or the listed ones)."""
    root = Path(posed_root)
    if not root.is_dir():
        raise FileNotFoundError(f"posed-images root not found: {root}")
    settings = job or FramesJob(posed_root=str(root))
    if settings.posed_root != str(root):
        settings = FramesJob(str(root), settings.max_frames, settings.candidate_stride, settings.voxel_size_m,
                             settings.path_prefix)
    scenes = list(scene_ids) if scene_ids else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not scenes:
        raise FileNotFoundError(f"no scene folders under {root}")
    tasks = [(settings, s, (infos or {}).get(s)) for s in scenes]
    bar = tqdm(total=len(tasks), desc="max-coverage frames", unit="scene", disable=not progress, file=sys.stderr)
    results: list[FrameSelection] = []
    try:
        if workers <= 1 or len(tasks) == 1:
            for t in tasks:
                results.append(_job(t))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                for sel in pool.map(_job, tasks):
                    results.append(sel)
                    bar.update(1)
    finally:
        bar.close()
    write_frames_file(out_file, results)
    return results


def coverage_summary(selections: Sequence[FrameSelection]) -> dict[str, float]:
    """Mean frames and coverage of a frames file (for the command's report)."""
    if not selections:
        return {"scenes": 0, "mean_frames": 0.0, "mean_coverage": 0.0}
    cov = [s.num_select_voxels / s.num_all_voxels if s.num_all_voxels else 0.0 for s in selections]
    return {
        "scenes": len(selections),
        "mean_frames": float(np.mean([len(s.frame_files) for s in selections])),
        "mean_coverage": float(np.mean(cov)),
    }
