"""A synthetic five-task benchmark in the upstream processed-data layout (`video3dllm make-benchmark`).

N seeded rooms (`video3dllm_core.synthetic`: labelled, coloured objects with exact boxes, ray-cast
RGB-D) are written as ScanNet-like scenes, with templated annotations for every task in upstream's
`*_llava_style.json` format:

    OUT/posed_images/<scene_id>/                 NNNNN.jpg/.png/.txt, intrinsics, axis_align_matrix.txt
    OUT/metadata/scannet_train_gt_box.json       GT boxes of the training scenes (index = object id)
    OUT/metadata/scannet_val_gt_box.json         GT boxes of the validation scenes
    OUT/metadata/scannet_val_pred_box.json       "detector" boxes: GT boxes with seeded noise
    OUT/metadata/scannet_select_frames.json      max-coverage picks (`prepare frames`)
    OUT/processed/{scanqa,sqa3d,scan2cap,scanrefer_vg,multi3drefer}_{train,val}_llava_style.json
    OUT/multi.yaml                               upstream data YAML of the training files
    OUT/benchmark.json                           settings and counts

Templates (object facts from objects.json):
  ScanQA        "What colour is the <label>?" -> colour; "What is the <colour> object?" -> label
  SQA3D         "I am standing next to the <a>." + "What colour is the <b>?" / "Is the <b> <colour>?"
  ScanRefer     "the <colour> <label>." -> that object's box
  Multi3DRefer  "the <colour> <label>." -> one box; "all the round objects." -> every cylinder,
                sphere and cone (zero, one or more); "the <absent colour> objects." -> none
  Scan2Cap      box -> "a <colour> <label>."
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from video3dllm_core.model.prompts import Task, human_turn
from video3dllm_core.synthetic import COLOURS, SceneSpec, make_scene, write_synthetic_scene
from video3dllm_training.data.boxes import write_box_file
from video3dllm_training.metrics.answers import sqa3d_question_type
from video3dllm_training.metrics.boxes import iou_matrix
from video3dllm_training.prepare import FramesJob, prepare_frames

__all__ = ["make_benchmark", "scene_annotations", "noisy_boxes", "ANNOTATION_FILES"]

ANNOTATION_FILES = {
    Task.SCANQA: "scanqa_{split}_llava_style.json",
    Task.SQA3D: "sqa3d_{split}_llava_style.json",
    Task.SCAN2CAP: "scan2cap_{split}_llava_style.json",
    Task.SCANREFER: "scanrefer_vg_{split}_llava_style.json",
    Task.MULTI3DREFER: "multi3drefer_{split}_llava_style.json",
}
ROUND_SHAPES = ("cylinder", "sphere", "cone")


def _box(obj: Any) -> list[float]:
    return [float(v) for v in (*obj.center, *obj.size)]


def noisy_boxes(spec: SceneSpec, seed: int) -> np.ndarray:
    """Stand-in detector proposals: each GT box with its centre moved by N(0, (3 % of its size)^2)
    and its size scaled by U(0.9, 1.1), seeded."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for obj in spec.objects:
        c, s = np.asarray(obj.center), np.asarray(obj.size)
        out.append(np.concatenate([c + rng.normal(0.0, 0.03, 3) * s, s * rng.uniform(0.9, 1.1, 3)]))
    return np.asarray(out, dtype=np.float64)


