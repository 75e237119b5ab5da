"""ROS image messages <-> numpy, without cv_bridge: colour to RGB uint8, depth to metres.

Works on any object with the standard ROS 2 field names, so the same code serves rclpy messages,
`rosbags` message classes and plain dataclasses:

  * sensor_msgs/Image: height, width, encoding, is_bigendian, step, data
  * sensor_msgs/CompressedImage: format, data
  * sensor_msgs/CameraInfo: k (row-major 3x3; ROS 1's `K` is accepted too), width, height

Decoding rules (what a robot user expects from cv_bridge + image_transport):

  * colour: rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8/8UC1 (grey replicated to RGB);
    result HxWx3 uint8 in RGB order.
  * depth: 16UC1/mono16 in millimetres -> metres (0 stays 0 = invalid); 32FC1 in metres
    (NaN/0 = invalid); result HxW float32 metres.
  * row padding (`step` > width * bytes per pixel) is skipped, `is_bigendian` is honoured.
  * CompressedImage colour: any JPEG/PNG payload (image_transport's "compressed" format strings
    such as "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8", or just "jpeg"); the
    file holds true colours whatever the cv channel order named in the string.
  * CompressedImage depth: compressed_depth_image_transport "16UC1; compressedDepth png"
    (12-byte ConfigHeader + 16-bit PNG in millimetres) and "32FC1; compressedDepth png"
    (inverse-depth quantisation: depth = A / (v - B), v = 0 invalid); a plain 16-bit PNG
    ("16UC1; png compressed 16UC1") is read as millimetres. The RVL variant
    ("compressedDepth rvl") is not supported: republish with png.

Encoders (numpy -> message fields, returned as dicts to splat into a message constructor
together with a header) exist for the tests and the bag writer.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image as PILImage

__all__ = [
    "ImageCodecError",
    "CameraInfoSizeError",
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "is_compressed",
    "decode_rgb",
    "decode_depth_m",
    "image_to_array",
    "camera_info_k",
    "camera_info_size",
    "intrinsics_for_depth",
    "encode_rgb_image",
    "encode_depth_image",
    "encode_rgb_compressed",
    "encode_depth_compressed",
    "encode_camera_info",
]


class ImageCodecError(ValueError):
    """An image message that cannot be decoded; the message names the field and the fix."""


class CameraInfoSizeError(ImageCodecError):
    """A camera_info declares another resolution than the depth image it is paired with.

    A subclass so that a caller can treat it apart from broken intrinsics: the bag source drops
    such a frame (a recording may mix streams), while an uncalibrated K fails the whole bag.
    """


# encoding -> (numpy dtype, channels)
_LAYOUT: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "8UC1": ("u1", 1),
    "16UC1": ("u2", 1),
    "mono16": ("u2", 1),
    "32FC1": ("f4", 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_CONFIG_HEADER = struct.Struct("<iff")  # compressed_depth_image_transport::ConfigHeader (format, depthParam[2])
_INV_DEPTH = 0  # compressionFormat::INV_DEPTH


def is_compressed(msg: Any) -> bool:
    """True for a CompressedImage-like object (has `format`, no `encoding`)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    return np.frombuffer(bytes(data), dtype=np.uint8)


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> HxW or HxWxC array in the encoding's native dtype (a copy, native byte order)."""
    encoding = str(msg.encoding)
    if encoding not in _LAYOUT:
        raise ImageCodecError(
            f"unsupported image encoding '{encoding}'; supported: colour {', '.join(COLOR_ENCODINGS)}, "
            f"depth {', '.join(DEPTH_ENCODINGS)}"
        )
    kind, channels = _LAYOUT[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = int(kind[1])
    row_bytes = width * channels * itemsize
    if height <= 0 or width <= 0:
        raise ImageCodecError(f"image has height={height}, width={width}: an empty image cannot be used")
    if step < row_bytes:
        raise ImageCodecError(
            f"image step={step} is smaller than width * bytes per pixel = {row_bytes} for {width} px of '{encoding}': "
            "the publisher wrote a wrong step"
        )
    raw = _as_bytes(msg.data)
    if raw.size < step * height:
        raise ImageCodecError(
            f"image data has {raw.size} bytes but step * height = {step} * {height} = {step * height} are needed: "
            "truncated message"
        )
    rows = raw[: step * height].reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<") if itemsize > 1 else np.dtype(kind)
    arr = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    arr = arr.astype(np.dtype(kind).newbyteorder("="), copy=True)
    return arr[:, :, 0] if channels == 1 else arr


def _to_rgb(arr: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ("mono8", "8UC1"):
        return np.repeat(arr[:, :, None], 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def _open_compressed(data: Any, fmt: str) -> PILImage.Image:
    try:
        img = PILImage.open(io.BytesIO(_as_bytes(data).tobytes()))
        img.load()
    except Exception as exc:  # PIL raises several types for bad payloads
        raise ImageCodecError(
            f"cannot decode CompressedImage with format '{fmt}': {exc}; only JPEG and PNG payloads are supported"
        ) from None
    return img


def decode_rgb(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> HxWx3 uint8 RGB."""
    if is_compressed(msg):
        fmt = str(msg.format)
        if "compresseddepth" in fmt.lower():
            raise ImageCodecError(
                f"CompressedImage format '{fmt}' is a depth image; the colour topic must carry a colour image "
                "(check the rgb topic)"
            )
        img = _open_compressed(msg.data, fmt)
        if img.mode in ("I;16", "I;16B", "I", "F"):
            raise ImageCodecError(
                f"CompressedImage format '{fmt}' holds a {img.mode} (16/32-bit) image, not colour: check the rgb topic"
            )
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    encoding = str(msg.encoding)
    if encoding in DEPTH_ENCODINGS:
        raise ImageCodecError(
            f"image encoding '{encoding}' is a depth encoding; the colour topic must carry one of "
            f"{', '.join(COLOR_ENCODINGS)} (check the rgb topic)"
        )
    if encoding not in COLOR_ENCODINGS:
        raise ImageCodecError(
            f"unsupported colour image encoding '{encoding}'; supported: {', '.join(COLOR_ENCODINGS)} "
            "(configure the camera driver for rgb8/bgr8)"
        )
    return _to_rgb(image_to_array(msg), encoding)


def _mm_to_m(depth_mm: np.ndarray) -> np.ndarray:
    return depth_mm.astype(np.float32) / np.float32(1000.0)


def _decode_compressed_depth(msg: Any) -> np.ndarray:
    fmt = str(msg.format)
    encoding, _, rest = fmt.partition(";")
    encoding, rest = encoding.strip(), rest.strip().lower()
    raw = _as_bytes(msg.data)
    if "compresseddepth" in rest or ("compresseddepth" in fmt.lower()):
        if "rvl" in rest:
            raise ImageCodecError(
                f"CompressedImage format '{fmt}': RVL compressed depth is not supported; "
                "set the publisher's compressedDepth format to png"
            )
        if raw.size <= _CONFIG_HEADER.size:
            raise ImageCodecError(f"CompressedImage '{fmt}' has {raw.size} bytes: too short for a compressedDepth header")
        header_format, quant_a, quant_b = _CONFIG_HEADER.unpack(raw[: _CONFIG_HEADER.size].tobytes())
        img = _open_compressed(raw[_CONFIG_HEADER.size :], fmt)
        values = np.asarray(img)
        if values.dtype != np.uint16:
            values = values.astype(np.uint16)
        if encoding == "32FC1":
            if header_format != _INV_DEPTH:
                raise ImageCodecError(f"CompressedImage '{fmt}': unknown compressedDepth header format {header_format}")
            v = values.astype(np.float32)
            with np.errstate(divide="ignore"):
                depth = np.float32(quant_a) / (v - np.float32(quant_b))
            depth[values == 0] = np.nan
            return depth.astype(np.float32)
        if encoding in ("16UC1", "mono16"):
            return _mm_to_m(values)
        raise ImageCodecError(
            f"CompressedImage format '{fmt}': unsupported depth encoding '{encoding}'; supported: 16UC1, 32FC1"
        )
    img = _open_compressed(raw, fmt)
    if img.mode not in ("I;16", "I;16B", "I"):
        raise ImageCodecError(
            f"CompressedImage format '{fmt}' holds an 8-bit {img.mode} image, which cannot be metric depth; "
            "record depth raw (16UC1/32FC1) or with compressedDepth png"
        )
    return _mm_to_m(np.asarray(img).astype(np.uint16))


def decode_depth_m(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> HxW float32 depth in metres (0 or NaN = invalid)."""
    if is_compressed(msg):
        return _decode_compressed_depth(msg)
    encoding = str(msg.encoding)
    if encoding in ("16UC1", "mono16"):
        return _mm_to_m(image_to_array(msg))
    if encoding == "32FC1":
        return image_to_array(msg).astype(np.float32, copy=False)
    raise ImageCodecError(
        f"unsupported depth image encoding '{encoding}'; supported: {', '.join(DEPTH_ENCODINGS)} "
        "(16UC1/mono16 in millimetres, 32FC1 in metres); check the depth topic"
    )


def camera_info_k(msg: Any) -> np.ndarray:
    """CameraInfo -> 3x3 float64 intrinsics; raises for an uncalibrated (all-zero) or broken K."""
    k = getattr(msg, "k", None)
    if k is None:
        k = getattr(msg, "K", None)
    if k is None:
        raise ImageCodecError("camera_info has no field 'k': not a sensor_msgs/CameraInfo message")
    flat = np.asarray(k, dtype=np.float64).reshape(-1)
    if flat.size != 9:
        raise ImageCodecError(f"camera_info.k must have 9 values (row-major 3x3), got {flat.size}")
    K = flat.reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise ImageCodecError("camera_info.k has NaN/inf values: the camera driver published broken intrinsics")
    if not np.any(K):
        raise ImageCodecError(
            "camera_info.k is all zeros: the camera is not calibrated; calibrate it (camera_calibration) "
            "or use the driver's factory intrinsics"
        )
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ImageCodecError(f"camera_info.k has non-positive focal lengths fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def camera_info_size(msg: Any) -> tuple[int, int]:
    """(width, height) declared by a CameraInfo; (0, 0) when the driver left them unset."""
    return int(getattr(msg, "width", 0) or 0), int(getattr(msg, "height", 0) or 0)


def intrinsics_for_depth(info_msg: Any, depth_shape: tuple[int, ...] | None = None,
                         info_name: str = "camera_info") -> np.ndarray:
    """CameraInfo -> 3x3 intrinsics of the depth image of shape `depth_shape` (h, w, ...).

    The one check shared by the ROS node and the bag source: `camera_info_k` validates K
    (ImageCodecError), then the camera_info's declared width/height must equal the depth image's
    (CameraInfoSizeError), since otherwise K belongs to another resolution, e.g. the colour
    camera_info paired with unaligned depth. A camera_info without width/height (0, left unset
    by some drivers) or `depth_shape=None` skips the size check. `info_name` names the message
    in the error (e.g. "camera_info on /camera/aligned_depth_to_color/camera_info").
    """
    K = camera_info_k(info_msg)
    width, height = camera_info_size(info_msg)
    if depth_shape is not None and width and height and (height, width) != tuple(depth_shape[:2]):
        raise CameraInfoSizeError(
            f"{info_name} is {width}x{height} but the depth image is {depth_shape[1]}x{depth_shape[0]}: pass the depth "
            "image's own camera_info, e.g. aligned_depth_to_color/camera_info (node parameter info_topic, "
            "replay --info-topic)"
        )
    return K


# ---------------------------------------------------------------------- encoders
def _image_fields(arr: np.ndarray, encoding: str) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    height, width = arr.shape[:2]
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8).copy()
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": data.size // height,
        "data": data,
    }


def encode_rgb_image(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """HxWx3 uint8 RGB -> Image fields (height, width, encoding, is_bigendian, step, data)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageCodecError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        arr = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        arr = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding in ("mono8", "8UC1"):
        arr = np.asarray(PILImage.fromarray(rgb).convert("L"))
    else:
        raise ImageCodecError(f"cannot encode colour as '{encoding}'; supported: {', '.join(COLOR_ENCODINGS)}")
    return _image_fields(arr, encoding)


def _depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)


def encode_depth_image(depth_m: np.ndarray, encoding: str = "16UC1") -> dict[str, Any]:
    """HxW depth in metres -> Image fields; 16UC1/mono16 rounds to millimetres (invalid -> 0), 32FC1 keeps metres."""
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ImageCodecError(f"depth_m must be HxW, got shape {depth_m.shape}")
    if encoding in ("16UC1", "mono16"):
        return _image_fields(_depth_to_mm(depth_m), encoding)
    if encoding == "32FC1":
        return _image_fields(depth_m.astype(np.float32), encoding)
    raise ImageCodecError(f"cannot encode depth as '{encoding}'; supported: {', '.join(DEPTH_ENCODINGS)}")


def _png_or_jpeg(img: PILImage.Image, fmt: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def encode_rgb_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> dict[str, Any]:
    """HxWx3 uint8 RGB -> CompressedImage fields as image_transport's compressed plugin writes them."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageCodecError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    if fmt not in ("jpeg", "png"):
        raise ImageCodecError(f"compressed colour format must be 'jpeg' or 'png', got '{fmt}'")
    return {"format": f"rgb8; {fmt} compressed bgr8", "data": _png_or_jpeg(PILImage.fromarray(rgb), fmt, quality)}


def encode_depth_compressed(
    depth_m: np.ndarray, encoding: str = "16UC1", depth_max_m: float = 10.0, depth_quantization: float = 100.0
) -> dict[str, Any]:
    """HxW depth in metres -> CompressedImage fields in compressed_depth_image_transport's png layout.

    16UC1: millimetres in a 16-bit PNG, depths beyond depth_max_m set to 0. 32FC1: inverse-depth
    quantisation with the plugin's parameters (defaults = its defaults: depth_max 10 m,
    depth_quantization 100).
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ImageCodecError(f"depth_m must be HxW, got shape {depth_m.shape}")
    if encoding in ("16UC1", "mono16"):
        mm = _depth_to_mm(depth_m)
        mm[mm > int(depth_max_m * 1000.0)] = 0
        header = _CONFIG_HEADER.pack(_INV_DEPTH, 0.0, 0.0)
        values = mm
    elif encoding == "32FC1":
        z0 = np.float32(depth_quantization)
        quant_a = np.float32(z0 * (z0 + np.float32(1.0)))
        quant_b = np.float32(np.float32(1.0) - quant_a / np.float32(depth_max_m))
        d = depth_m.astype(np.float32)
        valid = np.isfinite(d) & (d > 0) & (d < np.float32(depth_max_m))
        inv = np.zeros(d.shape, dtype=np.float32)
        inv[valid] = quant_a / d[valid] + quant_b
        values = np.clip(inv, 0, 65535).astype(np.uint16)  # truncation, as the C++ float -> ushort assignment
        header = _CONFIG_HEADER.pack(_INV_DEPTH, float(quant_a), float(quant_b))
    else:
        raise ImageCodecError(f"compressedDepth supports 16UC1 and 32FC1, got '{encoding}'")
    png = _png_or_jpeg(PILImage.fromarray(values), "png", 0)
    data = np.concatenate([np.frombuffer(header, dtype=np.uint8), png])
    return {"format": f"{encoding}; compressedDepth png", "data": data}


def encode_camera_info(K: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """3x3 intrinsics -> CameraInfo fields (height, width, distortion_model, d, k, r, p, binning_x/y).

    A rectified pinhole camera: no distortion, identity R, P = [K | 0]. The caller adds the
    header and `roi` (a RegionOfInterest of its own message library).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ImageCodecError(f"K must be 3x3, got shape {K.shape}")
    P = np.zeros((3, 4))
    P[:, :3] = K
    return {
        "height": int(height),
        "width": int(width),
        "distortion_model": "plumb_bob",
        "d": np.zeros(5, dtype=np.float64),
        "k": K.reshape(-1).copy(),
        "r": np.eye(3).reshape(-1),
        "p": P.reshape(-1),
        "binning_x": 0,
        "binning_y": 0,
    }
