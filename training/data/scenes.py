"""Frames of a ScanNet scene in the upstream processed-data layout, through the core ingestor.

`SceneStore` reads `posed_images/<scene_id>/` (upstream's `generate_image_scannet.py` layout, read by
`video3dllm_core.sources.posed_images.PosedImagesSource`), picks the frames of a sample the way
upstream does (uniform over all frames, or the max-coverage file) and turns them into
`IngestedFrame`s with the same `FrameIngestor` the robot uses: model crop, world coordinates,
patch coordinates. Ingested frames are cached per scene (most samples share a scene).

Scene metadata: upstream takes the frame list, the axis alignment and the depth intrinsics from
EmbodiedScan's `embodiedscan_infos_{train,val,test}.pkl`. Those are pickles (unpickling can run
code), so they are read only when the caller trusts them (`load_embodiedscan_infos(...,
trust_pickle=True)`); otherwise every frame in the directory is used, the axis alignment comes from
`axis_align_matrix.txt` or ScanNet's `<scene_id>.txt` (looked up by PosedImagesSource), and the
intrinsics from `depth_intrinsic.txt`.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from video3dllm_core.ingest import FrameIngestor, IngestConfig, IngestedFrame
from video3dllm_core.keyframes import PRESETS, uniform_indices
from video3dllm_core.sources.posed_images import PosedImagesSource
from video3dllm_training.data.annotations import scene_id_of
from video3dllm_training.data.frames_file import FrameSelection, mc_frame_stems, stem_order

__all__ = ["SceneInfo", "SceneStore", "load_embodiedscan_infos"]


@dataclass(frozen=True)
class SceneInfo:
    """What EmbodiedScan's infos say about one scene (each field optional)."""

    scene_id: str
    axis_align_matrix: np.ndarray | None = None
    K_depth: np.ndarray | None = None  # 3x3
    stems: tuple[str, ...] | None = None  # frame stems in the infos' order


def load_embodiedscan_infos(paths: Sequence[str | Path], trust_pickle: bool = False) -> dict[str, SceneInfo]:
    """Scene infos of EmbodiedScan's `embodiedscan_infos_*.pkl` files (a folder or the files).

    Raises:
        ValueError: `trust_pickle` is False (unpickling can run arbitrary code; pass it only for
            files you trust, e.g. `--trust-pickle`), or a file is not an EmbodiedScan info file.
    """
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(p.glob("embodiedscan_infos_*.pkl")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"EmbodiedScan infos not found: {p}")
    if not files:
        raise FileNotFoundError(f"no embodiedscan_infos_*.pkl in {[str(p) for p in paths]}")
    if not trust_pickle:
        raise ValueError(
            f"refusing to unpickle {files[0]} (pickles can run code); pass --trust-pickle if you trust the file, "
            "or leave the EmbodiedScan infos out: axis alignment then comes from the scene's txt and "
            "intrinsics from depth_intrinsic.txt"
        )
    infos: dict[str, SceneInfo] = {}
    for path in files:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - explicitly trusted by the caller
        if not isinstance(data, dict) or not isinstance(data.get("data_list"), list):
            raise ValueError(f"{path}: not an EmbodiedScan info file (expected a dict with 'data_list')")
        for item in data["data_list"]:
            sample = str(item.get("sample_idx", ""))
            if not sample.startswith("scannet"):
                continue
            scene = scene_id_of(sample)
            A = item.get("axis_align_matrix")
            K = item.get("depth_cam2img")
            images = item.get("images")
            infos[scene] = SceneInfo(
                scene_id=scene,
                axis_align_matrix=None if A is None else np.asarray(A, dtype=np.float64).reshape(4, 4),
                K_depth=None if K is None else np.asarray(K, dtype=np.float64)[:3, :3].copy(),
                stems=None if not images else tuple(PurePosixPath(str(im["img_path"])).stem for im in images),
            )
    return infos


