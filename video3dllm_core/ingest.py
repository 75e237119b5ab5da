"""Per-frame ingestion: everything later stages need from a posed RGB-D frame, computed once.

`FrameIngestor.ingest(frame)` turns a validated `PosedFrame` into an `IngestedFrame` that keeps only
what the keyframe index and the model read, so the raw images can be dropped:

* the model-ready colour crop (384x384x3 uint8), made exactly as the upstream Video-3D LLM code does
  (PIL bicubic resize of the short side to 384, centre crop);
* the depth samples under that crop (384x384 float32, nearest neighbour as upstream's cv2
  INTER_NEAREST resize of the world-coordinate map), from which the per-pixel world coordinates are
  recomputed exactly on access (`world_coords`), at a third of the memory of storing them;
* the 14x14x3 patch-averaged world coordinates that feed the 3D position embedding;
* the sorted unique int64 voxel keys of the frame's valid points, for coverage-based keyframes.

The exact conventions are those of `test/fixtures/reference_parity/README.md` ("Conventions"
1, 2 and 5); the parity tests check crops, sampling indices and coordinates against the upstream
implementation's recorded outputs. See docs/keyframes.md for the memory budget per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from video3dllm_core.frame import FrameError, PosedFrame
from video3dllm_core.geometry import apply_transform, apply_transform_f32, backproject_pixels, sorted_unique, voxel_keys

__all__ = [
    "IngestConfig",
    "CropGeometry",
    "IngestedFrame",
    "FrameIngestor",
    "crop_geometry",
    "model_crop",
    "sample_crop_depth",
    "crop_world_coords",
    "patch_average",
    "patch_world_coords",
    "coverage_voxel_keys",
]


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingestion step.

    Attributes:
        voxel_size_m: edge of the coverage voxels (upstream max-coverage sampling: 0.1 m).
        coverage_stride_px: take every n-th depth row and column for the coverage voxels (4 gives
            ~19k points for 640x480, plenty for 0.1 m voxels and ~10x cheaper than stride 1).
        coverage_min_depth_m / coverage_max_depth_m: depth range counted for coverage. Zero/NaN
            depth is never counted; far, noisy depth would add spurious voxels.
        crop_size: side of the model crop (SigLIP so400m-patch14-384: 384).
        vision_patch_px: vision-tower patch size (14); crop_size // vision_patch_px patches per side.
        patch_grid: pooled patch grid per side (14) over which world coordinates are averaged.
    """

    voxel_size_m: float = 0.1
    coverage_stride_px: int = 4
    coverage_min_depth_m: float = 0.1
    coverage_max_depth_m: float = 5.0
    crop_size: int = 384
    vision_patch_px: int = 14
    patch_grid: int = 14

    def __post_init__(self) -> None:
        if not self.voxel_size_m > 0:
            raise ValueError(f"voxel_size_m must be positive, got {self.voxel_size_m}")
        if int(self.coverage_stride_px) != self.coverage_stride_px or self.coverage_stride_px < 1:
            raise ValueError(f"coverage_stride_px must be a positive integer, got {self.coverage_stride_px}")
        if not 0 <= self.coverage_min_depth_m < self.coverage_max_depth_m:
            raise ValueError(
                "coverage_min_depth_m must be >= 0 and below coverage_max_depth_m, got "
                f"{self.coverage_min_depth_m} and {self.coverage_max_depth_m}"
            )
        if self.crop_size < self.vision_patch_px or self.vision_patch_px < 1 or self.patch_grid < 1:
            raise ValueError(
                f"crop_size ({self.crop_size}) must be >= vision_patch_px ({self.vision_patch_px}) >= 1 and patch_grid >= 1"
            )
        if self.patch_region_px % self.patch_grid:
            raise ValueError(
                f"patch_grid {self.patch_grid} must divide the patch region {self.patch_region_px} px "
                f"(= crop_size // vision_patch_px * vision_patch_px)"
            )

    @property
    def patch_region_px(self) -> int:
        """Side of the crop region the vision tower sees (378 for 384/14)."""
        return (self.crop_size // self.vision_patch_px) * self.vision_patch_px

    @property
    def patch_block_px(self) -> int:
        """Side of the pixel block averaged per pooled patch (27 for 378/14)."""
        return self.patch_region_px // self.patch_grid


@dataclass(frozen=True, eq=False)
class CropGeometry:
    """Where the model crop lies, shared by every frame of the same depth-image size.

    Attributes:
        depth_hw: (height, width) of the depth image the geometry was computed for.
        resized_wh: (width, height) both the colour image and the world map are resized to.
        left, top: crop offset in the resized image.
        rows, cols: int32 [crop_size] depth-image row / column sampled by each crop row / column
            (nearest neighbour, floor(dst * src / resized) as cv2 INTER_NEAREST).
    """

    depth_hw: tuple[int, int]
    resized_wh: tuple[int, int]
    left: int
    top: int
    rows: np.ndarray
    cols: np.ndarray


@lru_cache(maxsize=32)
def crop_geometry(depth_hw: tuple[int, int], crop_size: int = 384) -> CropGeometry:
    """Crop geometry for a depth image of size (h, w), following upstream's "center_crop".

    Upstream (llava/video_utils.py, VideoProcessor.preprocess) takes H, W from the world-coordinate
    map, i.e. the DEPTH image, resizes both the colour image and the map to
    (int(W * (crop / H)), crop) and crops ((new_w - crop) // 2, (new_h - crop) // 2). For portrait
    images (H > W) upstream would crop outside the image; here the short side goes to `crop`
    instead: (crop, int(H * (crop / W))), which is identical for landscape and square images.
    """
    h, w = int(depth_hw[0]), int(depth_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"depth image size must be positive, got {depth_hw}")
    if h <= w:
        new_w, new_h = int(w * (crop_size / h)), crop_size
    else:
        new_w, new_h = crop_size, int(h * (crop_size / w))
    left = (new_w - crop_size) // 2
    top = (new_h - crop_size) // 2
    # cv2.resize INTER_NEAREST: inv_scale = dst / src (double), src = min(floor(dst * (1 / inv_scale)), src - 1)
    ifx = 1.0 / (new_w / w)
    ify = 1.0 / (new_h / h)
    cols = np.minimum(np.floor((np.arange(crop_size) + left) * ifx), w - 1).astype(np.int32)
    rows = np.minimum(np.floor((np.arange(crop_size) + top) * ify), h - 1).astype(np.int32)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return CropGeometry((h, w), (new_w, new_h), left, top, rows, cols)


def model_crop(rgb: np.ndarray, geometry: CropGeometry, crop_size: int = 384) -> np.ndarray:
    """Model-ready crop: PIL bicubic resize of the colour image to geometry.resized_wh, centre crop.

    The colour image may have another size than the depth image (ScanNet 1296x968 vs 640x480); it is
    resized to the size derived from the depth image, as upstream does.
    """
    resized = Image.fromarray(rgb).resize(geometry.resized_wh, resample=Image.Resampling.BICUBIC)
    arr = np.asarray(resized)
    return np.ascontiguousarray(arr[geometry.top : geometry.top + crop_size, geometry.left : geometry.left + crop_size])


def sample_crop_depth(depth_m: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Depth under each crop pixel (nearest), float32; NaN, inf and negative depth become 0.

    Upstream depth is uint16 millimetres, where 0 is the only invalid value and back-projects to the
    camera centre (not masked). Float depth from a robot can also be NaN/inf; it is treated as 0 so
    that it behaves exactly like upstream's invalid depth (camera centre) instead of poisoning the
    patch averages with NaN.
    """
    return _sanitise_depth(depth_m[geometry.rows[:, None], geometry.cols[None, :]])


def _sanitise_depth(d: np.ndarray) -> np.ndarray:
    bad = ~(d >= 0) | ~np.isfinite(d)  # NaN fails every comparison
    if bad.any():
        d = np.where(bad, np.float32(0), d)
    return np.ascontiguousarray(d, dtype=np.float32)


def crop_world_coords(
    crop_depth_m: np.ndarray, rows: np.ndarray, cols: np.ndarray, K_depth: np.ndarray, T_world_cam: np.ndarray
) -> np.ndarray:
    """Per-pixel world coordinates (S x S x 3 float32) of the crop, exactly as upstream.

    Integer depth-pixel indices (no +0.5), float32 intrinsics and arithmetic, T_world_cam formed by
    the caller in float64 and cast to float32 here, float32 FMA transform (see apply_transform_f32).
    """
    x, y, z = backproject_pixels(cols[None, :], rows[:, None], crop_depth_m, K_depth)
    return apply_transform_f32(T_world_cam, x, y, z)


def patch_average(world_coords: np.ndarray, config: IngestConfig) -> np.ndarray:
    """Average world coordinates over non-overlapping blocks of the patch region (upstream float32 mean).

    For 384/14: world_coords[:378, :378] averaged over 27x27 blocks -> 14x14x3 float32. The float32
    sum runs sequentially over each block's pixels in row-major order, then divides by the count,
    which reproduces upstream's torch mean bitwise (a float64 mean differs by up to 9e-6 m).
    """
    r, g, b = config.patch_region_px, config.patch_grid, config.patch_block_px
    blocks = np.asarray(world_coords, dtype=np.float32)[:r, :r].reshape(g, b, g, b, 3)
    seq = np.ascontiguousarray(blocks.transpose(1, 3, 0, 2, 4)).reshape(b * b, g, g, 3)
    return _sequential_mean(seq)


def _sequential_mean(values: np.ndarray) -> np.ndarray:
    """float32 mean over axis 0 accumulated strictly in order (numpy reduces a non-inner axis
    element-wise, one slice after the other; no pairwise summation)."""
    return np.add.reduce(values, axis=0, dtype=np.float32) / np.float32(values.shape[0])


def patch_world_coords(
    depth_m: np.ndarray, geometry: CropGeometry, K_depth: np.ndarray, T_world_cam: np.ndarray, config: IngestConfig
) -> np.ndarray:
    """patch_average(world coordinates of the crop) without building the full crop map first.

    Samples the depth directly in block-major order (pixel-in-block first, block second) so that
    the sequential block sum needs no transposed copy; bitwise equal to patch_average.
    """
    r, g, b = config.patch_region_px, config.patch_grid, config.patch_block_px
    rows = geometry.rows[:r].reshape(g, b).T[:, None, :, None]  # (i, 1, bi, 1)
    cols = geometry.cols[:r].reshape(g, b).T[None, :, None, :]  # (1, j, 1, bj)
    d = _sanitise_depth(depth_m[rows, cols])
    x, y, z = backproject_pixels(cols, rows, d, K_depth)
    world = apply_transform_f32(T_world_cam, x, y, z)  # (i, j, bi, bj, 3)
    return _sequential_mean(world.reshape(b * b, g, g, 3))


def coverage_voxel_keys(depth_m: np.ndarray, K_depth: np.ndarray, T_world_cam: np.ndarray, config: IngestConfig) -> np.ndarray:
    """Sorted unique int64 world voxel keys (geometry.voxel_keys) of the frame's valid depth pixels.

    Every `coverage_stride_px`-th row and column, depth within [min, max] (NaN excluded), integer
    pixel indices as everywhere else; float64 arithmetic (x = (u - cx) * z / fx, p = R x + t).
    """
    s = config.coverage_stride_px
    sub = depth_m[::s, ::s]
    valid = (sub >= config.coverage_min_depth_m) & (sub <= config.coverage_max_depth_m)
    vi, ui = np.nonzero(valid)
    K = np.asarray(K_depth, dtype=np.float64)
    z = sub[vi, ui].astype(np.float64)
    cam = np.empty((z.size, 3), dtype=np.float64)
    cam[:, 0] = (ui * s - K[0, 2]) * z / K[0, 0]
    cam[:, 1] = (vi * s - K[1, 2]) * z / K[1, 1]
    cam[:, 2] = z
    return sorted_unique(voxel_keys(apply_transform(T_world_cam, cam), config.voxel_size_m))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class IngestedFrame:
    """What is kept of a frame after ingestion (the raw colour and depth images are not).

    Attributes:
        stamp_ns: acquisition time (integer nanoseconds).
        T_world_cam: 4x4 float64 camera-to-world pose (as given).
        K_depth: 3x3 float64 depth intrinsics.
        crop_rgb: crop_size x crop_size x 3 uint8 model crop (read-only).
        crop_depth_m: crop_size x crop_size float32 depth sampled under the crop, invalid -> 0.
        patch_world_coords: patch_grid x patch_grid x 3 float32 block-averaged world coordinates.
        voxel_keys: sorted unique int64 coverage voxel keys (world frame).
        voxel_size_m: voxel size the keys were computed with.
        geometry: crop geometry (shared between frames of the same depth size).
        name: optional source name.
    """

    stamp_ns: int
    T_world_cam: np.ndarray
    K_depth: np.ndarray
    crop_rgb: np.ndarray
    crop_depth_m: np.ndarray
    patch_world_coords: np.ndarray
    voxel_keys: np.ndarray
    voxel_size_m: float
    geometry: CropGeometry = field(repr=False)
    name: str | None = None

    def __post_init__(self) -> None:
        s = self.crop_rgb.shape[0]
        if self.crop_rgb.shape != (s, s, 3) or self.crop_rgb.dtype != np.uint8:
            raise FrameError(f"crop_rgb must be SxSx3 uint8, got {self.crop_rgb.shape} {self.crop_rgb.dtype}")
        if self.crop_depth_m.shape != (s, s) or self.crop_depth_m.dtype != np.float32:
            raise FrameError(f"crop_depth_m must be {s}x{s} float32, got {self.crop_depth_m.shape} {self.crop_depth_m.dtype}")
        keys = self.voxel_keys
        if keys.ndim != 1 or keys.dtype != np.int64 or (keys.size > 1 and not np.all(keys[1:] > keys[:-1])):
            raise FrameError("voxel_keys must be a sorted, duplicate-free 1-D int64 array (geometry.sorted_unique)")

    @property
    def world_coords(self) -> np.ndarray:
        """crop_size x crop_size x 3 float32 world coordinates of the crop pixels (recomputed, ~2 ms).

        Bitwise the values upstream hands to the model (fixture `world_coords`); zero depth gives the
        camera centre. Computed on each access so that a frame keeps 0.6 MB instead of 1.8 MB.
        """
        return crop_world_coords(self.crop_depth_m, self.geometry.rows, self.geometry.cols, self.K_depth, self.T_world_cam)

    @property
    def nbytes(self) -> int:
        """Bytes held by this frame's own arrays (the shared CropGeometry is not counted)."""
        arrays = (self.T_world_cam, self.K_depth, self.crop_rgb, self.crop_depth_m, self.patch_world_coords, self.voxel_keys)
        return int(sum(a.nbytes for a in arrays))


class FrameIngestor:
    """Turns PosedFrames into IngestedFrames (stateless apart from the config; thread-safe)."""

    def __init__(self, config: IngestConfig | None = None) -> None:
        self.config = config if config is not None else IngestConfig()

    def ingest(self, frame: PosedFrame) -> IngestedFrame:
        """Compute the crop, depth samples, patch coordinates and voxel keys of one frame.

        The frame was validated when it was constructed (FrameError names the bad field).
        """
        if not isinstance(frame, PosedFrame):
            raise TypeError(f"ingest() takes a PosedFrame, got {type(frame).__name__}")
        cfg = self.config
        depth = frame.depth_m
        K = np.array(frame.K_depth, dtype=np.float64)
        T = np.array(frame.T_world_cam, dtype=np.float64)
        geom = crop_geometry(depth.shape, cfg.crop_size)
        crop = model_crop(frame.rgb, geom, cfg.crop_size)
        crop_depth = sample_crop_depth(depth, geom)
        patches = patch_world_coords(depth, geom, K, T, cfg)
        keys = coverage_voxel_keys(depth, K, T, cfg)
        return IngestedFrame(
            stamp_ns=int(frame.stamp_ns),
            T_world_cam=_readonly(T),
            K_depth=_readonly(K),
            crop_rgb=_readonly(crop),
            crop_depth_m=_readonly(crop_depth),
            patch_world_coords=_readonly(patches),
            voxel_keys=_readonly(keys),
            voxel_size_m=cfg.voxel_size_m,
            geometry=geom,
            name=frame.name,
        )
