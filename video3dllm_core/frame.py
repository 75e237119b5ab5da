"""Posed RGB-D frames: the one input type of every stage (ingest, keyframes, model, engine).

A frame is what a sensor, a bag or a dataset directory gives at one instant: colour, metric depth,
the depth camera's intrinsics and the camera-to-world pose, in the optical convention (x right,
y down, z forward). Colour and depth may have different sizes, as in ScanNet (1296x968 colour,
640x480 depth): only the depth intrinsics are needed, because world coordinates are computed at
depth resolution and resampled to the colour crop, as the upstream code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from video3dllm_core.geometry import check_rigid

__all__ = ["PosedFrame", "FrameError", "validate_frame", "ASPECT_TOLERANCE"]

ASPECT_TOLERANCE = 0.02
"""Largest relative difference between the colour and depth aspect ratios (ScanNet: 0.4 %).

Pixels are mapped between the two images by scaling alone (as upstream), which is only right when
both cover the same field of view."""


class FrameError(ValueError):
    """A frame that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True, eq=False)
class PosedFrame:
    """One posed RGB-D observation.

    Attributes:
        stamp_ns: acquisition time in integer nanoseconds (ROS time or dataset index based).
        rgb: colour image, HxWx3 uint8, RGB channel order.
        depth_m: depth image in metres, hxw float32; invalid pixels are 0 or NaN.
        K_depth: 3x3 pinhole intrinsics of the depth image (pixels).
        T_world_cam: 4x4 camera-to-world transform (float64), optical camera axes.
        name: optional source name (posed-images file stem), kept for reporting.
    """

    stamp_ns: int
    rgb: np.ndarray
    depth_m: np.ndarray
    K_depth: np.ndarray
    T_world_cam: np.ndarray
    name: str | None = None

    def __post_init__(self) -> None:
        validate_frame(self)


def validate_frame(frame: PosedFrame) -> None:
    """Raise FrameError naming the offending field when the frame is unusable."""
    if not isinstance(frame.stamp_ns, (int, np.integer)):
        raise FrameError(f"stamp_ns must be an integer number of nanoseconds, got {type(frame.stamp_ns).__name__}")
    rgb = frame.rgb
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise FrameError(f"rgb must be an HxWx3 array, got shape {shape}; convert mono or RGBA images to RGB first")
    if rgb.dtype != np.uint8:
        raise FrameError(f"rgb must be uint8, got {rgb.dtype}; scale float images to 0..255 and cast")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise FrameError(f"rgb is empty (shape {rgb.shape}); check the colour topic/file")
    depth = frame.depth_m
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise FrameError(f"depth_m must be an HxW array in metres, got shape {getattr(depth, 'shape', None)}")
    if depth.dtype != np.float32:
        raise FrameError(
            f"depth_m must be float32 metres, got {depth.dtype}; convert millimetre uint16 depth with depth_mm / 1000"
        )
    if depth.size == 0:
        raise FrameError(f"depth_m is empty (shape {depth.shape}); check the depth topic/file")
    aspect_rgb = rgb.shape[1] / rgb.shape[0]
    aspect_depth = depth.shape[1] / depth.shape[0]
    if abs(aspect_rgb / aspect_depth - 1.0) > ASPECT_TOLERANCE:
        raise FrameError(
            f"rgb ({rgb.shape[1]}x{rgb.shape[0]}) and depth_m ({depth.shape[1]}x{depth.shape[0]}) have different "
            "aspect ratios: colour and depth must be registered (same field of view, e.g. depth aligned to colour); "
            "use the registered/aligned depth stream"
        )
    K = np.asarray(frame.K_depth)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise FrameError(f"K_depth must be a finite 3x3 intrinsics matrix, got shape {K.shape}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise FrameError(f"K_depth focal lengths must be positive, got fx={fx}, fy={fy}")
    h, w = depth.shape
    if not (0 < cx < w and 0 < cy < h):
        raise FrameError(
            f"K_depth principal point (cx={cx:.1f}, cy={cy:.1f}) lies outside the {w}x{h} depth image: "
            "the intrinsics belong to another resolution; pass the depth camera's intrinsics "
            "(depth_intrinsic.txt, or the depth topic's camera_info)"
        )
    T = np.asarray(frame.T_world_cam)
    if T.shape != (4, 4):
        raise FrameError(f"T_world_cam must be a 4x4 camera-to-world matrix, got shape {T.shape}")
    try:
        check_rigid(T)
    except ValueError as exc:
        raise FrameError(f"T_world_cam: {exc}") from None
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise FrameError("depth_m has no valid pixel (all zero or NaN): drop the frame or check the depth topic/encoding")