class SceneStore:
    """Scenes of a posed-images root: frame lists, frame sampling and cached ingested frames.

    Args:
        posed_root: the `posed_images` folder (one sub-folder per scene).
        infos: trusted EmbodiedScan scene infos (frame list, axis alignment, intrinsics), optional.
        frames_file: max-coverage selections (`load_frames_file`), needed for mc strategies.
        ingest_config: the ingestor's settings (defaults: the model's 384 crop, 0.1 m voxels).
        cache_scenes: scenes whose ingested frames stay in memory (LRU).
        uniform_unique: drop repeated indices of uniform sampling; upstream keeps them (a scene with
            fewer frames than the budget repeats frames), so the default is False.
    """

    def __init__(self, posed_root: str | Path, infos: dict[str, SceneInfo] | None = None,
                 frames_file: dict[str, FrameSelection] | None = None, ingest_config: IngestConfig | None = None,
                 cache_scenes: int = 8, uniform_unique: bool = False) -> None:
        self.root = Path(posed_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"posed-images root not found: {self.root} (expected <root>/<scene_id>/NNNNN.jpg ...)")
        self.infos = infos or {}
        self.frames_file = frames_file
        self.ingestor = FrameIngestor(ingest_config)
        self.cache_scenes = max(1, int(cache_scenes))
        self.uniform_unique = uniform_unique
        self._sources: dict[str, PosedImagesSource] = {}
        self._cache: OrderedDict[str, dict[str, IngestedFrame | None]] = OrderedDict()

    def scene_dir(self, scene_id: str) -> Path:
        return self.root / scene_id

    def source(self, scene_id: str) -> PosedImagesSource:
        """The scene's PosedImagesSource with EmbodiedScan's alignment/intrinsics applied when given."""
        if scene_id not in self._sources:
            directory = self.scene_dir(scene_id)
            if not directory.is_dir():
                raise FileNotFoundError(f"scene {scene_id}: no posed-images folder {directory}")
            info = self.infos.get(scene_id)
            src = PosedImagesSource(directory, use_axis_align=info is None or info.axis_align_matrix is None)
            if info is not None:
                # Upstream reads these from the infos rather than the files; keep its numbers.
                if info.axis_align_matrix is not None:
                    src.axis_align_matrix = info.axis_align_matrix
                if info.K_depth is not None:
                    src.K_depth = info.K_depth
            self._sources[scene_id] = src
        return self._sources[scene_id]

    def all_stems(self, scene_id: str) -> list[str]:
        """Every frame of the scene in order: the infos' image list, else the folder's NNNNN.jpg."""
        info = self.infos.get(scene_id)
        if info is not None and info.stems:
            return list(info.stems)
        return sorted(self.source(scene_id).stems, key=stem_order)

    def sample_stems(self, scene_id: str, strategy: str, frames_upbound: int) -> list[str]:
        """The stems a sample sees (upstream `sample_frame_files` / `sample_frame_files_mc`)."""
        if strategy not in PRESETS:
            raise ValueError(f"frame strategy must be one of {sorted(PRESETS)}, got {strategy!r}")
        if PRESETS[strategy][0] == "uniform":
            stems = self.all_stems(scene_id)
            idx = uniform_indices(len(stems), frames_upbound, unique=self.uniform_unique)
            return [stems[int(i)] for i in idx]
        if self.frames_file is None:
            raise ValueError(f"frame strategy {strategy!r} needs the max-coverage file (--frames-file, made by `prepare frames`)")
        if scene_id not in self.frames_file:
            raise ValueError(f"scene {scene_id} is not in the max-coverage frames file; rerun `prepare frames` for it")
        return mc_frame_stems(self.frames_file[scene_id], strategy, frames_upbound)

    def ingested(self, scene_id: str, stems: Sequence[str]) -> list[IngestedFrame]:
        """Ingested frames for `stems` (repeats allowed; frames the source drops are left out)."""
        cache = self._cache.get(scene_id)
        if cache is None:
            cache = {}
            self._cache[scene_id] = cache
            while len(self._cache) > self.cache_scenes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(scene_id)
        missing = sorted({s for s in stems if s not in cache}, key=stem_order)
        if missing:
            src = self.source(scene_id)
            saved = src.stems
            src.stems = missing
            try:
                loaded = {frame.name: self.ingestor.ingest(frame) for frame in src}
            finally:
                src.stems = saved
            for stem in missing:
                cache[stem] = loaded.get(stem)  # None: dropped by the source (invalid pose, empty depth)
        frames = [f for f in (cache[s] for s in stems) if f is not None]
        if not frames:
            raise ValueError(f"scene {scene_id}: none of the frames {list(stems)[:4]}... is usable (invalid poses or empty depth)")
        return frames

    def frames(self, scene_id: str, strategy: str = "uniform", frames_upbound: int = 32) -> list[IngestedFrame]:
        return self.ingested(scene_id, self.sample_stems(scene_id, strategy, frames_upbound))
