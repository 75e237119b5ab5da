"""The `video3dllm` CLI end to end: synth-scene -> bag-from-scene -> select-frames, demo, error paths."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from video3dllm_core.bag_writer import DEFAULT_STAMP_OFFSET_NS, DEFAULT_T_MAP_WORLD, write_scene_bag
from video3dllm_core.cli import main
from video3dllm_core.ingest import FrameIngestor, IngestConfig
from video3dllm_core.keyframes import CoverageIndex
from video3dllm_core.model.prompts import Task
from video3dllm_core.sources.posed_images import PosedImagesSource
from video3dllm_core.sources.rosbag import RosbagSource

VOXEL = 0.1


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "scene"
    assert main(["synth-scene", str(out), "--seed", "4", "--frames", "14", "--width", "160", "--height", "120"]) == 0
    return out


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1  # exactly one JSON document, nothing else on stdout
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def voxel_set(frame, config: IngestConfig) -> set[tuple[int, int, int]]:
    """Independent voxelisation with the ingest settings: strided pixels, depth window, floor(p / size)."""
    s = config.coverage_stride_px
    d = frame.depth_m[::s, ::s].astype(np.float64)
    vi, ui = np.nonzero((d >= config.coverage_min_depth_m) & (d <= config.coverage_max_depth_m))
    z = d[vi, ui]
    K, T = frame.K_depth, frame.T_world_cam
    cam = np.stack([(ui * s - K[0, 2]) * z / K[0, 0], (vi * s - K[1, 2]) * z / K[1, 1], z], axis=1)
    world = cam @ T[:3, :3].T + T[:3, 3]
    return set(map(tuple, np.floor(world / config.voxel_size_m).astype(np.int64).tolist()))


def check_against_frames(result: dict, frames: list) -> None:
    """coverage / voxel counts recomputed from the frames; poses and stamps are the frames' own."""
    config = IngestConfig(voxel_size_m=result["voxel_size_m"])
    by_stamp = {int(f.stamp_ns): f for f in frames}
    sets = {s: voxel_set(f, config) for s, f in by_stamp.items()}
    everything = set().union(*sets.values())
    chosen = [r["stamp_ns"] for r in result["frames"]]
    assert chosen == sorted(chosen)
    selected = set().union(*(sets[s] for s in chosen))
    assert result["num_input_frames"] == len(frames)
    assert result["voxels_total"] == len(everything)
    assert result["voxels_selected"] == len(selected)
    assert result["coverage"] == pytest.approx(len(selected) / len(everything), abs=1e-12)
    for r in result["frames"]:
        np.testing.assert_allclose(np.array(r["T_world_cam"]), by_stamp[r["stamp_ns"]].T_world_cam, atol=1e-9)


def test_select_frames_on_posed_images(scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, ["select-frames", str(scene), "--max-frames", "6"])
    frames = list(PosedImagesSource(scene))
    check_against_frames(result, frames)
    assert len(result["frames"]) == 6 and result["strategy"] == "mc" and result["coverage_ratio"] is None
    assert [r["name"] for r in result["frames"]] == [frames[r["index"]].name for r in result["frames"]]
    assert set(result["timing"]) == {"read_s", "voxelize_s", "select_s", "total_s"}
    assert all(v >= 0 for v in result["timing"].values())
    # the offline command equals the online index holding every frame
    index = CoverageIndex(capacity=len(frames))
    ingestor = FrameIngestor(IngestConfig(voxel_size_m=VOXEL))
    for f in frames:
        index.add(ingestor.ingest(f))
    for strategy, extra in (("mc", []), ("uniform", []), ("mc-ratio90", [])):
        res = run_json(capsys, ["select-frames", str(scene), "--max-frames", "6", "--strategy", strategy, *extra])
        sel = index.select(strategy, max_frames=6)
        assert [r["name"] for r in res["frames"]] == [f.name for f in sel.frames]
        assert res["voxels_selected"] == sel.voxels_selected and res["voxels_total"] == sel.voxels_total


