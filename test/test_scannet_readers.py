"""ScanNet readers: .sens round trips and byte layout, posed-images export, scene boxes."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from video3dllm_core.sources.posed_images import PosedImagesSource
from video3dllm_training.scannet import (
    ScanNetExportError,
    export_many,
    export_posed_images,
    load_scannet_scene,
    read_sens,
    read_sens_header,
    write_sens,
)

CW, CH, DW, DH = 32, 24, 16, 12
K_COLOR = np.array([[40.0, 0, 16], [0, 41.0, 12], [0, 0, 1]])
K_DEPTH = np.array([[20.0, 0, 8], [0, 21.0, 6], [0, 0, 1]])


def rigid(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T[:3, 3] = t
    return T


def make_frames(n: int, seed: int = 0) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """n frames: JPEG bytes of a random image, random uint16 depth, a rigid pose."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        rgb = rng.integers(0, 256, (CH, CW, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        depth = rng.integers(0, 8000, (DH, DW)).astype(np.uint16)
        frames.append((buf.getvalue(), depth, rigid(0.3 * i, (0.1 * i, -0.2, 1.5))))
    return frames


def write_test_sens(path: Path, frames: list[tuple[bytes, np.ndarray, np.ndarray]], **kw: object) -> None:
    write_sens(path, frames, K_COLOR, K_DEPTH, (CW, CH), (DW, DH), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- .sens


def test_sens_round_trip(tmp_path: Path) -> None:
    frames = make_frames(3)
    lost = frames[1][2].copy()
    lost[:] = -np.inf  # ScanNet marks lost tracking with -inf poses
    frames[1] = (frames[1][0], frames[1][1], lost)
    path = tmp_path / "scene0000_00.sens"
    write_test_sens(path, frames, timestamps=[(10, 11), (20, 21), (30, 31)])

    header = read_sens_header(path)
    assert (header.version, header.num_frames, header.depth_shift) == (4, 3, 1000.0)
    assert (header.color_width, header.color_height, header.depth_width, header.depth_height) == (CW, CH, DW, DH)
    np.testing.assert_array_equal(header.K_color, K_COLOR)
    np.testing.assert_array_equal(header.K_depth, K_DEPTH)

    got = list(read_sens(path))
    assert [f.index for f in got] == [0, 1, 2]
    for (jpeg, depth, T), f in zip(frames, got):
        assert f.color_jpeg == jpeg
        np.testing.assert_array_equal(f.depth_mm, depth)
        assert f.depth_mm.dtype == np.uint16
        np.testing.assert_array_equal(f.T_world_cam, T.astype(np.float32).astype(np.float64))
        with Image.open(io.BytesIO(jpeg)) as img:
            np.testing.assert_array_equal(f.rgb(), np.asarray(img.convert("RGB")))
    assert [(f.timestamp_color, f.timestamp_depth) for f in got] == [(10, 11), (20, 21), (30, 31)]
    assert np.all(np.isneginf(got[1].T_world_cam))


def test_sens_header_layout_matches_scannet_sensordata(tmp_path: Path) -> None:
    """A file assembled field by field from ScanNet's documented layout, without our writer."""
    name = b"StructureSensor"
    K = np.arange(16, dtype="<f4").reshape(4, 4)
    depth = np.array([[1, 2], [3, 65535]], dtype="<u2")
    depth_z = zlib.compress(depth.tobytes())
    color = b"\xff\xd8not-really-a-jpeg\xff\xd9"
    pose = np.eye(4, dtype="<f4")
    pose[0, 3] = 2.5
    blob = struct.pack("<I", 4) + struct.pack("<Q", len(name)) + name
    blob += K.tobytes() + np.eye(4, dtype="<f4").tobytes() + (K * 2).tobytes() + np.eye(4, dtype="<f4").tobytes()
    blob += struct.pack("<ii", 2, 1) + struct.pack("<IIII", 8, 6, 2, 2) + struct.pack("<f", 1000.0)
    blob += struct.pack("<Q", 1)
    blob += pose.tobytes() + struct.pack("<QQQQ", 7, 8, len(color), len(depth_z)) + color + depth_z
    path = tmp_path / "handmade.sens"
    path.write_bytes(blob)

    header = read_sens_header(path)
    assert header.sensor_name == "StructureSensor"
    np.testing.assert_array_equal(header.intrinsic_color, K)
    np.testing.assert_array_equal(header.intrinsic_depth, K * 2)
    assert (header.color_width, header.color_height, header.depth_width, header.depth_height) == (8, 6, 2, 2)
    (frame,) = list(read_sens(path))
    assert frame.color_jpeg == color
    np.testing.assert_array_equal(frame.depth_mm, depth)
    assert frame.T_world_cam[0, 3] == 2.5
    assert (frame.timestamp_color, frame.timestamp_depth) == (7, 8)
    # and our writer produces the same bytes for the same content
    ours = tmp_path / "ours.sens"
    write_sens(ours, [(color, depth, pose)], K, K * 2, (8, 6), (2, 2), timestamps=[(7, 8)])
    assert ours.read_bytes() == blob


def test_sens_stride_skips_frames(tmp_path: Path) -> None:
    frames = make_frames(5)
    path = tmp_path / "s.sens"
    write_test_sens(path, frames)
    got = list(read_sens(path, frame_stride=2))
    assert [f.index for f in got] == [0, 2, 4]
    np.testing.assert_array_equal(got[2].depth_mm, frames[4][1])
    with pytest.raises(ValueError, match="frame_stride"):
        list(read_sens(path, frame_stride=0))


def test_sens_depth_shift_is_converted_to_millimetres(tmp_path: Path) -> None:
    frames = make_frames(1)
    raw = np.full((DH, DW), 5000, dtype=np.uint16)  # 1 m at 5000 units per metre
    raw[0, 0] = 0
    path = tmp_path / "s.sens"
    write_test_sens(path, [(frames[0][0], raw, frames[0][2])], depth_shift=5000.0)
    (f,) = list(read_sens(path))
    assert f.depth_mm[0, 0] == 0 and f.depth_mm[1, 1] == 1000 and f.depth_mm.dtype == np.uint16


COLOR_CT_OFFSET = 4 + 8 + len(b"StructureSensor") + 4 * 64


def _patch(path: Path, offset: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset : offset + len(data)] = data
    path.write_bytes(bytes(blob))


def test_sens_errors_name_file_and_problem(tmp_path: Path) -> None:
    frames = make_frames(2)
    good = tmp_path / "scene0000_00.sens"
    write_test_sens(good, frames)
    blob = good.read_bytes()

    bad = tmp_path / "scene0000_00.sens"
    _patch(bad, COLOR_CT_OFFSET, struct.pack("<i", 3))
    with pytest.raises(ValueError, match=r"scene0000_00\.sens: unsupported color compression type 3 .*expected 2 = jpeg"):
        read_sens_header(bad)

    bad.write_bytes(blob)
    _patch(bad, COLOR_CT_OFFSET + 4, struct.pack("<i", 0))
    with pytest.raises(ValueError, match=r"unsupported depth compression type 0 \(raw_ushort; expected 1 = zlib_ushort\)"):
        list(read_sens(bad))

    bad.write_bytes(blob)
    _patch(bad, 0, struct.pack("<I", 3))
    with pytest.raises(ValueError, match=r"scene0000_00\.sens: unsupported \.sens version 3 \(expected 4\)"):
        read_sens_header(bad)

    bad.write_bytes(blob[:-10])
    with pytest.raises(ValueError, match=r"scene0000_00\.sens: file ends inside the depth data of frame 1 of 2"):
        list(read_sens(bad))
    # truncation is also found when the truncated frame is skipped by the stride
    with pytest.raises(ValueError, match="frame 1 of 2.*truncated"):
        list(read_sens(bad, frame_stride=2))

    bad.write_bytes(blob[:20])
    with pytest.raises(ValueError, match="truncated"):
        read_sens_header(bad)

    # corrupt the zlib stream of the last frame's depth (the last bytes of the file)
    bad.write_bytes(blob[:-12] + b"\x00" * 12)
    with pytest.raises(ValueError, match=r"frame 1 of 2: depth data is not valid zlib"):
        list(read_sens(bad))


def test_sens_wrong_depth_payload_size(tmp_path: Path) -> None:
    frames = make_frames(1)
    path = tmp_path / "s.sens"
    write_sens(path, frames, K_COLOR, K_DEPTH, (CW, CH), (DW, DH))
    # claim a larger depth image in the header than the frames hold
    _patch(path, COLOR_CT_OFFSET + 8 + 8, struct.pack("<I", DW + 1))
    with pytest.raises(ValueError, match=rf"depth holds {2 * DW * DH} bytes, expected {2 * (DW + 1) * DH}"):
        list(read_sens(path))


# ---------------------------------------------------------------- export


def axis_alignment() -> np.ndarray:
    return rigid(math.pi / 2, (1.0, -2.0, 0.25))


def write_meta(path: Path, A: np.ndarray | None) -> None:
    lines = ["colorHeight = 968", "colorWidth = 1296"]
    if A is not None:
        lines.insert(0, "axisAlignment = " + " ".join(f"{v:.17g}" for v in A.ravel()))
    path.write_text("\n".join(lines) + "\n")


def test_export_posed_images_reads_back_with_core_reader(tmp_path: Path) -> None:
    scan = tmp_path / "scans" / "scene0001_00"
    scan.mkdir(parents=True)
    frames = make_frames(5, seed=1)
    write_test_sens(scan / "scene0001_00.sens", frames)
    A = axis_alignment()
    write_meta(scan / "scene0001_00.txt", A)

    out = tmp_path / "posed_images" / "scene0001_00"
    result = export_posed_images(scan / "scene0001_00.sens", out, frame_stride=2)
    assert (result.scene_id, result.num_frames) == ("scene0001_00", 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["axis_align_matrix.txt", "depth_intrinsic.txt", "intrinsic.txt"]
        + [f"{i:05d}.{ext}" for i in (0, 2, 4) for ext in ("jpg", "png", "txt")]
    )
    assert (out / "00002.jpg").read_bytes() == frames[2][0]  # JPEG copied unchanged
    with Image.open(out / "00004.png") as img:
        np.testing.assert_array_equal(np.asarray(img), frames[4][1])

    src = PosedImagesSource(out)
    got = list(src)
    assert [f.name for f in got] == ["00000", "00002", "00004"]
    for f, i in zip(got, (0, 2, 4)):
        raw_pose = frames[i][2].astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(f.T_world_cam, A @ raw_pose, atol=1e-12)
        np.testing.assert_allclose(f.depth_m, frames[i][1].astype(np.float32) / 1000.0)
        assert f.stamp_ns == i * 1_000_000_000 // 30
    np.testing.assert_array_equal(src.K_depth, K_DEPTH)
    np.testing.assert_array_equal(src.K_color, K_COLOR)

    with pytest.raises(FileExistsError, match="already exists"):
        export_posed_images(scan / "scene0001_00.sens", out)
    again = export_posed_images(scan / "scene0001_00.sens", out, frame_stride=1, jpeg_quality=75, overwrite=True)
    assert again.num_frames == 5
    assert (out / "00001.jpg").read_bytes() != frames[1][0]  # re-encoded like upstream


def test_export_many_parallel_reports_failures_and_resumes(tmp_path: Path) -> None:
    sens = []
    for k in range(3):
        scan = tmp_path / "scans" / f"scene000{k}_00"
        scan.mkdir(parents=True)
        p = scan / f"scene000{k}_00.sens"
        write_test_sens(p, make_frames(3, seed=k))
        sens.append(p)
    _patch(sens[1], COLOR_CT_OFFSET, struct.pack("<i", 1))  # png colour: unsupported
    out = tmp_path / "posed"
    with pytest.raises(ScanNetExportError, match=r"1 of 3 scenes failed: .*scene0001_00\.sens: unsupported color compression type 1"):
        export_many(sens, out, frame_stride=1, workers=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["scene0000_00", "scene0002_00"]  # no partial scene left
    assert len(list((out / "scene0002_00").glob("*.jpg"))) == 3

    write_test_sens(sens[1], make_frames(3, seed=1))  # fix the broken file and resume
    results = export_many(sens, out, frame_stride=1, workers=2, progress=False)
    assert [(r.scene_id, r.skipped, r.num_frames) for r in results] == [
        ("scene0000_00", True, 0),
        ("scene0001_00", False, 3),
        ("scene0002_00", True, 0),
    ]
    with pytest.raises(ValueError, match="share a scene id"):
        export_many([sens[0], sens[0]], out, progress=False)


# ---------------------------------------------------------------- scene annotations


# Vertices: three clusters of points. Segment ids per vertex below; objects via aggregation.
VERTS = np.array(
    [
        [0.0, 0.0, 0.0], [1.0, 0.5, 0.2], [0.5, 1.0, 0.8],  # seg 10
        [2.0, 2.0, 0.0], [2.5, 3.0, 1.0],  # seg 20
        [4.0, 0.0, 0.0], [4.2, 0.3, 0.4],  # seg 30
        [-1.0, -1.0, 2.0], [-1.5, -0.5, 2.5],  # seg 40 (no object)
    ],
    dtype=np.float32,
)  # fmt: skip
SEGS = [10, 10, 10, 20, 20, 30, 30, 40, 40]
AGG = {
    "sceneId": "scannet.scene0002_00",
    "segGroups": [
        {"id": 0, "objectId": 0, "label": "chair", "segments": [10, 20]},
        {"id": 1, "objectId": 1, "label": "table", "segments": [20]},  # takes seg 20 from the chair
        {"id": 2, "objectId": 2, "label": "lamp", "segments": [30]},
        {"id": 3, "objectId": 3, "label": "ghost", "segments": [30]},  # takes all of the lamp's points
    ],
}


def write_ply(path: Path, verts: np.ndarray) -> None:
    """A ScanNet-style binary PLY: float xyz + uchar rgba vertices, triangle faces."""
    v = np.zeros(len(verts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
    v["x"], v["y"], v["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    v["red"] = np.arange(len(verts)) * 10
    v["green"], v["blue"], v["alpha"] = 200, 7, 255
    faces = np.zeros(1, dtype=[("vertex_indices", "i4", (3,))])
    faces["vertex_indices"][0] = [0, 1, 2]
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face")], text=False, byte_order="<").write(str(path))


def write_scene(root: Path, sid: str = "scene0002_00", annotations: bool = True, A: np.ndarray | None = None) -> Path:
    d = root / sid
    d.mkdir(parents=True)
    write_meta(d / f"{sid}.txt", A)
    write_ply(d / f"{sid}_vh_clean_2.ply", VERTS)
    if annotations:
        (d / f"{sid}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"sceneId": sid, "segIndices": SEGS}))
        (d / f"{sid}.aggregation.json").write_text(json.dumps(AGG))
    return d


def test_scene_points_and_boxes(tmp_path: Path) -> None:
    A = axis_alignment()  # x' = -y + 1, y' = x - 2, z' = z + 0.25
    scene = load_scannet_scene(write_scene(tmp_path, A=A))
    assert scene.scene_id == "scene0002_00" and scene.axis_aligned
    # independent: the rotation written out by hand
    expected = np.stack([-VERTS[:, 1] + 1.0, VERTS[:, 0] - 2.0, VERTS[:, 2] + 0.25], axis=1).astype(np.float32)
    np.testing.assert_allclose(scene.points_xyz, expected, atol=1e-6)
    assert scene.points_xyz.dtype == np.float32
    assert scene.colors_rgb[3].tolist() == [30, 200, 7]

    # chair keeps seg 10 only (table overwrote seg 20); lamp lost everything to "ghost" and is dropped
    assert [(o.object_id, o.label, o.num_points) for o in scene.objects] == [(0, "chair", 3), (1, "table", 2), (3, "ghost", 2)]
    assert scene.instance_ids.tolist() == [0, 0, 0, 1, 1, 3, 3, -1, -1]
    for obj, rows in ((scene.object_by_id(0), [0, 1, 2]), (scene.object_by_id(1), [3, 4]), (scene.object_by_id(3), [5, 6])):
        lo, hi = expected[rows].min(axis=0), expected[rows].max(axis=0)
        np.testing.assert_allclose(obj.center, (lo + hi) / 2, atol=1e-6)
        np.testing.assert_allclose(obj.size, hi - lo, atol=1e-6)
    # the chair by hand: x' in [-1+1, 0+1] = [0, 1], y' in [-2, -1], z' in [0.25, 1.05]
    np.testing.assert_allclose(scene.object_by_id(0).box, [0.5, -1.5, 0.65, 1.0, 1.0, 0.8], atol=1e-6)
    assert scene.boxes().shape == (3, 6)
    with pytest.raises(KeyError, match="no object with objectId 2"):
        scene.object_by_id(2)


def test_scene_without_alignment_or_annotations(tmp_path: Path) -> None:
    scene = load_scannet_scene(write_scene(tmp_path, annotations=False, A=None))
    assert not scene.axis_aligned and scene.objects == ()
    np.testing.assert_array_equal(scene.points_xyz, VERTS)
    assert np.all(scene.instance_ids == -1)


def test_scene_errors_name_the_file(tmp_path: Path) -> None:
    d = write_scene(tmp_path)
    segs = d / "scene0002_00_vh_clean_2.0.010000.segs.json"
    agg = d / "scene0002_00.aggregation.json"

    segs.write_text(json.dumps({"segIndices": SEGS[:-1]}))
    with pytest.raises(ValueError, match=r"segs\.json: has 8 segIndices but scene0002_00_vh_clean_2\.ply has 9 vertices"):
        load_scannet_scene(d)
    segs.write_text(json.dumps({"segIndices": SEGS}))

    agg.write_text(json.dumps({"segGroups": [{"objectId": 0, "label": "chair", "segments": [99]}]}))
    with pytest.raises(ValueError, match=r"aggregation\.json: object 0 \(chair\) lists segment\(s\) \[99\]"):
        load_scannet_scene(d)
    agg.write_text(json.dumps({"segGroups": [{"objectId": 0, "segments": [10]}]}))
    with pytest.raises(ValueError, match=r"aggregation\.json: segGroups\[0\] has no 'label' field"):
        load_scannet_scene(d)
    agg.write_text("{not json")
    with pytest.raises(ValueError, match=r"aggregation\.json: not valid JSON"):
        load_scannet_scene(d)
    agg.unlink()
    with pytest.raises(FileNotFoundError, match=r"aggregation\.json is missing while .*segs\.json exists"):
        load_scannet_scene(d)

    (d / "scene0002_00.txt").write_text("axisAlignment = 1 0 0 0 1 0\n")
    with pytest.raises(ValueError, match=r"scene0002_00\.txt: line 1: axisAlignment must hold 16 numbers"):
        load_scannet_scene(d)
    (d / "scene0002_00_vh_clean_2.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\n")
    write_meta(d / "scene0002_00.txt", None)
    with pytest.raises(ValueError, match=r"scene0002_00_vh_clean_2\.ply: not a readable PLY file"):
        load_scannet_scene(d)
    (d / "scene0002_00.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"scene0002_00\.txt is missing"):
        load_scannet_scene(d)
