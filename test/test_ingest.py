"""FrameIngestor against the upstream implementation's recorded outputs, plus frame validation.

The parity fixture is read from $VIDEO3DLLM_PARITY_FIXTURE (default test/fixtures/reference_parity);
every size is taken from the data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from video3dllm_core.frame import FrameError, PosedFrame
from video3dllm_core.ingest import (
    FrameIngestor,
    IngestConfig,
    IngestedFrame,
    crop_geometry,
    patch_average,
)

FIXTURE = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", Path(__file__).parent / "fixtures" / "reference_parity"))


@pytest.fixture(scope="module")
def parity() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(FIXTURE / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(FIXTURE / "expected.npz") as f:
        keys = ["crops_uint8", "nearest_src_rows", "nearest_src_cols", "world_coords", "patch_avg_world_coords"]
        expected = {k: f[k] for k in keys}
    return inputs, expected


def fixture_frame(inputs: dict[str, np.ndarray], i: int) -> PosedFrame:
    """Frame i as a loader would build it: depth mm -> float32 metres, world = A @ pose (float64)."""
    return PosedFrame(
        stamp_ns=i * 1_000_000_000,
        rgb=inputs["rgb"][i],
        depth_m=inputs["depth"][i].astype(np.float32) / np.float32(1000.0),
        K_depth=inputs["depth_intrinsic"][:3, :3],
        T_world_cam=inputs["axis_align_matrix"] @ inputs["poses"][i],
        name=f"{i:05d}",
    )


@pytest.fixture(scope="module")
def ingested(parity: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> list[IngestedFrame]:
    inputs, _ = parity
    ingestor = FrameIngestor()
    return [ingestor.ingest(fixture_frame(inputs, i)) for i in range(inputs["rgb"].shape[0])]


# ---------------------------------------------------------------- parity with upstream


def test_crop_and_sampling_indices_match_upstream_exactly(parity, ingested) -> None:  # type: ignore[no-untyped-def]
    _, expected = parity
    assert len(ingested) == expected["crops_uint8"].shape[0]
    for i, f in enumerate(ingested):
        np.testing.assert_array_equal(f.crop_rgb, expected["crops_uint8"][i])
        np.testing.assert_array_equal(f.geometry.rows, expected["nearest_src_rows"])
        np.testing.assert_array_equal(f.geometry.cols, expected["nearest_src_cols"])


def test_world_coords_match_upstream(parity, ingested) -> None:  # type: ignore[no-untyped-def]
    _, expected = parity
    for i, f in enumerate(ingested):
        wc = f.world_coords
        assert wc.shape == expected["world_coords"][i].shape and wc.dtype == np.float32
        assert np.abs(wc - expected["world_coords"][i]).max() <= 1e-5
        # the float32 FMA chain reproduces torch's matmul bit for bit (allow rare double-rounding ties)
        assert np.mean(wc == expected["world_coords"][i]) >= 0.9999


def test_zero_depth_block_unprojects_to_camera_centre(parity, ingested) -> None:  # type: ignore[no-untyped-def]
    """Upstream does not mask zero depth: those pixels sit at the camera centre."""
    inputs, _ = parity
    for i, f in enumerate(ingested):
        zero = f.crop_depth_m == 0
        if zero.any():
            centre = (inputs["axis_align_matrix"] @ inputs["poses"][i])[:3, 3].astype(np.float32)
            np.testing.assert_allclose(f.world_coords[zero], np.broadcast_to(centre, (int(zero.sum()), 3)), atol=1e-6)
            return
    pytest.fail("the fixture is documented to hold a block of zero depth")


def test_patch_world_coords_match_upstream(parity, ingested) -> None:  # type: ignore[no-untyped-def]
    _, expected = parity
    cfg = IngestConfig()
    for i, f in enumerate(ingested):
        exp = expected["patch_avg_world_coords"][i]
        assert f.patch_world_coords.shape == exp.shape
        assert np.abs(f.patch_world_coords - exp).max() <= 1e-5
        # the fused path equals averaging the full map (and both are the sequential float32 mean)
        np.testing.assert_array_equal(patch_average(f.world_coords, cfg), f.patch_world_coords)
        assert np.mean(f.patch_world_coords == exp) >= 0.999


# ---------------------------------------------------------------- other sizes, invalid depth


def _synthetic_frame(rgb_hw: tuple[int, int], depth_hw: tuple[int, int], stamp: int = 0) -> PosedFrame:
    rng = np.random.default_rng(sum(rgb_hw) + sum(depth_hw))
    h, w = depth_hw
    K = np.array([[0.9 * w, 0, w / 2 - 0.3], [0, 0.9 * w, h / 2 + 0.2], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 3] = [1.0, -2.0, 0.5]
    return PosedFrame(
        stamp_ns=stamp,
        rgb=rng.integers(0, 256, size=(*rgb_hw, 3), dtype=np.uint8),
        depth_m=rng.uniform(0.5, 4.0, size=depth_hw).astype(np.float32),
        K_depth=K,
        T_world_cam=T,
    )


def test_colour_larger_than_depth_scannet_layout() -> None:
    """ScanNet: 1296x968 colour, 640x480 depth. Upstream derives the resize from the depth size."""
    frame = _synthetic_frame((968, 1296), (480, 640))
    f = FrameIngestor().ingest(frame)
    assert f.geometry.resized_wh == (512, 384) and (f.geometry.left, f.geometry.top) == (64, 0)
    ref = np.asarray(Image.fromarray(frame.rgb).resize((512, 384), Image.Resampling.BICUBIC))[:, 64:448]
    np.testing.assert_array_equal(f.crop_rgb, ref)
    np.testing.assert_array_equal(f.geometry.rows, [math.floor(i * 1.25) for i in range(384)])
    np.testing.assert_array_equal(f.geometry.cols, [math.floor((j + 64) * 1.25) for j in range(384)])


@pytest.mark.parametrize("depth_hw", [(240, 320), (480, 360), (400, 400)])
def test_crop_geometry_other_sizes(depth_hw: tuple[int, int]) -> None:
    """Short side -> 384 (landscape: upstream; portrait: the same rule on the other axis), centre crop."""
    h, w = depth_hw
    frame = _synthetic_frame(depth_hw, depth_hw)
    f = FrameIngestor().ingest(frame)
    g = f.geometry
    new_w, new_h = (int(w * (384 / h)), 384) if h <= w else (384, int(h * (384 / w)))
    assert g.resized_wh == (new_w, new_h)
    assert (g.left, g.top) == ((new_w - 384) // 2, (new_h - 384) // 2)
    for got, n_src, n_dst, off in [(g.rows, h, new_h, g.top), (g.cols, w, new_w, g.left)]:
        expected = [min(math.floor((k + off) * (1.0 / (n_dst / n_src))), n_src - 1) for k in range(384)]
        np.testing.assert_array_equal(got, expected)
    assert f.crop_rgb.shape == (384, 384, 3)
    ref = np.asarray(Image.fromarray(frame.rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(f.crop_rgb, ref[g.top : g.top + 384, g.left : g.left + 384])
    # world coordinates: independent float64 unprojection of the sampled depth pixels
    v, u = g.rows[100], g.cols[200]
    z = float(frame.depth_m[v, u])
    K = frame.K_depth
    cam = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z, 1.0])
    np.testing.assert_allclose(f.world_coords[100, 200], (frame.T_world_cam @ cam)[:3], atol=1e-5)


def test_nan_depth_behaves_like_zero_depth_and_is_not_covered() -> None:
    frame = _synthetic_frame((480, 640), (480, 640))
    depth = frame.depth_m.copy()
    depth[100:200, 200:300] = np.nan
    depth[300:310, 0:640] = 0.0
    nan_frame = PosedFrame(0, frame.rgb, depth, frame.K_depth, frame.T_world_cam)
    zero_depth = np.nan_to_num(depth, nan=0.0)
    zero_frame = PosedFrame(0, frame.rgb, zero_depth, frame.K_depth, frame.T_world_cam)
    ing = FrameIngestor()
    a, b = ing.ingest(nan_frame), ing.ingest(zero_frame)
    assert np.isfinite(a.world_coords).all() and np.isfinite(a.patch_world_coords).all()
    np.testing.assert_array_equal(a.world_coords, b.world_coords)
    np.testing.assert_array_equal(a.patch_world_coords, b.patch_world_coords)
    np.testing.assert_array_equal(a.voxel_keys, b.voxel_keys)
    full = ing.ingest(frame)
    assert a.voxel_keys.size < full.voxel_keys.size


def test_coverage_voxel_keys_against_point_loop() -> None:
    """Keys = floor(world / voxel) of every stride-th valid pixel, computed here point by point."""
    frame = _synthetic_frame((120, 160), (120, 160))
    depth = frame.depth_m.copy()
    depth[::7, ::5] = 9.0  # beyond coverage_max_depth_m
    depth[1::9, ::3] = 0.05  # below coverage_min_depth_m
    frame = PosedFrame(0, frame.rgb, depth, frame.K_depth, frame.T_world_cam)
    cfg = IngestConfig(voxel_size_m=0.1, coverage_stride_px=3, coverage_min_depth_m=0.1, coverage_max_depth_m=5.0)
    f = FrameIngestor(cfg).ingest(frame)
    K, T = frame.K_depth, frame.T_world_cam
    expected = set()
    for v in range(0, 120, 3):
        for u in range(0, 160, 3):
            z = float(depth[v, u])
            if not 0.1 <= z <= 5.0:
                continue
            cam = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
            p = T[:3, :3] @ cam + T[:3, 3]
            expected.add(tuple(math.floor(c / 0.1) for c in p))
    from video3dllm_core.geometry import unpack_voxel_keys

    got = {tuple(int(c) for c in row) for row in unpack_voxel_keys(f.voxel_keys)}
    assert got == expected
    assert np.all(np.diff(f.voxel_keys) > 0)


# ---------------------------------------------------------------- what an IngestedFrame keeps


def test_ingested_frame_is_compact_read_only_and_accounts_its_bytes(ingested) -> None:  # type: ignore[no-untyped-def]
    f = ingested[0]
    assert f.stamp_ns == 0 and f.name == "00000"
    for arr in (f.crop_rgb, f.crop_depth_m, f.patch_world_coords, f.voxel_keys, f.T_world_cam):
        assert not arr.flags.writeable
    expected = 384 * 384 * 3 + 384 * 384 * 4 + 14 * 14 * 3 * 4 + 8 * f.voxel_keys.size + 16 * 8 + 9 * 8
    assert f.nbytes == expected
    assert f.nbytes < 1.1e6  # no raw image and no full-resolution map is kept
    assert not any(getattr(f, name, None) is not None for name in ("rgb", "depth_m"))


def test_ingest_config_validation() -> None:
    with pytest.raises(ValueError, match="voxel_size_m"):
        IngestConfig(voxel_size_m=0)
    with pytest.raises(ValueError, match="coverage_stride_px"):
        IngestConfig(coverage_stride_px=0)
    with pytest.raises(ValueError, match="coverage_min_depth_m"):
        IngestConfig(coverage_min_depth_m=3.0, coverage_max_depth_m=2.0)
    with pytest.raises(ValueError, match="patch_grid"):
        IngestConfig(patch_grid=13)
    assert crop_geometry((480, 640), 384) is crop_geometry((480, 640), 384)  # shared between frames


# ---------------------------------------------------------------- frame validation


def _good() -> dict[str, object]:
    return dict(
        stamp_ns=5,
        rgb=np.zeros((48, 64, 3), np.uint8),
        depth_m=np.ones((48, 64), np.float32),
        K_depth=np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]),
        T_world_cam=np.eye(4),
    )


def _bad(**changes: object) -> dict[str, object]:
    kw = _good()
    kw.update(changes)
    return kw


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(K_depth=np.array([[50.0, 0, 320], [0, 50.0, 240], [0, 0, 1]])), "K_depth"),  # intrinsics of another size
        (dict(depth_m=np.ones((24, 32), np.float32)), "K_depth"),  # depth downscaled, intrinsics not
        (dict(T_world_cam=np.full((4, 4), np.nan)), "T_world_cam"),
        (dict(T_world_cam=np.diag([1.0, 2.0, 1.0, 1.0])), "T_world_cam"),
        (dict(T_world_cam=np.eye(3)), "T_world_cam"),
        (dict(depth_m=np.zeros((48, 64), np.float32)), "depth_m"),
        (dict(depth_m=np.full((48, 64), np.nan, np.float32)), "depth_m"),
        (dict(depth_m=np.zeros((0, 0), np.float32)), "depth_m"),
        (dict(depth_m=np.ones((48, 64), np.uint16)), "depth_m"),
        (dict(depth_m=np.ones((48, 64, 1), np.float32)), "depth_m"),
        (dict(rgb=np.zeros((48, 64, 3), np.float32)), "rgb"),
        (dict(rgb=np.zeros((48, 64), np.uint8)), "rgb"),
        (dict(rgb=np.zeros((36, 64, 3), np.uint8)), "rgb"),  # 16:9 colour with 4:3 depth: not registered
        (dict(stamp_ns=1.5), "stamp_ns"),
    ],
)
def test_bad_frames_raise_frame_error_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(FrameError, match=field):
        PosedFrame(**_bad(**changes))  # type: ignore[arg-type]


def test_good_frame_and_scannet_aspect_are_accepted() -> None:
    PosedFrame(**_good())  # type: ignore[arg-type]
    PosedFrame(**_bad(rgb=np.zeros((968 // 4, 1296 // 4, 3), np.uint8)))  # type: ignore[arg-type]


def test_ingest_rejects_non_frames() -> None:
    with pytest.raises(TypeError, match="PosedFrame"):
        FrameIngestor().ingest(np.zeros((4, 4)))  # type: ignore[arg-type]
