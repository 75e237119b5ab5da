"""`video3dllm prepare {sens,scene,frames}` on small real-format files (.sens, PLY, aggregation, segs)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from video3dllm_core.cli import main as cli_main
from video3dllm_core.sources.posed_images import PosedImagesSource
from video3dllm_training.data import load_box_file, load_frames_file
from video3dllm_training.scannet import write_sens

DW, DH = 40, 30
K = np.array([[36.0, 0.0, 20.0], [0.0, 36.0, 15.0], [0.0, 0.0, 1.0]])


def _sens(path: Path, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames, poses = [], []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (DH, DW, 3), dtype=np.uint8)).save(buf, format="JPEG")
        depth = np.full((DH, DW), 1500 + 100 * i, dtype=np.uint16)
        depth[:, : 4 * i] = 3000  # frames see different depths -> different voxels
        T = np.eye(4)
        T[:3, 3] = [0.3 * i, 0.0, 0.0]
        frames.append((buf.getvalue(), depth, T))
        poses.append(T)
    write_sens(path, frames, K, K, (DW, DH), (DW, DH))
    return poses


def test_prepare_sens_then_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scans = tmp_path / "scans"
    (scans / "scene0007_00").mkdir(parents=True)
    A = np.eye(4)
    A[:3, 3] = [1.0, 2.0, 0.0]
    (scans / "scene0007_00" / "scene0007_00.txt").write_text("axisAlignment = " + " ".join(f"{v:g}" for v in A.ravel()) + "\n")
    poses = _sens(scans / "scene0007_00" / "scene0007_00.sens", 6)
    posed = tmp_path / "posed_images"
    assert cli_main(["prepare", "sens", str(scans), str(posed), "--stride", "2", "--workers", "1"]) == 0
    src = PosedImagesSource(posed / "scene0007_00")
    assert src.stems == ["00000", "00002", "00004"]
    frames = list(src)
    np.testing.assert_allclose(frames[1].T_world_cam, A @ poses[2], atol=1e-6)  # axis alignment applied
    capsys.readouterr()
    out = tmp_path / "select.json"
    assert cli_main(["prepare", "frames", str(posed), "--out", str(out), "--max-frames", "2", "--path-prefix", "x/posed"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == 1 and summary["mean_frames"] == 2
    sel = load_frames_file(out)["scene0007_00"]
    assert len(sel.frame_files) == 2 and all(f.startswith("x/posed/scene0007_00/") for f in sel.frame_files)
    assert sum(sel.voxel_nums) == sel.num_select_voxels <= sel.num_all_voxels


def _write_scan(root: Path, sid: str, object_ids: list[int]) -> None:
    d = root / sid
    d.mkdir(parents=True)
    (d / f"{sid}.txt").write_text("axisAlignment = " + " ".join(["1", "0", "0", "0.5", "0", "1", "0", "0", "0", "0", "1", "0",
                                                                  "0", "0", "0", "1"]) + "\n")
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 1], [3, 3, 0], [4, 3.5, 0.5], [9, 9, 9]], dtype=np.float32)
    v = np.zeros(len(verts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = verts.T
    PlyData([PlyElement.describe(v, "vertex")], text=False).write(str(d / f"{sid}_vh_clean_2.ply"))
    (d / f"{sid}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [10, 10, 10, 20, 20, 30]}))
    groups = [{"objectId": object_ids[0], "label": "chair", "segments": [10]}, {"objectId": object_ids[1], "label": "table", "segments": [20]}]
    (d / f"{sid}.aggregation.json").write_text(json.dumps({"segGroups": groups}))


def test_prepare_scene_writes_upstream_box_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scans = tmp_path / "scans"
    _write_scan(scans, "scene0001_00", [0, 1])
    _write_scan(scans, "scene0002_00", [0, 2])  # ids not 0..n-1: upstream drops the scene
    out = tmp_path / "meta" / "scannet_train_gt_box.json"
    assert cli_main(["prepare", "scene", str(scans), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "dropped 1 scene" in captured.err and "scene0002_00" in captured.err
    raw = json.loads(out.read_text())
    assert list(raw) == ["scannet/scene0001_00"]
    boxes = load_box_file(out)["scene0001_00"]
    # by hand, x shifted by 0.5: chair x [0.5, 1.5], y [0, 2], z [0, 1]; table x [3.5, 4.5], y [3, 3.5], z [0, 0.5]
    np.testing.assert_allclose(boxes, [[1.0, 1.0, 0.5, 1.0, 2.0, 1.0], [4.0, 3.25, 0.25, 1.0, 0.5, 0.5]], atol=1e-6)
