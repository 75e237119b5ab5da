"""ScanNet `.sens` RGB-D streams: a streaming reader and a writer (for tests and tools).

Layout (ScanNet `SensReader/python/SensorData.py` and `sensorData.h`; all little-endian):

    header  uint32   version                       (4)
            uint64   sensor name length n, then n bytes of name
            float32  intrinsic_color[16]           (4x4, row-major)
            float32  extrinsic_color[16]
            float32  intrinsic_depth[16]
            float32  extrinsic_depth[16]
            int32    color_compression_type        (-1 unknown, 0 raw, 1 png, 2 jpeg)
            int32    depth_compression_type        (-1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort)
            uint32   color_width, color_height, depth_width, depth_height
            float32  depth_shift                   (depth value per metre; 1000 = millimetres)
            uint64   num_frames
    frame   float32  camera_to_world[16]           (4x4; rows of -inf mark lost tracking)
            uint64   timestamp_color, timestamp_depth
            uint64   color_size_bytes, depth_size_bytes
            bytes    color data, then depth data

ScanNet files are always JPEG colour and zlib-compressed uint16 depth; those are the only
compressions supported (others raise a ValueError naming the file and the type). Poses are in
the raw scan frame: apply the scene's axis alignment (`<scene>.txt`) to get the aligned frame.
The reader streams frame by frame and skips the bytes of frames it does not keep, so a
multi-gigabyte file costs one frame of memory.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

__all__ = [
    "SENS_VERSION",
    "COLOR_COMPRESSION",
    "DEPTH_COMPRESSION",
    "SensHeader",
    "SensFrame",
    "read_sens_header",
    "read_sens",
    "write_sens",
]

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_JPEG, _ZLIB_USHORT = 2, 1
_MAX_NAME_BYTES = 1 << 16  # a longer "sensor name" means a corrupt or foreign file
_FRAME_HEAD = struct.Struct("<16f4Q")  # pose, timestamp_color, timestamp_depth, color_size, depth_size


@dataclass(frozen=True)
class SensHeader:
    """The stream-level fields of a .sens file. Matrices are 4x4 float64 (stored as float32)."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression_type: int
    depth_compression_type: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int

    @property
    def K_color(self) -> np.ndarray:
        """3x3 pinhole intrinsics of the colour camera."""
        return self.intrinsic_color[:3, :3].copy()

    @property
    def K_depth(self) -> np.ndarray:
        """3x3 pinhole intrinsics of the depth camera."""
        return self.intrinsic_depth[:3, :3].copy()


@dataclass(frozen=True, eq=False)
class SensFrame:
    """One RGB-D frame as stored: JPEG colour bytes, depth in millimetres, raw-scan pose.

    `depth_mm` is uint16 millimetres (0 = no measurement), converted with rounding when the file's
    depth_shift is not 1000. `T_world_cam` is the camera-to-world pose in the raw scan frame
    (float64 from float32; non-finite when ScanNet lost tracking). Timestamps are the sensor's raw
    counters as stored.
    """

    index: int
    color_jpeg: bytes
    depth_mm: np.ndarray
    T_world_cam: np.ndarray
    K_color: np.ndarray
    K_depth: np.ndarray
    timestamp_color: int
    timestamp_depth: int

    def rgb(self) -> np.ndarray:
        """Decode the colour JPEG to an HxWx3 uint8 RGB array."""
        with Image.open(io.BytesIO(self.color_jpeg)) as img:
            return np.asarray(img.convert("RGB"))


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path.name}: file ends inside {what} (needed {n} bytes, got {len(data)}); the file is truncated")
    return data


