"""ScanNet posed-images directories: the frame layout the upstream Video-3D LLM code reads.

Layout (what upstream's `generate_image_scannet.py`, adapted from EmbodiedScan, exports per scene
into `data/scannet/posed_images/<scene_id>/`):

    NNNNN.jpg             colour image (ScanNet: 1296x968)
    NNNNN.png             depth, uint16 millimetres (ScanNet: 640x480)
    NNNNN.txt             4x4 camera-to-world pose (optical axes), 4 rows of 4 numbers
    intrinsic.txt         4x4 colour intrinsics (optional here: only the depth ones are needed)
    depth_intrinsic.txt   4x4 depth intrinsics (required)

NNNNN is the frame index in the original 30 Hz sequence (upstream exports every 10th frame with
`--fast`, so stems are 00000, 00010, ...). ScanNet has no timestamps in this layout, so
`stamp_ns = index * 1e9 / 30` (integer nanoseconds, see `stamp_from_index`): stamps keep the
true capture spacing, also across dropped frames.

Axis alignment. ScanNet poses are in the raw scan frame; upstream applies the scene's axis
alignment matrix A (from EmbodiedScan's `axis_align_matrix`, which is ScanNet's `axisAlignment`
line of `scans/<scene_id>/<scene_id>.txt`) as `T_world_cam = A @ pose` (video_utils.py:
`axis_align_matrix @ pose`). With `use_axis_align=True` (default) A is looked up, first found wins:
  1. `axis_align_matrix.txt` in the scene directory (4x4 text; what `write_posed_images` writes),
  2. `<scene_id>.txt` in the scene directory (ScanNet meta file with an `axisAlignment = ...` line),
  3. `../../scans/<scene_id>/<scene_id>.txt` (the upstream `data/scannet/{posed_images,scans}` tree).
If none is present the poses are used as they are (identity).

Colour and depth may differ in size: both are kept and the frame carries the depth intrinsics;
the ingest stage computes world coordinates at depth resolution and resamples them to the colour
crop, as upstream does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from video3dllm_core.frame import FrameError, PosedFrame
from video3dllm_core.geometry import check_rigid
from video3dllm_core.sources.base import FrameSource

__all__ = [
    "PosedImagesSource",
    "write_posed_images",
    "read_matrix_file",
    "read_scannet_axis_alignment",
    "stamp_from_index",
    "SCANNET_FPS",
    "DEPTH_SCALE_MM",
]

SCANNET_FPS = 30  # ScanNet's RGB-D sensor rate; frame stems are indices at this rate
DEPTH_SCALE_MM = 1000.0  # uint16 depth PNGs hold millimetres (ScanNet depth_shift = 1000)


def stamp_from_index(index: int) -> int:
    """Integer-nanosecond stamp of frame `index` of a 30 Hz ScanNet sequence (index * 1e9 / 30)."""
    return int(index) * 1_000_000_000 // SCANNET_FPS


def read_matrix_file(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Read a whitespace-separated matrix; raise ValueError naming the file and line when malformed.

    Non-finite entries (ScanNet's invalid poses are rows of -inf) are returned as they are; the
    caller decides what they mean.
    """
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                values = [float(v) for v in line.split()]
            except ValueError:
                raise ValueError(
                    f"{path}: line {line_no} is not a row of numbers: {line.strip()[:80]!r}; "
                    f"expected a {shape[0]}x{shape[1]} matrix, one row per line"
                ) from None
            if len(values) != shape[1]:
                raise ValueError(
                    f"{path}: line {line_no} has {len(values)} values, expected {shape[1]} "
                    f"(a {shape[0]}x{shape[1]} matrix, one row per line)"
                )
            rows.append(values)
    if len(rows) != shape[0]:
        raise ValueError(f"{path}: has {len(rows)} rows, expected {shape[0]} (a {shape[0]}x{shape[1]} matrix)")
    return np.array(rows, dtype=np.float64)


