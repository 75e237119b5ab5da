"""Training data: annotations, box files, frame picks, dataset samples, collator, task sampler.

Samples are checked against independent computations: world coordinates from the depth PNG, pose
file and intrinsics by hand, label masks from the tokenizer, grounding targets from objects.json.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from video3dllm_core.ingest import IngestConfig, coverage_voxel_keys
from video3dllm_core.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from video3dllm_core.model.prompts import Task, build_input_ids, human_turn, load_tokenizer, special_token_ids
from video3dllm_core.sources.posed_images import PosedImagesSource
from video3dllm_training.data import (
    SPATIAL_INSTRUCTION,
    DatasetConfig,
    SceneStore,
    TaskBatchSampler,
    Video3DDataset,
    load_annotations,
    load_box_file,
    load_data_mixture,
    load_embodiedscan_infos,
    load_frames_file,
    match_targets,
    mc_frame_stems,
)
from video3dllm_training.data.annotations import parse_annotation
from video3dllm_training.data.dataset import TASK_GROUPS, Collator
from video3dllm_training.synthetic_benchmark import ROUND_SHAPES, make_benchmark

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"
W, H = 64, 48


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_benchmark(out, scenes=3, seed=5, frames_per_scene=8, width=W, height=H, val_fraction=0.34)
    return out


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(CKPT)


def _all_train(bench: Path) -> list[Any]:
    anns, _ = load_data_mixture(bench / "multi.yaml")
    return anns


def _dataset(bench: Path, tokenizer: Any, **kw: Any) -> Video3DDataset:
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(bench / "metadata" / "scannet_select_frames.json"))
    cfg = DatasetConfig(**{"frames_upbound": 3, **kw})
    return Video3DDataset(_all_train(bench), store, tokenizer, load_box_file(bench / "metadata" / "scannet_train_gt_box.json"), cfg)


def _index(ds: Video3DDataset, task: Task, pred: Any = lambda a: True) -> int:
    return next(i for i, a in enumerate(ds.annotations) if a.task is task and pred(a))


# ---------------------------------------------------------------- annotations
def test_benchmark_files_use_upstream_field_names(bench: Path) -> None:
    ref = json.loads((bench / "processed" / "scanrefer_vg_train_llava_style.json").read_text())[0]
    assert set(ref) >= {"id", "video", "conversations", "box", "metadata"}
    assert ref["video"].startswith("scannet/scene")
    assert [c["from"] for c in ref["conversations"]] == ["human", "gpt"] and ref["conversations"][1]["value"] == "<ground>"
    assert set(ref["metadata"]) >= {"dataset", "question_type", "object_id"}
    cap = json.loads((bench / "processed" / "scan2cap_val_llava_style.json").read_text())[0]
    assert set(cap) >= {"box_input", "gt_box", "annotations"}
    qa = json.loads((bench / "processed" / "scanqa_train_llava_style.json").read_text())[0]
    assert qa["id"].startswith("scanqa_") and qa["metadata"]["dataset"] == "scanQA"
    assert qa["conversations"][0]["value"].endswith("Answer the question simply.")
    tasks = {a.task for a in _all_train(bench)}
    assert tasks == set(Task)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("metadata"), "metadata.dataset"),
        (lambda d: d["metadata"].update(dataset="nope"), "metadata.dataset"),
        (lambda d: d.pop("video"), "'video'"),
        (lambda d: d.update(conversations=[{"from": "gpt", "value": "x"}]), "conversations"),
        (lambda d: d["conversations"][0].update(value="no image here"), "conversations[0].value"),
        (lambda d: d["metadata"].pop("object_id"), "metadata.object_id"),
        (lambda d: d.update(box=[1, 2, 3]), "'box'"),
        (lambda d: d["metadata"].update(object_id=[1, 2]), "metadata.object_id"),
    ],
)
def test_bad_annotation_names_the_field(change: Any, field: str) -> None:
    item = {"id": 3, "video": "scannet/scene0000_00",
            "conversations": [{"from": "human", "value": human_turn("scanrefer", description="the chair")},
                              {"from": "gpt", "value": "<ground>"}],
            "box": [0, 0, 0, 1, 1, 1], "metadata": {"dataset": "scanrefer", "object_id": 2}}
    change(item)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_annotation(item, "file.json[7]")


def test_data_yaml_sampling_and_weights(bench: Path, tmp_path: Path) -> None:
    refer = bench / "processed" / "scanrefer_vg_train_llava_style.json"
    qa = bench / "processed" / "scanqa_train_llava_style.json"
    n_refer, n_qa = len(json.loads(refer.read_text())), len(json.loads(qa.read_text()))
    spec = tmp_path / "mix.yaml"
    spec.write_text(f"datasets:\n  - json_path: {refer}\n    sampling_strategy: first:3\n    weight: 2.5\n"
                    f"  - json_path: {qa}\n    sampling_strategy: random:50%\n")
    anns, weights = load_data_mixture(spec, seed=1)
    assert [a.task for a in anns].count(Task.SCANREFER) == 3
    assert [a.id for a in anns if a.task is Task.SCANREFER] == ["0", "1", "2"]
    assert [a.task for a in anns].count(Task.SCANQA) == -(-n_qa * 50 // 100)
    assert weights == {Task.SCANREFER: 2.5} and n_refer > 3
    spec.write_text(f"datasets:\n  - json_path: {refer}\n    sampling_strategy: last:3\n")
    with pytest.raises(ValueError, match="sampling_strategy"):
        load_data_mixture(spec)


# ---------------------------------------------------------------- boxes and frame picks
def test_box_file_and_detector_matching(bench: Path) -> None:
    gt = load_box_file(bench / "metadata" / "scannet_train_gt_box.json")
    scene = sorted(gt)[0]
    objects = json.loads((bench / "posed_images" / scene / "objects.json").read_text())["objects"]
    expected = np.array([o["box"]["center"] + o["box"]["size"] for o in sorted(objects, key=lambda o: o["id"])])
    np.testing.assert_allclose(gt[scene], expected)
    cand = np.array([[0, 0, 0, 1, 1, 1], [5, 5, 5, 1, 1, 1], [0.1, 0, 0, 1, 1, 1]], dtype=float)
    # GT 0 overlaps candidates 0 (IoU 1) and 2 (IoU 0.82): best wins; GT 1 matches nothing
    assert match_targets(cand, np.array([[0, 0, 0, 1, 1, 1], [9, 9, 9, 1, 1, 1]])) == (0,)
    assert match_targets(cand, np.array([[0.1, 0, 0, 1, 1, 1], [5, 5, 5.2, 1, 1, 1]])) == (1, 2)
    assert match_targets(cand, np.zeros((0, 6))) == ()


def test_frames_file_is_the_greedy_over_core_voxel_keys(bench: Path) -> None:
    picks = load_frames_file(bench / "metadata" / "scannet_select_frames.json")
    scene = sorted(picks)[0]
    sel = picks[scene]
    raw = json.loads((bench / "metadata" / "scannet_select_frames.json").read_text())[0]
    assert set(raw) == {"video_id", "frame_files", "voxel_nums", "num_all_voxels", "num_select_voxels"}
    assert raw["frame_files"][0].startswith(f"data/scannet/posed_images/{scene}/") and raw["frame_files"][0].endswith(".jpg")
    # independent set-based greedy (ties -> earliest) over the same voxel keys (8 frames < 32: all are candidates)
    cfg = IngestConfig()
    keys = {f.name: set(coverage_voxel_keys(f.depth_m, f.K_depth, f.T_world_cam, cfg).tolist())
            for f in PosedImagesSource(bench / "posed_images" / scene)}
    names = sorted(keys, key=int)
    covered: set[int] = set()
    order, gains = [], []
    while True:
        best = max(names, key=lambda n: (len(keys[n] - covered), -int(n)))
        gain = len(keys[best] - covered)
        if gain == 0:
            break
        order.append(best)
        gains.append(gain)
        covered |= keys[best]
    assert list(sel.stems) == order and list(sel.voxel_nums) == gains
    assert sel.num_all_voxels == len(set().union(*keys.values())) and sel.num_select_voxels == len(covered)
    # upstream's load-time rule: first k picks, ratio cut on cumulative gains, sorted by frame number
    assert mc_frame_stems(sel, "mc", 2) == sorted(order[:2], key=int)
    need = next(i for i in range(len(gains)) if sum(gains[: i + 1]) >= 0.9 * sel.num_all_voxels)
    assert mc_frame_stems(sel, "mc-ratio90", 32) == sorted(order[: need + 1], key=int)
    with pytest.raises(ValueError, match="not a max-coverage"):
        mc_frame_stems(sel, "uniform", 4)


# ---------------------------------------------------------------- samples
def test_sample_world_coordinates_match_a_hand_computation(bench: Path, tokenizer: Any) -> None:
    ds = _dataset(bench, tokenizer, frame_strategy="uniform", frames_upbound=3)
    i = _index(ds, Task.SCANQA)
    sample = ds[i]
    scene_dir = bench / "posed_images" / ds.annotations[i].scene_id
    stems = sorted((p.stem for p in scene_dir.glob("*.jpg")), key=int)
    expected_stems = [stems[k] for k in np.linspace(0, len(stems) - 1, 3, dtype=int)]
    assert sample.frame_names == tuple(expected_stems)
    assert sample.crop_rgb.shape == (3, 384, 384, 3) and sample.crop_rgb.dtype == torch.uint8
    assert sample.world_coords.shape == (3, 384, 384, 3) and sample.patch_world_coords.shape == (3, 14, 14, 3)
    # by hand: depth 64x48 -> resized 512x384, crop columns 64..447; crop (r, c) reads depth pixel
    # (floor(r / 8), floor((c + 64) / 8)); x = (u - cx) z / fx, ...; world = A @ pose @ [x y z 1]
    K = np.loadtxt(scene_dir / "depth_intrinsic.txt")[:3, :3]
    A = np.loadtxt(scene_dir / "axis_align_matrix.txt")
    for f, stem in enumerate(expected_stems):
        depth = np.asarray(Image.open(scene_dir / f"{stem}.png")).astype(np.float64) / 1000
        T = A @ np.loadtxt(scene_dir / f"{stem}.txt")
        for r, c in ((0, 0), (200, 190), (383, 383), (100, 300)):
            v, u = r // 8, (c + 64) // 8
            z = depth[v, u]
            cam = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z, 1.0])
            np.testing.assert_allclose(sample.world_coords[f, r, c].numpy(), (T @ cam)[:3], atol=2e-5)
        np.testing.assert_allclose(sample.patch_world_coords[f].numpy(),
                                   sample.world_coords[f, :378, :378].numpy().reshape(14, 27, 14, 27, 3).mean(axis=(1, 3)),
                                   atol=1e-5)


def test_training_labels_keep_only_the_answer_turn(bench: Path, tokenizer: Any) -> None:
    ds = _dataset(bench, tokenizer)
    i = _index(ds, Task.SCANQA)
    ann, sample = ds.annotations[i], ds[i]
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()  # type: ignore[union-attr]
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and len(ids) == len(labels)
    specials = special_token_ids(tokenizer)
    answer_ids = tokenizer(f"<|im_start|>assistant\n{ann.answer}<|im_end|>\n", add_special_tokens=False).input_ids
    assert ids[-len(answer_ids):] == answer_ids and labels[-len(answer_ids):] == answer_ids
    head = labels[: -len(answer_ids)]
    assert {t for t in head if t != IGNORE_INDEX} <= {198, specials.im_start, specials.im_end}
    text = tokenizer.decode([t for t in ids if t >= 0])
    assert SPATIAL_INSTRUCTION in text and "Answer the question simply." in text
    no_instr = _dataset(bench, tokenizer, spatial_instruction=False)[i]
    assert SPATIAL_INSTRUCTION not in tokenizer.decode([t for t in no_instr.input_ids.tolist() if t >= 0])
    eval_sample = _dataset(bench, tokenizer, training=False)[i]
    assert eval_sample.input_ids.tolist() == build_input_ids(tokenizer, Task.SCANQA, ann.human).input_ids
    assert eval_sample.labels is None


def test_grounding_targets_and_scan2cap_location(bench: Path, tokenizer: Any) -> None:
    ds = _dataset(bench, tokenizer)
    gt = load_box_file(bench / "metadata" / "scannet_train_gt_box.json")
    i = _index(ds, Task.SCANREFER)
    ann, s = ds.annotations[i], ds[i]
    assert s.ground_targets == ann.object_ids and s.boxes is not None
    np.testing.assert_allclose(s.boxes[ann.object_ids[0]].numpy(), np.asarray(ann.boxes[0], dtype=np.float32))
    assert s.labels is not None and int((s.labels == special_token_ids(tokenizer).ground).sum()) == 1
    j = _index(ds, Task.MULTI3DREFER, lambda a: "round objects" in a.human)
    ann = ds.annotations[j]
    objects = json.loads((bench / "posed_images" / ann.scene_id / "objects.json").read_text())["objects"]
    assert ds[j].ground_targets == tuple(sorted(o["id"] for o in objects if o["shape"] in ROUND_SHAPES))
    k = _index(ds, Task.MULTI3DREFER, lambda a: not a.object_ids)
    assert ds[k].ground_targets == () and len(gt[ds.annotations[k].scene_id]) == ds[k].boxes.shape[0]  # type: ignore[union-attr]
    c = _index(ds, Task.SCAN2CAP)
    cap = ds[c]
    assert cap.coord_xyz is not None
    np.testing.assert_allclose(cap.coord_xyz.numpy(), np.asarray(ds.annotations[c].box_input[:3], dtype=np.float32))  # type: ignore[index]
    # a box file from another preprocessing run is caught
    wrong = dict(ds.boxes)
    wrong[ds.annotations[i].scene_id] = wrong[ds.annotations[i].scene_id] + 0.5
    bad = Video3DDataset(ds.annotations, ds.scenes, tokenizer, wrong, ds.config)
    with pytest.raises(ValueError, match="differs from box file"):
        bad[i]


def test_mc_strategy_uses_the_frames_file(bench: Path, tokenizer: Any) -> None:
    ds = _dataset(bench, tokenizer, frame_strategy="mc", frames_upbound=2)
    i = _index(ds, Task.SQA3D)
    sel = load_frames_file(bench / "metadata" / "scannet_select_frames.json")[ds.annotations[i].scene_id]
    assert ds[i].frame_names == tuple(sorted(sel.stems[:2], key=int))
    store = SceneStore(bench / "posed_images")
    with pytest.raises(ValueError, match="frames-file"):
        store.frames(ds.annotations[i].scene_id, "mc", 2)


def test_embodiedscan_infos_need_trust_and_override_frames(bench: Path, tmp_path: Path) -> None:
    scene = sorted(p.name for p in (bench / "posed_images").iterdir())[0]
    A = np.eye(4)
    A[:3, 3] = [10.0, 0.0, 0.0]
    info = {"data_list": [{"sample_idx": f"scannet/{scene}", "axis_align_matrix": A.tolist(),
                           "images": [{"img_path": f"scannet/posed_images/{scene}/00010.jpg"},
                                      {"img_path": f"scannet/posed_images/{scene}/00030.jpg"}]}]}
    path = tmp_path / "embodiedscan_infos_val.pkl"
    path.write_bytes(pickle.dumps(info))
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_embodiedscan_infos([tmp_path])
    infos = load_embodiedscan_infos([tmp_path], trust_pickle=True)
    store = SceneStore(bench / "posed_images", infos=infos)
    assert store.all_stems(scene) == ["00010", "00030"]
    frames = store.frames(scene, "uniform", 2)
    raw_pose = np.loadtxt(bench / "posed_images" / scene / "00010.txt")
    np.testing.assert_allclose(frames[0].T_world_cam, A @ raw_pose)  # the infos' alignment, not the folder's


# ---------------------------------------------------------------- collator and sampler
def test_collator_pads_ids_labels_and_mask(bench: Path, tokenizer: Any) -> None:
    ds = _dataset(bench, tokenizer)
    samples = [ds[_index(ds, Task.SCANQA)], ds[_index(ds, Task.SCANREFER)], ds[_index(ds, Task.SCAN2CAP)]]
    batch = Collator(pad_token_id=7)(samples)
    lengths = [len(s.input_ids) for s in samples]
    assert batch.input_ids.shape == (3, max(lengths)) and batch.lengths == lengths
    for row, s in enumerate(samples):
        n = lengths[row]
        assert torch.equal(batch.input_ids[row, :n], s.input_ids) and torch.equal(batch.labels[row, :n], s.labels)  # type: ignore[arg-type]
        assert bool(batch.attention_mask[row, :n].all()) and not bool(batch.attention_mask[row, n:].any())
        assert bool((batch.input_ids[row, n:] == 7).all()) and bool((batch.labels[row, n:] == IGNORE_INDEX).all())
    assert batch.tasks == [Task.SCANQA, Task.SCANREFER, Task.SCAN2CAP]
    assert batch.boxes[0] is None and batch.boxes[1] is not None and batch.coord_xyz[2] is not None


def test_task_sampler_groups_and_is_deterministic() -> None:
    tasks = [Task.SCANQA] * 40 + [Task.SQA3D] * 20 + [Task.SCAN2CAP] * 30 + [Task.SCANREFER] * 25 + [Task.MULTI3DREFER] * 15
    sampler = TaskBatchSampler(tasks, batch_size=4, seed=3)
    batches = sampler.epoch_batches()
    assert len(batches) == sampler.batches_per_epoch() == 60 // 4 + 30 // 4 + 40 // 4
    for b in batches:
        assert len({TASK_GROUPS[tasks[i]] for i in b}) == 1
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert batches == TaskBatchSampler(tasks, 4, seed=3).epoch_batches()
    sampler.set_position(1)
    assert sampler.epoch_batches() != batches
    sampler.set_position(1, skip_batches=5)
    assert list(sampler) == sampler.epoch_batches()[5:] and len(sampler) == len(batches) - 5


def test_task_sampler_weights_set_the_mixture() -> None:
    tasks = [Task.SCANQA] * 100 + [Task.SCANREFER] * 100 + [Task.SCAN2CAP] * 100
    counts = {t: 0 for t in (Task.SCANQA, Task.SCANREFER, Task.SCAN2CAP)}
    sampler = TaskBatchSampler(tasks, 2, weights={"scanqa": 3, "scanrefer": 1, "scan2cap": 0}, seed=0)
    for epoch in range(20):
        sampler.set_position(epoch)
        for b in sampler:
            assert len({tasks[i] for i in b}) == 1
            counts[tasks[b[0]]] += 1
    total = sum(counts.values())
    assert counts[Task.SCAN2CAP] == 0 and abs(counts[Task.SCANQA] / total - 0.75) < 0.03
    with pytest.raises(ValueError, match="weights"):
        TaskBatchSampler(tasks, 2, weights={"scanqa": -1})
