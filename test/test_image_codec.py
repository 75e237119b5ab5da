"""image_codec on real rosbags message classes, through a CDR round trip."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.typesys import Stores, get_typestore

from video3dllm_core.image_codec import (
    CameraInfoSizeError,
    ImageCodecError,
    camera_info_k,
    camera_info_size,
    decode_depth_m,
    decode_rgb,
    encode_camera_info,
    encode_depth_compressed,
    encode_depth_image,
    encode_rgb_compressed,
    encode_rgb_image,
    intrinsics_for_depth,
)

TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
ROI = TS.types["sensor_msgs/msg/RegionOfInterest"]
HEADER = Header(stamp=Time(sec=1, nanosec=2), frame_id="camera_color_optical_frame")


def roundtrip(msg):
    """Serialise to CDR bytes and back, as a bag or a DDS link would."""
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def rgb_image(h: int = 12, w: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=2).astype(np.uint8)


def depth_image(h: int = 12, w: int = 10) -> np.ndarray:
    rng = np.random.default_rng(1)
    d = rng.uniform(0.3, 6.0, size=(h, w)).astype(np.float32)
    d[0, 0] = 0.0
    return d


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_roundtrip_through_cdr(encoding: str) -> None:
    rgb = rgb_image()
    msg = roundtrip(Image(header=HEADER, **encode_rgb_image(rgb, encoding)))
    assert msg.encoding == encoding
    out = decode_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_bgr8_bytes_are_swapped_and_mono_is_replicated() -> None:
    rgb = rgb_image()
    fields = encode_rgb_image(rgb, "bgr8")
    np.testing.assert_array_equal(fields["data"].reshape(rgb.shape), rgb[:, :, ::-1])
    grey = np.arange(120, dtype=np.uint8).reshape(12, 10)
    msg = roundtrip(Image(header=HEADER, height=12, width=10, encoding="mono8", is_bigendian=0, step=10,
                          data=grey.reshape(-1)))
    out = decode_rgb(msg)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_step_padding_is_skipped() -> None:
    rgb = rgb_image(5, 7)
    step = 7 * 3 + 5
    padded = np.full((5, step), 0xEE, dtype=np.uint8)
    padded[:, : 7 * 3] = rgb[:, :, ::-1].reshape(5, -1)  # bgr8
    msg = roundtrip(Image(header=HEADER, height=5, width=7, encoding="bgr8", is_bigendian=0, step=step,
                          data=padded.reshape(-1)))
    np.testing.assert_array_equal(decode_rgb(msg), rgb)
    depth_mm = np.array([[1000, 0, 65535], [1, 2500, 300]], dtype=np.uint16)
    step = 3 * 2 + 4
    buf = np.zeros((2, step), dtype=np.uint8)
    buf[:, :6] = depth_mm.astype("<u2").view(np.uint8).reshape(2, 6)
    msg = Image(header=HEADER, height=2, width=3, encoding="16UC1", is_bigendian=0, step=step, data=buf.reshape(-1))
    np.testing.assert_allclose(decode_depth_m(roundtrip(msg)), depth_mm / 1000.0, rtol=1e-6)


def test_16uc1_is_millimetres_and_big_endian_is_honoured() -> None:
    depth_mm = np.array([[1000, 0, 1234], [65535, 1, 500]], dtype=np.uint16)
    for endian, flag in (("<u2", 0), (">u2", 1)):
        data = depth_mm.astype(endian).view(np.uint8).reshape(-1)
        msg = roundtrip(Image(header=HEADER, height=2, width=3, encoding="16UC1", is_bigendian=flag, step=6, data=data))
        d = decode_depth_m(msg)
        assert d.dtype == np.float32
        np.testing.assert_allclose(d, depth_mm.astype(np.float64) / 1000.0, rtol=1e-6)
        assert d[0, 1] == 0.0  # invalid stays 0


def test_32fc1_is_metres_with_nan_invalid_and_big_endian() -> None:
    depth = depth_image()
    depth[1, 1] = np.nan
    msg = roundtrip(Image(header=HEADER, **encode_depth_image(depth, "32FC1")))
    out = decode_depth_m(msg)
    np.testing.assert_array_equal(out, depth)
    assert np.isnan(out[1, 1])
    data = depth.astype(">f4").view(np.uint8).reshape(-1)
    msg = Image(header=HEADER, height=12, width=10, encoding="32FC1", is_bigendian=1, step=40, data=data)
    np.testing.assert_array_equal(decode_depth_m(roundtrip(msg)), depth)


def test_depth_16uc1_encoder_rounds_to_millimetres() -> None:
    depth = depth_image()
    msg = roundtrip(Image(header=HEADER, **encode_depth_image(depth, "16UC1")))
    out = decode_depth_m(msg)
    assert np.abs(out - depth).max() <= 0.0005 + 1e-6
    assert out[0, 0] == 0.0


def test_compressed_colour_png_exact_and_jpeg_close() -> None:
    rgb = smooth_rgb()
    png = roundtrip(CompressedImage(header=HEADER, **encode_rgb_compressed(rgb, "png")))
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(decode_rgb(png), rgb)
    jpg = roundtrip(CompressedImage(header=HEADER, **encode_rgb_compressed(rgb, "jpeg", quality=95)))
    assert jpg.format == "rgb8; jpeg compressed bgr8"
    out = decode_rgb(jpg)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 3.0
    # a bare "jpeg" format string (other publishers) and a mono JPEG
    buf = io.BytesIO()
    PILImage.fromarray(rgb[:, :, 0]).save(buf, format="JPEG", quality=95)
    mono = CompressedImage(header=HEADER, format="jpeg", data=np.frombuffer(buf.getvalue(), np.uint8))
    out = decode_rgb(roundtrip(mono))
    assert out.shape == rgb.shape and np.abs(out[:, :, 1].astype(int) - rgb[:, :, 0]).mean() < 3.0


def test_compressed_depth_png_16uc1_exact() -> None:
    depth = depth_image()
    msg = roundtrip(CompressedImage(header=HEADER, **encode_depth_compressed(depth, "16UC1")))
    assert msg.format == "16UC1; compressedDepth png"
    np.testing.assert_allclose(decode_depth_m(msg), np.round(depth * 1000) / 1000, atol=1e-6)


def test_compressed_depth_png_32fc1_inverse_depth_quantisation() -> None:
    depth = depth_image()
    depth[2, 2] = np.nan
    depth[3, 3] = 12.0  # beyond depth_max: invalid after compression
    msg = roundtrip(CompressedImage(header=HEADER, **encode_depth_compressed(depth, "32FC1")))
    assert msg.format == "32FC1; compressedDepth png"
    out = decode_depth_m(msg)
    valid = np.isfinite(depth) & (depth > 0) & (depth < 10)
    assert np.isnan(out[~valid]).all()
    # Independent bound: with A = 100 * 101 and truncation, |d' - d| <= d^2 / (A - d) for these depths
    A = 100.0 * 101.0
    err = np.abs(out[valid] - depth[valid])
    assert np.all(err <= depth[valid] ** 2 / (A - depth[valid]) + 1e-5)
    # header parameters as compressed_depth_image_transport writes them
    fmt, qa, qb = struct.unpack("<iff", bytes(msg.data[:12]))
    assert fmt == 0 and qa == pytest.approx(10100.0) and qb == pytest.approx(1 - 10100.0 / 10.0)


def test_plain_16bit_png_depth_is_millimetres() -> None:
    mm = (np.arange(12, dtype=np.uint16) * 700).reshape(3, 4)
    buf = io.BytesIO()
    PILImage.fromarray(mm).save(buf, format="PNG")
    msg = CompressedImage(header=HEADER, format="16UC1; png compressed 16UC1", data=np.frombuffer(buf.getvalue(), np.uint8))
    np.testing.assert_allclose(decode_depth_m(roundtrip(msg)), mm / 1000.0, rtol=1e-6)


def test_errors_name_the_encoding_and_the_supported_list() -> None:
    msg = Image(header=HEADER, height=2, width=2, encoding="yuv422", is_bigendian=0, step=4, data=np.zeros(8, np.uint8))
    with pytest.raises(ImageCodecError, match=r"unsupported colour image encoding 'yuv422'; supported: rgb8, bgr8"):
        decode_rgb(msg)
    with pytest.raises(ImageCodecError, match=r"unsupported depth image encoding 'yuv422'; supported: 16UC1, mono16, 32FC1"):
        decode_depth_m(msg)
    depth_msg = Image(header=HEADER, **encode_depth_image(depth_image(), "16UC1"))
    with pytest.raises(ImageCodecError, match="'16UC1' is a depth encoding.*rgb topic"):
        decode_rgb(depth_msg)
    colour_msg = Image(header=HEADER, **encode_rgb_image(rgb_image(), "rgb8"))
    with pytest.raises(ImageCodecError, match="unsupported depth image encoding 'rgb8'"):
        decode_depth_m(colour_msg)
    rvl = CompressedImage(header=HEADER, format="16UC1; compressedDepth rvl", data=np.zeros(40, np.uint8))
    with pytest.raises(ImageCodecError, match="RVL compressed depth is not supported"):
        decode_depth_m(rvl)
    jpeg = CompressedImage(header=HEADER, **encode_rgb_compressed(smooth_rgb(), "jpeg"))
    with pytest.raises(ImageCodecError, match="8-bit RGB image, which cannot be metric depth"):
        decode_depth_m(jpeg)
    garbage = CompressedImage(header=HEADER, format="jpeg", data=np.arange(50, dtype=np.uint8))
    with pytest.raises(ImageCodecError, match="cannot decode CompressedImage with format 'jpeg'"):
        decode_rgb(garbage)


def test_truncated_and_bad_step_are_reported() -> None:
    fields = encode_rgb_image(rgb_image(), "rgb8")
    fields["data"] = fields["data"][:-10]
    with pytest.raises(ImageCodecError, match="image data has 350 bytes but step \\* height = 30 \\* 12 = 360"):
        decode_rgb(Image(header=HEADER, **fields))
    fields = encode_rgb_image(rgb_image(), "rgb8")
    fields["step"] = 20
    with pytest.raises(ImageCodecError, match="step=20 is smaller than width"):
        decode_rgb(Image(header=HEADER, **fields))


def test_camera_info_k_roundtrip_and_uncalibrated_error() -> None:
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    info = roundtrip(CameraInfo(header=HEADER, roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                                **encode_camera_info(K, 640, 480)))
    np.testing.assert_array_equal(camera_info_k(info), K)
    assert camera_info_size(info) == (640, 480)
    np.testing.assert_array_equal(np.asarray(info.p).reshape(3, 4)[:, :3], K)
    zero = CameraInfo(header=HEADER, roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                      **encode_camera_info(np.zeros((3, 3)), 640, 480))
    with pytest.raises(ImageCodecError, match="^camera_info.k is all zeros: the camera is not calibrated"):
        camera_info_k(zero)


def test_intrinsics_for_depth_checks_the_declared_size() -> None:
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])

    def info(width: int, height: int, k: np.ndarray = K) -> object:
        return roundtrip(CameraInfo(header=HEADER, roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                                    **encode_camera_info(k, width, height)))

    np.testing.assert_array_equal(intrinsics_for_depth(info(640, 480), (480, 640)), K)
    np.testing.assert_array_equal(intrinsics_for_depth(info(640, 480), (480, 640, 1)), K)
    np.testing.assert_array_equal(intrinsics_for_depth(info(0, 0), (240, 320)), K)  # size unset: not checked
    np.testing.assert_array_equal(intrinsics_for_depth(info(640, 480)), K)  # no depth shape: not checked
    with pytest.raises(CameraInfoSizeError, match=r"^camera_info on /cam/info is 640x480 but the depth image is 320x240: "
                                                  r"pass the depth image's own camera_info"):
        intrinsics_for_depth(info(640, 480), (240, 320), "camera_info on /cam/info")
    with pytest.raises(ImageCodecError, match="not calibrated") as err:  # K is checked first
        intrinsics_for_depth(info(640, 480, np.zeros((3, 3))), (240, 320))
    assert not isinstance(err.value, CameraInfoSizeError)