def scene_annotations(spec: SceneSpec, scene_id: str, split: str, pred_boxes: np.ndarray | None = None,
                      seed: int = 0) -> dict[Task, list[dict[str, Any]]]:
    """Templated annotations of one scene for every task (upstream field names and templates)."""
    rng = np.random.default_rng([seed, 13])
    video = f"scannet/{scene_id}"
    objs = list(spec.objects)
    out: dict[Task, list[dict[str, Any]]] = {t: [] for t in Task}

    def item(task: Task, ident: Any, human: str, answer: str, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        dataset = "scanQA" if task is Task.SCANQA else task.value
        return {"id": ident, "video": video,
                "conversations": [{"value": human, "from": "human"}, {"value": answer, "from": "gpt"}],
                "metadata": {"dataset": dataset, **meta}, **extra}

    for k, o in enumerate(objs):
        qid = f"{split}-{scene_id}-{2 * k}"
        out[Task.SCANQA].append(item(Task.SCANQA, f"scanqa_{qid}_0", human_turn(Task.SCANQA, question=f"What colour is the {o.label}?"),
                                     o.colour, {"question_type": "unknow"}))
        qid = f"{split}-{scene_id}-{2 * k + 1}"
        out[Task.SCANQA].append(item(Task.SCANQA, f"scanqa_{qid}_0", human_turn(Task.SCANQA, question=f"What is the {o.colour} object?"),
                                     o.label, {"question_type": "unknow"}))
        anchor = objs[(k + 1) % len(objs)]
        situation = f"I am standing next to the {anchor.label}."
        for j, (question, answer) in enumerate((
            (f"What colour is the {o.label}?", o.colour),
            (f"Is the {o.label} {o.colour if rng.random() < 0.5 else anchor.colour}?", ""),
        )):
            if not answer:
                answer = "yes" if question.endswith(f" {o.colour}?") else "no"
            out[Task.SQA3D].append(item(Task.SQA3D, 0,
                                        human_turn(Task.SQA3D, situation=situation, question=question), answer,
                                        {"question_type": sqa3d_question_type(question)}))
        desc = f"the {o.colour} {o.label}."
        out[Task.SCANREFER].append(item(Task.SCANREFER, len(out[Task.SCANREFER]), human_turn(Task.SCANREFER, description=desc),
                                        "<ground>", {"question_type": "unique", "ann_id": 0, "object_id": o.id}, box=_box(o)))
        out[Task.MULTI3DREFER].append(item(Task.MULTI3DREFER, len(out[Task.MULTI3DREFER]),
                                           human_turn(Task.MULTI3DREFER, description=desc), "<ground>",
                                           {"question_type": "st_wo_d", "ann_id": 0, "object_id": [o.id]}, box=[_box(o)]))
        caption = f"a {o.colour} {o.label}."
        box_input: list[float] | None = _box(o)
        if split != "train" and pred_boxes is not None:
            ious = iou_matrix(np.asarray([_box(o)]), pred_boxes)[0]
            best = int(np.argmax(ious))
            box_input = [float(v) for v in pred_boxes[best]] if ious[best] >= 0.5 else None
        extra: dict[str, Any] = {"box_input": box_input, "gt_box": _box(o)}
        if split != "train":
            extra["annotations"] = [caption]
        out[Task.SCAN2CAP].append(item(Task.SCAN2CAP, len(out[Task.SCAN2CAP]), human_turn(Task.SCAN2CAP), caption,
                                       {"question_type": "unique", "ann_id": 0, "object_id": o.id}, **extra))
    round_objs = [o for o in objs if o.shape in ROUND_SHAPES]
    qtype = "zt_wo_d" if not round_objs else ("st_wo_d" if len(round_objs) == 1 else "mt")
    out[Task.MULTI3DREFER].append(item(Task.MULTI3DREFER, len(out[Task.MULTI3DREFER]),
                                       human_turn(Task.MULTI3DREFER, description="all the round objects."), "<ground>",
                                       {"question_type": qtype, "ann_id": 0, "object_id": [o.id for o in round_objs]},
                                       box=[_box(o) for o in round_objs]))
    absent = [c for c in COLOURS if c not in {o.colour for o in objs}]
    if absent:
        colour = absent[int(rng.integers(len(absent)))]
        out[Task.MULTI3DREFER].append(item(Task.MULTI3DREFER, len(out[Task.MULTI3DREFER]),
                                           human_turn(Task.MULTI3DREFER, description=f"the {colour} objects."), "<ground>",
                                           {"question_type": "zt_wo_d", "ann_id": 0, "object_id": []}, box=[]))
    return out


def make_benchmark(out_dir: str | Path, scenes: int = 8, seed: int = 0, frames_per_scene: int = 24, width: int = 320,
                   height: int = 240, val_fraction: float = 0.25, max_frames: int = 32, progress: bool = False) -> dict[str, Any]:
    """Write the benchmark (see the module docstring); returns benchmark.json's content."""
    if scenes < 2:
        raise ValueError(f"--scenes must be >= 2 (at least one training and one validation scene), got {scenes}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    t0 = time.perf_counter()
    n_val = min(scenes - 1, max(1, int(round(scenes * val_fraction))))
    posed = out / "posed_images"
    gt: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    pred: dict[str, np.ndarray] = {}
    anns: dict[str, dict[Task, list[dict[str, Any]]]] = {"train": {t: [] for t in Task}, "val": {t: [] for t in Task}}
    scene_ids = []
    for i in range(scenes):
        split = "val" if i >= scenes - n_val else "train"
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] % 1_000_000)
        scene_id = f"scene{i:04d}_00"
        scene_ids.append(scene_id)
        spec = make_scene(scene_seed)
        write_synthetic_scene(posed / scene_id, scene_seed, num_frames=frames_per_scene, width=width, height=height, scene=spec)
        gt[split][scene_id] = np.asarray([_box(o) for o in spec.objects])
        pred_boxes = noisy_boxes(spec, scene_seed) if split == "val" else None
        if pred_boxes is not None:
            pred[scene_id] = pred_boxes
        for task, items in scene_annotations(spec, scene_id, split, pred_boxes, scene_seed).items():
            anns[split][task].extend(items)
    meta = out / "metadata"
    write_box_file(meta / "scannet_train_gt_box.json", gt["train"])
    write_box_file(meta / "scannet_val_gt_box.json", gt["val"])
    write_box_file(meta / "scannet_val_pred_box.json", pred)
    t_frames = time.perf_counter()
    prepare_frames(posed, meta / "scannet_select_frames.json", scene_ids, job=FramesJob(str(posed), max_frames=max_frames),
                   progress=progress)
    t_frames = time.perf_counter() - t_frames
    processed = out / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for split, by_task in anns.items():
        for task, items in by_task.items():
            for j, it in enumerate(items):  # ids unique per file, as upstream's running index
                if task is not Task.SCANQA:
                    it["id"] = j
            (processed / ANNOTATION_FILES[task].format(split=split)).write_text(json.dumps(items), encoding="utf-8")
            counts.setdefault(split, {})[task.value] = len(items)
    yaml_lines = ["datasets:"] + [
        f"  - json_path: processed/{ANNOTATION_FILES[t].format(split='train')}\n    sampling_strategy: \"all\"" for t in Task
    ]
    (out / "multi.yaml").write_text("\n".join(yaml_lines) + "\n", encoding="utf-8")
    info: dict[str, Any] = {
        "generator": "video3dllm_training.synthetic_benchmark",
        "seed": seed,
        "scenes": {"train": sorted(gt["train"]), "val": sorted(gt["val"])},
        "frames_per_scene": frames_per_scene,
        "image_size": [width, height],
        "counts": counts,
        "frames_file_s": round(t_frames, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    (out / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
