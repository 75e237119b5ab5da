"""Export ScanNet .sens streams to the posed-images layout that the upstream code and our reader use.

Per scene, into `<out_root>/<scene_id>/` (what upstream's `generate_image_scannet.py --fast`
writes, read back by `video3dllm_core.sources.posed_images.PosedImagesSource`):

    NNNNN.jpg              colour; by default the .sens JPEG bytes copied unchanged
    NNNNN.png              depth, uint16 millimetres
    NNNNN.txt              4x4 camera-to-world pose in the raw scan frame (ScanNet convention)
    intrinsic.txt          4x4 colour intrinsics
    depth_intrinsic.txt    4x4 depth intrinsics
    axis_align_matrix.txt  the scene's axisAlignment, when `<scene_id>.txt` lies beside the .sens

NNNNN is the frame's index in the full 30 Hz stream, zero-padded to 5 digits; `frame_stride=10`
keeps frames 0, 10, 20, ... like upstream's `--fast`.

Differences from upstream, all in favour of fidelity: upstream decodes and re-encodes every JPEG
(imageio, quality 75) while we copy the original bytes (pass `jpeg_quality=75` to re-encode like
upstream); matrices are written with 17 significant digits instead of `%f`, so the float32 values
of the .sens survive exactly; and the axis alignment is copied next to the frames so that the
directory is self-contained. A scene is written into a temporary sibling directory and renamed
when complete, so an interrupted export never leaves a half-written scene behind, and
`export_many(..., skip_existing=True)` resumes where it stopped.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from video3dllm_core.sources.posed_images import read_scannet_axis_alignment
from video3dllm_training.scannet.sens import read_sens, read_sens_header

__all__ = ["ExportResult", "ScanNetExportError", "export_posed_images", "export_many"]


class ScanNetExportError(ValueError):
    """One or more scenes of `export_many` failed; the message lists each file and its error."""


@dataclass(frozen=True)
class ExportResult:
    """What one scene export did."""

    scene_id: str
    out_dir: Path
    num_frames: int  # frames written (0 when skipped)
    skipped: bool = False


def _matrix_text(M: np.ndarray) -> str:
    # 17 significant digits: the float32 values of the .sens survive the text round trip exactly.
    return "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in np.asarray(M, dtype=np.float64))


def _frame_stem(index: int) -> str:
    return str(index).zfill(5)


def export_posed_images(
    sens_path: str | Path,
    out_dir: str | Path,
    frame_stride: int = 10,
    jpeg_quality: int | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export every `frame_stride`-th frame of one .sens file into `out_dir` (see module docstring).

    `out_dir` must not exist unless `overwrite=True` (it is then replaced once the new export is
    complete). The scene id is the .sens file's stem.
    """
    sens_path = Path(sens_path)
    out_dir = Path(out_dir)
    if not sens_path.is_file():
        raise FileNotFoundError(f"{sens_path} does not exist (expected a ScanNet <scene_id>.sens file)")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100 or None (copy the original JPEG), got {jpeg_quality}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another directory")
    header = read_sens_header(sens_path)  # fail fast on a bad header, before creating anything
    meta = sens_path.with_suffix(".txt")
    axis_align = read_scannet_axis_alignment(meta) if meta.is_file() else None

    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / "intrinsic.txt").write_text(_matrix_text(header.intrinsic_color), encoding="utf-8")
        (tmp / "depth_intrinsic.txt").write_text(_matrix_text(header.intrinsic_depth), encoding="utf-8")
        if axis_align is not None:
            (tmp / "axis_align_matrix.txt").write_text(_matrix_text(axis_align), encoding="utf-8")
        count = 0
        for frame in read_sens(sens_path, frame_stride=frame_stride):
            stem = _frame_stem(frame.index)
            if jpeg_quality is None:
                (tmp / f"{stem}.jpg").write_bytes(frame.color_jpeg)
            else:
                buf = io.BytesIO()
                Image.fromarray(frame.rgb()).save(buf, format="JPEG", quality=jpeg_quality)
                (tmp / f"{stem}.jpg").write_bytes(buf.getvalue())
            Image.fromarray(frame.depth_mm).save(tmp / f"{stem}.png")
            (tmp / f"{stem}.txt").write_text(_matrix_text(frame.T_world_cam), encoding="utf-8")
            count += 1
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(scene_id=sens_path.stem, out_dir=out_dir, num_frames=count)


def _export_one(sens_path: Path, out_dir: Path, frame_stride: int, jpeg_quality: int | None) -> ExportResult:
    return export_posed_images(sens_path, out_dir, frame_stride=frame_stride, jpeg_quality=jpeg_quality)


def export_many(
    sens_paths: Sequence[str | Path],
    out_root: str | Path,
    frame_stride: int = 10,
    workers: int = 4,
    jpeg_quality: int | None = None,
    skip_existing: bool = True,
    progress: bool = True,
) -> list[ExportResult]:
    """Export many scenes in parallel processes into `<out_root>/<scene_id>/`, with a tqdm bar.

    Scenes whose output directory exists are skipped when `skip_existing` (a directory only
    appears once its scene is complete). Every scene is attempted; if any fail, a
    ScanNetExportError listing them is raised at the end. Results are in input order.
    """
    paths = [Path(p) for p in sens_paths]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive integer, got {frame_stride!r}")
    ids = [p.stem for p in paths]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ValueError(f"several .sens files share a scene id (file stem): {', '.join(dupes)}")
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)

    results: dict[int, ExportResult] = {}
    todo: list[int] = []
    for i, p in enumerate(paths):
        if skip_existing and (root / p.stem).exists():
            results[i] = ExportResult(scene_id=p.stem, out_dir=root / p.stem, num_frames=0, skipped=True)
        else:
            todo.append(i)
    failures: list[str] = []
    bar = tqdm(total=len(paths), initial=len(results), desc="export .sens", unit="scene", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                try:
                    results[i] = _export_one(paths[i], root / paths[i].stem, frame_stride, jpeg_quality)
                except (ValueError, OSError) as exc:
                    failures.append(f"{paths[i]}: {exc}")
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {
                    pool.submit(_export_one, paths[i], root / paths[i].stem, frame_stride, jpeg_quality): i for i in todo
                }
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except (ValueError, OSError) as exc:
                        failures.append(f"{paths[i]}: {exc}")
                    bar.update(1)
    finally:
        bar.close()
    if failures:
        raise ScanNetExportError(f"{len(failures)} of {len(paths)} scenes failed: " + "; ".join(sorted(failures)))
    return [results[i] for i in range(len(paths))]