def _read_header(f: BinaryIO, path: Path) -> SensHeader:
    (version,) = struct.unpack("<I", _read_exact(f, 4, path, "the version field"))
    if version != SENS_VERSION:
        raise ValueError(f"{path.name}: unsupported .sens version {version} (expected {SENS_VERSION}); not a ScanNet v2 .sens file?")
    (name_len,) = struct.unpack("<Q", _read_exact(f, 8, path, "the sensor name length"))
    if name_len > _MAX_NAME_BYTES:
        raise ValueError(f"{path.name}: sensor name length {name_len} is implausible (> {_MAX_NAME_BYTES} bytes); corrupt header")
    name = _read_exact(f, name_len, path, "the sensor name").decode("utf-8", errors="replace")
    mats = np.frombuffer(_read_exact(f, 4 * 64, path, "the calibration matrices"), dtype="<f4").astype(np.float64)
    color_ct, depth_ct, cw, ch, dw, dh, shift, num_frames = struct.unpack(
        "<iiIIIIfQ", _read_exact(f, 4 * 7 + 8, path, "the stream description")
    )
    if color_ct != _JPEG:
        raise ValueError(
            f"{path.name}: unsupported color compression type {color_ct} "
            f"({COLOR_COMPRESSION.get(color_ct, 'undefined')}; expected 2 = jpeg)"
        )
    if depth_ct != _ZLIB_USHORT:
        raise ValueError(
            f"{path.name}: unsupported depth compression type {depth_ct} "
            f"({DEPTH_COMPRESSION.get(depth_ct, 'undefined')}; expected 1 = zlib_ushort)"
        )
    if min(cw, ch, dw, dh) == 0:
        raise ValueError(f"{path.name}: zero image size in header (colour {cw}x{ch}, depth {dw}x{dh})")
    if not np.isfinite(shift) or shift <= 0:
        raise ValueError(f"{path.name}: depth_shift must be a positive number (depth units per metre), got {shift}")
    m = mats.reshape(4, 4, 4)
    return SensHeader(
        version=version,
        sensor_name=name,
        intrinsic_color=m[0],
        extrinsic_color=m[1],
        intrinsic_depth=m[2],
        extrinsic_depth=m[3],
        color_compression_type=color_ct,
        depth_compression_type=depth_ct,
        color_width=cw,
        color_height=ch,
        depth_width=dw,
        depth_height=dh,
        depth_shift=float(shift),
        num_frames=num_frames,
    )