def read_scannet_axis_alignment(meta_path: Path) -> np.ndarray | None:
    """The 4x4 `axisAlignment = a b c ...` matrix of a ScanNet `<scene_id>.txt` meta file, or None."""
    with open(meta_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            key, sep, value = line.partition("=")
            if sep and key.strip() == "axisAlignment":
                try:
                    numbers = [float(v) for v in value.split()]
                except ValueError:
                    numbers = []
                if len(numbers) != 16:
                    raise ValueError(f"{meta_path}: line {line_no}: axisAlignment must hold 16 numbers (a 4x4 matrix)")
                return np.array(numbers, dtype=np.float64).reshape(4, 4)
    return None


def _intrinsics_3x3(path: Path) -> np.ndarray:
    """Read a 4x4 (ScanNet) or 3x3 intrinsics file and return the 3x3 pinhole matrix."""
    text_rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    shape = (3, 3) if len(text_rows) == 3 else (4, 4)
    M = read_matrix_file(path, shape)
    K = M[:3, :3].copy()
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{path}: not a pinhole intrinsics matrix (fx, fy must be positive and finite)")
    return K


class PosedImagesSource(FrameSource):
    """Frames of a ScanNet posed-images directory, in numeric order of their file stems.

    Args:
        directory: the scene directory (NNNNN.jpg/.png/.txt, depth_intrinsic.txt, ...).
        use_axis_align: apply the scene's axis alignment (see module docstring) to every pose.
        frame_stride: keep every k-th frame of the sorted list (1 = all); e.g. 10 on a full-rate
            export reproduces upstream's `--fast` sampling.

    Frames whose pose is not finite (ScanNet marks lost tracking with -inf rows) are dropped and
    counted as "invalid_pose"; frames whose depth has no valid pixel as "empty_depth".
    """

    def __init__(self, directory: str | Path, use_axis_align: bool = True, frame_stride: int = 1) -> None:
        super().__init__()
        self.directory = Path(directory)
        if not self.directory.exists():
            raise FileNotFoundError(f"posed-images directory {self.directory} does not exist")
        if not self.directory.is_dir():
            raise NotADirectoryError(f"posed-images source {self.directory} is not a directory")
        if not isinstance(frame_stride, int) or frame_stride < 1:
            raise ValueError(f"frame_stride must be a positive integer, got {frame_stride!r}")
        self.frame_stride = frame_stride
        self.use_axis_align = use_axis_align

        stems = sorted((p.stem for p in self.directory.glob("*.jpg") if p.stem.isdigit()), key=int)
        if not stems:
            raise ValueError(
                f"no frames in {self.directory}: expected colour images named NNNNN.jpg (digits only) "
                "with NNNNN.png depth and NNNNN.txt pose beside them"
            )
        for stem in stems:
            for suffix, what in ((".png", "depth image (uint16 mm)"), (".txt", "pose file (4x4 camera-to-world)")):
                if not (self.directory / f"{stem}{suffix}").is_file():
                    raise FileNotFoundError(
                        f"{self.directory / (stem + '.jpg')} has no {what} {stem}{suffix} beside it; "
                        "every colour frame needs its depth and pose"
                    )
        self.stems: list[str] = stems[::frame_stride]

        depth_intrinsic = self.directory / "depth_intrinsic.txt"
        if not depth_intrinsic.is_file():
            raise FileNotFoundError(
                f"{depth_intrinsic} is missing: the depth camera intrinsics (4x4) are needed to back-project "
                "depth; upstream's generate_image_scannet.py writes it"
            )
        self.K_depth = _intrinsics_3x3(depth_intrinsic)
        color_intrinsic = self.directory / "intrinsic.txt"
        self.K_color: np.ndarray | None = _intrinsics_3x3(color_intrinsic) if color_intrinsic.is_file() else None

        self.axis_align_matrix: np.ndarray | None = None
        self.axis_align_file: Path | None = None
        if use_axis_align:
            self._load_axis_alignment()

    def _load_axis_alignment(self) -> None:
        scene_id = self.directory.resolve().name
        own = self.directory / "axis_align_matrix.txt"
        candidates: list[Path] = [
            self.directory / f"{scene_id}.txt",
            self.directory.resolve().parent.parent / "scans" / scene_id / f"{scene_id}.txt",
        ]
        if own.is_file():
            A: np.ndarray | None = read_matrix_file(own)
            source = own
        else:
            A, source = None, own
            for meta in candidates:
                if meta.is_file():
                    A = read_scannet_axis_alignment(meta)
                    if A is not None:
                        source = meta
                        break
        if A is None:
            return
        try:
            check_rigid(A)
        except ValueError as exc:
            raise ValueError(f"{source}: axis alignment matrix is not a rigid transform: {exc}") from None
        self.axis_align_matrix = A
        self.axis_align_file = source

    def __len__(self) -> int:
        """Number of candidate frames (after the stride, before dropping invalid ones)."""
        return len(self.stems)

    def _iter_frames(self) -> Iterator[PosedFrame]:
        for stem in self.stems:
            pose_path = self.directory / f"{stem}.txt"
            pose = read_matrix_file(pose_path)
            if not np.all(np.isfinite(pose)):
                self.stats.drop("invalid_pose")
                continue
            T_world_cam = self.axis_align_matrix @ pose if self.axis_align_matrix is not None else pose
            with Image.open(self.directory / f"{stem}.jpg") as img:
                rgb = np.asarray(img.convert("RGB"))
            with Image.open(self.directory / f"{stem}.png") as img:
                depth_raw = np.asarray(img)
            if depth_raw.ndim != 2 or depth_raw.dtype.kind not in "ui":
                raise ValueError(
                    f"{self.directory / (stem + '.png')}: depth must be a single-channel 16-bit PNG in millimetres, "
                    f"got mode {img.mode}"
                )
            depth_m = (depth_raw.astype(np.float32) / np.float32(DEPTH_SCALE_MM)).astype(np.float32)
            if not np.any(depth_m > 0):
                self.stats.drop("empty_depth")
                continue
            try:
                yield PosedFrame(
                    stamp_ns=stamp_from_index(int(stem)),
                    rgb=rgb,
                    depth_m=depth_m,
                    K_depth=self.K_depth,
                    T_world_cam=T_world_cam,
                    name=stem,
                )
            except FrameError as exc:
                raise FrameError(f"{pose_path.parent / stem}.*: {exc}") from None

    def describe(self) -> str:
        align = (
            f"axis alignment from {self.axis_align_file.name}"
            if self.axis_align_file is not None
            else ("no axis alignment found" if self.use_axis_align else "axis alignment off")
        )
        stride = f", stride {self.frame_stride}" if self.frame_stride != 1 else ""
        return f"posed images {self.directory}: {len(self.stems)} frames{stride}, {align}"


def _pose_text(T: np.ndarray) -> str:
    # 17 significant digits: the pose survives the text round trip bit for bit.
    return "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in np.asarray(T, dtype=np.float64))


def _K_4x4(K: np.ndarray) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = np.asarray(K, dtype=np.float64)
    return M


def write_posed_images(
    directory: str | Path,
    frames: Sequence[PosedFrame],
    axis_align_matrix: np.ndarray | None = None,
    K_color: np.ndarray | None = None,
    jpeg_quality: int = 95,
) -> list[str]:
    """Write frames in the ScanNet posed-images layout; return the file stems written.

    Frames named with digits keep their name as stem; others are numbered by position (00000,
    00001, ...). Depth is stored as uint16 millimetres (rounded; invalid, NaN and > 65.535 m
    become 0). With `axis_align_matrix` A, pose files hold inv(A) @ T_world_cam and A goes to
    axis_align_matrix.txt, so that reading with axis alignment returns T_world_cam (ScanNet
    stores raw-scan poses the same way). `K_color` (3x3) is written to intrinsic.txt; it may be
    omitted when colour and depth have the same size (it then equals the depth intrinsics).
    Stamps are not stored: the layout has none (the reader derives them from the stem).
    """
    directory = Path(directory)
    if not frames:
        raise ValueError("write_posed_images needs at least one frame")
    if directory.exists() and any(p.suffix in (".jpg", ".png", ".txt") for p in directory.iterdir()):
        raise FileExistsError(f"{directory} already holds posed-image files; write into a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)

    K_depth = np.asarray(frames[0].K_depth, dtype=np.float64)
    for i, f in enumerate(frames):
        if not np.allclose(f.K_depth, K_depth):
            raise ValueError(f"frame {i} ({f.name}) has other depth intrinsics than frame 0: the layout holds one K")
    same_size = frames[0].rgb.shape[:2] == frames[0].depth_m.shape
    if K_color is None:
        if not same_size:
            raise ValueError(
                "K_color is required when colour and depth sizes differ "
                f"(colour {frames[0].rgb.shape[1]}x{frames[0].rgb.shape[0]}, "
                f"depth {frames[0].depth_m.shape[1]}x{frames[0].depth_m.shape[0]})"
            )
        K_color = K_depth
    A_inv = None
    if axis_align_matrix is not None:
        A = np.asarray(axis_align_matrix, dtype=np.float64)
        check_rigid(A)
        A_inv = np.linalg.inv(A)
        (directory / "axis_align_matrix.txt").write_text(_pose_text(A), encoding="utf-8")
    (directory / "intrinsic.txt").write_text(_pose_text(_K_4x4(K_color)), encoding="utf-8")
    (directory / "depth_intrinsic.txt").write_text(_pose_text(_K_4x4(K_depth)), encoding="utf-8")

    stems: list[str] = []
    all_named = all(f.name is not None and f.name.isdigit() for f in frames)
    for i, frame in enumerate(frames):
        stem = frame.name if all_named and frame.name is not None else f"{i:05d}"
        stems.append(stem)
    if len(set(int(s) for s in stems)) != len(stems):
        raise ValueError("frame names must be unique frame indices; rename the frames or clear their names")

    for stem, frame in zip(stems, frames):
        Image.fromarray(frame.rgb).save(directory / f"{stem}.jpg", quality=jpeg_quality, subsampling=0)
        depth = np.nan_to_num(frame.depth_m.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        mm = np.rint(depth * DEPTH_SCALE_MM)
        mm[(mm < 0) | (mm > 65535)] = 0
        Image.fromarray(mm.astype(np.uint16)).save(directory / f"{stem}.png")
        T = np.asarray(frame.T_world_cam, dtype=np.float64)
        pose = A_inv @ T if A_inv is not None else T
        (directory / f"{stem}.txt").write_text(_pose_text(pose), encoding="utf-8")
    return stems