def test_coverage_ratio_stops_early(scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = run_json(capsys, ["select-frames", str(scene), "--max-frames", "14"])
    ratio = run_json(capsys, ["select-frames", str(scene), "--max-frames", "14", "--coverage", "0.8"])
    assert ratio["coverage"] >= 0.8 and len(ratio["frames"]) < len(budget["frames"])
    check_against_frames(ratio, list(PosedImagesSource(scene)))
    coarse = run_json(capsys, ["select-frames", str(scene), "--voxel-size", "0.25", "--max-frames", "3"])
    assert coarse["voxel_size_m"] == 0.25 and coarse["voxels_total"] < budget["voxels_total"]
    check_against_frames(coarse, list(PosedImagesSource(scene)))


@pytest.mark.parametrize(
    "storage,compressed,encoding", [("mcap", False, "16UC1"), ("sqlite3", True, "32FC1"), ("mcap", True, "16UC1")]
)
def test_select_frames_on_bag_from_scene(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         storage: str, compressed: bool, encoding: str) -> None:
    bag = tmp_path / "bag"
    argv = ["bag-from-scene", str(scene), str(bag), "--storage", storage, "--depth-encoding", encoding]
    assert main(argv + (["--compressed"] if compressed else [])) == 0
    capsys.readouterr()
    result = run_json(capsys, ["select-frames", str(bag), "--max-frames", "6"])
    assert "rosbag2" in result["source"] and result["dropped"] == {}
    check_against_frames(result, list(RosbagSource(bag)))
    # the bag's map frame is the scene frame moved by T_map_world: same cameras, other world frame
    posed = {f.stamp_ns + DEFAULT_STAMP_OFFSET_NS: f for f in PosedImagesSource(scene)}
    for r in result["frames"]:
        assert r["name"] is None
        np.testing.assert_allclose(np.array(r["T_world_cam"]), DEFAULT_T_MAP_WORLD @ posed[r["stamp_ns"]].T_world_cam,
                                   atol=1e-9)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_bag_and_posed_images_select_the_same_frames(scene: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], encoding: str) -> None:
    # With map == scene frame the two inputs carry the same depth (millimetres) and the same poses.
    write_scene_bag(scene, tmp_path / "bag", depth_encoding=encoding, T_map_world=np.eye(4))
    for strategy in ("mc", "uniform", "mc-ratio95"):
        a = run_json(capsys, ["select-frames", str(scene), "--max-frames", "5", "--strategy", strategy])
        b = run_json(capsys, ["select-frames", str(tmp_path / "bag"), "--max-frames", "5", "--strategy", strategy])
        assert [r["index"] for r in a["frames"]] == [r["index"] for r in b["frames"]]
        assert [r["stamp_ns"] + DEFAULT_STAMP_OFFSET_NS for r in a["frames"]] == [r["stamp_ns"] for r in b["frames"]]
        for key in ("voxels_selected", "voxels_total", "num_input_frames"):
            assert a[key] == b[key]