def read_sens_header(path: str | Path) -> SensHeader:
    """Read and validate only the header of a .sens file."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_header(f, path)


def _depth_to_mm(raw: np.ndarray, depth_shift: float) -> np.ndarray:
    if depth_shift == 1000.0:
        return raw
    mm = np.rint(raw.astype(np.float64) * (1000.0 / depth_shift))
    mm[mm > 65535] = 0  # not representable in the uint16 millimetre layout
    return mm.astype(np.uint16)


def read_sens(path: str | Path, frame_stride: int = 1) -> Iterator[SensFrame]:
    """Stream the frames of a .sens file (every `frame_stride`-th, starting at frame 0).

    Raises ValueError naming the file (and frame) for a wrong version, unsupported compression,
    truncation, corrupt zlib data or a depth payload of the wrong size.
    """
    path = Path(path)
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive integer, got {frame_stride!r}")
    with open(path, "rb") as f:
        header = _read_header(f, path)
        K_color, K_depth = header.K_color, header.K_depth
        depth_pixels = header.depth_width * header.depth_height
        file_size = os.fstat(f.fileno()).st_size
        for i in range(header.num_frames):
            where = f"frame {i} of {header.num_frames}"
            values = _FRAME_HEAD.unpack(_read_exact(f, _FRAME_HEAD.size, path, f"the header of {where}"))
            ts_color, ts_depth, color_size, depth_size = (int(v) for v in values[16:])
            if i % frame_stride != 0:
                skipped = f.seek(color_size + depth_size, io.SEEK_CUR)
                if skipped > file_size:
                    raise ValueError(f"{path.name}: file ends inside the image data of {where}; the file is truncated")
                continue
            color = _read_exact(f, color_size, path, f"the colour data of {where}")
            depth_z = _read_exact(f, depth_size, path, f"the depth data of {where}")
            try:
                depth_bytes = zlib.decompress(depth_z)
            except zlib.error as exc:
                raise ValueError(f"{path.name}: {where}: depth data is not valid zlib ({exc})") from None
            if len(depth_bytes) != 2 * depth_pixels:
                raise ValueError(
                    f"{path.name}: {where}: depth holds {len(depth_bytes)} bytes, expected "
                    f"{2 * depth_pixels} ({header.depth_width}x{header.depth_height} uint16)"
                )
            raw = np.frombuffer(depth_bytes, dtype="<u2").reshape(header.depth_height, header.depth_width)
            yield SensFrame(
                index=i,
                color_jpeg=color,
                depth_mm=_depth_to_mm(raw.astype(np.uint16), header.depth_shift),
                T_world_cam=np.array(values[:16], dtype=np.float64).reshape(4, 4),
                K_color=K_color,
                K_depth=K_depth,
                timestamp_color=ts_color,
                timestamp_depth=ts_depth,
            )


def _as_4x4(K: np.ndarray, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        M = np.eye(4)
        M[:3, :3] = K
        return M
    if K.shape != (4, 4):
        raise ValueError(f"{name} must be a 3x3 or 4x4 intrinsics matrix, got shape {K.shape}")
    return K


def _encode_color(color: bytes | np.ndarray, size: tuple[int, int], jpeg_quality: int, i: int) -> bytes:
    if isinstance(color, (bytes, bytearray)):
        return bytes(color)
    rgb = np.asarray(color)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frame {i}: colour must be JPEG bytes or an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if (rgb.shape[1], rgb.shape[0]) != size:
        raise ValueError(f"frame {i}: colour is {rgb.shape[1]}x{rgb.shape[0]}, header says {size[0]}x{size[1]}")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def write_sens(
    path: str | Path,
    frames: Iterable[tuple[bytes | np.ndarray, np.ndarray, np.ndarray]],
    K_color: np.ndarray,
    K_depth: np.ndarray,
    color_size: tuple[int, int],
    depth_size: tuple[int, int],
    depth_shift: float = 1000.0,
    sensor_name: str = "StructureSensor",
    jpeg_quality: int = 95,
    timestamps: Iterable[tuple[int, int]] | None = None,
) -> int:
    """Write a ScanNet-format .sens file; return the number of frames written.

    `frames` yields (colour, depth, T_world_cam): colour as JPEG bytes (stored as given) or an
    HxWx3 uint8 RGB array (JPEG-encoded at `jpeg_quality`), depth as an HxW uint16 array in
    depth_shift units (millimetres by default), T_world_cam a 4x4 camera-to-world pose.
    Sizes are (width, height). Extrinsics are written as identity. Timestamps default to
    (i, i) per frame.
    """
    path = Path(path)
    cw, ch = (int(v) for v in color_size)
    dw, dh = (int(v) for v in depth_size)
    name = sensor_name.encode("utf-8")
    ts_iter = iter(timestamps) if timestamps is not None else None
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IQ", SENS_VERSION, len(name)) + name)
        for M in (_as_4x4(K_color, "K_color"), np.eye(4), _as_4x4(K_depth, "K_depth"), np.eye(4)):
            f.write(np.asarray(M, dtype="<f4").tobytes())
        f.write(struct.pack("<iiIIIIf", _JPEG, _ZLIB_USHORT, cw, ch, dw, dh, depth_shift))
        count_offset = f.tell()
        f.write(struct.pack("<Q", 0))  # patched below once the frames are counted
        for i, (color, depth, T) in enumerate(frames):
            depth = np.asarray(depth)
            if depth.dtype != np.uint16 or depth.shape != (dh, dw):
                raise ValueError(f"frame {i}: depth must be a {dh}x{dw} uint16 array, got {depth.dtype} {depth.shape}")
            pose = np.asarray(T, dtype=np.float64)
            if pose.shape != (4, 4):
                raise ValueError(f"frame {i}: T_world_cam must be 4x4, got shape {pose.shape}")
            color_bytes = _encode_color(color, (cw, ch), jpeg_quality, i)
            depth_bytes = zlib.compress(depth.astype("<u2").tobytes())
            ts_c, ts_d = next(ts_iter) if ts_iter is not None else (i, i)
            f.write(pose.astype("<f4").tobytes())
            f.write(struct.pack("<4Q", ts_c, ts_d, len(color_bytes), len(depth_bytes)))
            f.write(color_bytes)
            f.write(depth_bytes)
            count += 1
        f.seek(count_offset)
        f.write(struct.pack("<Q", count))
    return count