def test_table_output_and_progress_stay_off_stdout_json(scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select-frames", str(scene), "--max-frames", "4", "--strategy", "uniform"]) == 0
    out = capsys.readouterr().out
    assert "selected 4 frames covering" in out and "00000" in out and "timing:" in out


def test_installed_entry_point_prints_one_json_object(scene: Path) -> None:
    exe = Path(sys.executable).parent / "video3dllm"
    proc = subprocess.run([str(exe), "select-frames", str(scene), "--max-frames", "3", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["frames"]) == 3 and proc.stdout.count("\n") == 1


def test_error_paths_exit_2_and_name_the_problem(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing_here"
    assert main(["select-frames", str(missing), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "nothing_here" in captured.err and "does not exist" in captured.err

    bag = tmp_path / "bag"
    write_scene_bag(scene, bag)
    assert main(["select-frames", str(bag), "--rgb-topic", "/front/rgb", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rgb topic (--rgb-topic) '/front/rgb' is not in bag" in captured.err
    assert "/camera/camera/color/image_raw [sensor_msgs/msg/Image" in captured.err

    assert main(["select-frames", str(bag), "--world-frame", "world", "--json"]) == 2
    err = capsys.readouterr().err
    assert "no usable frame" in err and "no_tf: 14" in err and "'world' does not exist" in err

    assert main(["select-frames", str(scene), "--strategy", "uniform", "--coverage", "0.9"]) == 2
    assert "coverage_ratio" in capsys.readouterr().err
    assert main(["select-frames", str(scene), "--rgb-topic", "/x"]) == 2
    assert "rgb_topic" in capsys.readouterr().err


def _iou(a: list[float], b: list[float]) -> float:
    """Axis-aligned 3D IoU of (center, size) boxes from per-axis interval overlaps."""
    inter = 1.0
    for k in range(3):
        lo = max(a[k] - a[k + 3] / 2, b[k] - b[k + 3] / 2)
        hi = min(a[k] + a[k + 3] / 2, b[k] + b[k + 3] / 2)
        inter *= max(hi - lo, 0.0)
    union = np.prod(a[3:]) + np.prod(b[3:]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.slow  # 5-15 s: eight queries with the embedded default model
def test_demo_answers_every_task_next_to_the_truth_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from video3dllm_core.commands.demo import T_MAP_WORLD_XYZ
    from video3dllm_core.report import CORRECT_IOU, read_jsonl
    from video3dllm_training.synthetic_benchmark import make_benchmark_scene, scene_annotations

    out = tmp_path / "demo"
    frames = 8
    assert main(["demo", "--out", str(out), "--frames", str(frames), "--width", "128", "--height", "96", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("NOTE: the embedded default model is a small Video-3D LLM")
    assert re.search(r"grounds \d+ % of referring expressions \(chance \d+ %\)", text.splitlines()[0])
    tasks = re.findall(r"^Q\d \[(\w+)\]", text, flags=re.MULTILINE)
    assert tasks == ["ground", "ground", "ground", "ground_multi", "qa", "qa", "situated_qa", "caption"]  # Q5 auto -> qa
    assert "truth: " in text and "expected: " in text and "\nkeyframes: " in text

    spec = make_benchmark_scene(2)
    shift = np.asarray(T_MAP_WORLD_XYZ)
    objects = {f"{o.colour} {o.label}": o for o in spec.objects}
    rows = read_jsonl(out / "answers.jsonl")
    assert [r["index"] for r in rows] == list(range(8))
    assert {r["requested_task"] for r in rows} == {"ground", "ground_multi", "qa", "situated_qa", "caption", "auto"}
    half = (frames - 1) / 3 / 2  # frames are 1/3 s apart; the first question is asked half-way
    assert rows[0]["at_s"] == pytest.approx(half, abs=1e-3)
    assert rows[0]["frames_seen"] == sum(1 for i in range(frames) if i / 3 <= rows[0]["at_s"]) == 4
    assert all(r["frames_seen"] == frames for r in rows[1:])
    # the questions and their truth are the benchmark's own for this room
    anns = scene_annotations(spec, "demo", "test", seed=2)
    descriptions = {a["conversations"][0]["value"].split("\n")[1] for a in anns[Task.SCANREFER]}
    assert rows[1]["question"] in descriptions and rows[2]["question"] in descriptions
    assert rows[4]["expected_text"] in {a["conversations"][1]["value"] for a in anns[Task.SCANQA]}
    for row in rows:
        for gt in row["ground_truth"]:  # truth boxes are the scene's own, moved into the map frame
            obj = objects[gt["label"]]
            assert gt["center_xyz"] == pytest.approx(list(np.asarray(obj.center) + shift))
            assert gt["size_xyz"] == pytest.approx(list(obj.size))
        if row["task"] in ("ground", "ground_multi"):
            for pred in row["objects"]:
                best = max(_iou(pred["center_xyz"] + pred["size_xyz"], g["center_xyz"] + g["size_xyz"])
                           for g in row["ground_truth"])
                assert pred["iou"] == pytest.approx(best, abs=1e-9)
            if row["task"] == "ground":  # one box: correct exactly when it overlaps the truth enough
                assert row["correct"] == (row["objects"][0]["iou"] >= CORRECT_IOU)
        elif row["expected_text"] is not None and row["task"] != "caption":
            assert row["correct"] == (row["text"].strip().rstrip(".").lower() == row["expected_text"].lower())
    caption = rows[7]
    assert caption["task"] == "caption" and caption["target"] == pytest.approx(caption["ground_truth"][0]["center_xyz"])
    reference = anns[Task.SCAN2CAP][0]  # the room's first caption: its other references are accepted too, and shown
    assert caption["expected_text"] == reference["conversations"][1]["value"] == "a yellow bed next to the chair."
    assert caption["also_accepted"] == ["a yellow bed."] == [a for a in reference["annotations"] if a != caption["expected_text"]]
    assert "expected: 'a yellow bed next to the chair.' (also accepted: 'a yellow bed.')" in text
    assert all(r["also_accepted"] == [] for r in rows if r["task"] in ("qa", "situated_qa"))
    correct = sum(bool(r["correct"]) for r in rows)
    assert f"{correct} of 8 answers correct" in text

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["read"] == frames and summary["world_frame"] == "map"
    page = (out / "report.html").read_text()
    assert "small Video-3D LLM" in page
    for png in ("birdseye.png", "coverage.png", "latency.png"):
        assert f"src='{png}'" in page
        with Image.open(out / png) as image:
            assert image.format == "PNG"


def test_demo_turns_the_room_in_the_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--turn DEG: the room is turned about up around its map position; the truth boxes are the axis-aligned
    boxes around the turned objects (independently computed here)."""
    from video3dllm_core.commands.demo import T_MAP_WORLD_XYZ
    from video3dllm_core.report import read_jsonl
    from video3dllm_training.synthetic_benchmark import make_benchmark_scene

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "4", "--width", "128", "--height", "96", "--seed", "2",
                 "--turn", "30", "--scene-yaw", "world"]) == 0
    assert "turned 30 deg" in capsys.readouterr().out
    objects = {f"{o.colour} {o.label}": o for o in make_benchmark_scene(2).objects}
    c30, s30 = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    for row in read_jsonl(out / "answers.jsonl"):
        for gt in row["ground_truth"]:
            obj = objects[gt["label"]]
            (cx, cy, cz), (dx, dy, dz) = obj.center, obj.size
            x, y = c30 * cx - s30 * cy + T_MAP_WORLD_XYZ[0], s30 * cx + c30 * cy + T_MAP_WORLD_XYZ[1]
            assert gt["center_xyz"] == pytest.approx([x, y, cz + T_MAP_WORLD_XYZ[2]])
            assert gt["size_xyz"] == pytest.approx([c30 * dx + s30 * dy, s30 * dx + c30 * dy, dz])


def test_demo_rejects_too_few_frames(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--frames", "1"]) == 2
    assert "--frames must be at least 2" in capsys.readouterr().err
