"""Benchmark evaluation behind `video3dllm eval TASK`: answers over a split, then the metrics.

Generation follows the upstream eval scripts (`llava/eval/model_*.py`): the eval-time prompt ids
(`prompts.build_input_ids`), greedy decoding up to `max_new_tokens` (512 upstream), the grounding
head with the ScanRefer fallback and the Multi3DRefer running-softmax rule, Scan2Cap at the centre of
`box_input` (the matched detector box; none -> empty caption). ScanQA questions are answered once
and scored against all their answers (upstream's file has one entry per answer).

Batching: questions are grouped by scene (stable order) into chunks of `batch_size`; a chunk's
frames are read and encoded once and the decoder's prefix (system prompt + image block) is filled
once (`Video3DLLM.prefill_prefix`); each question then runs only its own tokens on a copy of that
cache. This is where the time goes for many questions per scene (the model's API decodes one
sequence at a time, so there is no padded multi-sequence decoding).

Answers go to a JSONL file, one line per question, flushed as they come; a rerun skips every id
already in the file, so an interrupted evaluation resumes where it stopped. Metrics are computed
from the whole file (`video3dllm_training.metrics`).
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from video3dllm_core.model import Video3DLLM, select_multi3drefer, select_scanrefer
from video3dllm_core.model.listener_decoding import ListenerDecoding, resolve_caption_decoding
from video3dllm_core.model.prompts import Task, build_input_ids, human_turn, parse_task
from video3dllm_training.data.annotations import Annotation, load_annotations
from video3dllm_training.data.dataset import DatasetConfig, Video3DDataset

__all__ = ["EvalConfig", "EvalResult", "evaluate", "generate_answers", "read_answers", "compute_metrics", "unique_questions"]


@dataclass
class EvalConfig:
    """Settings of one evaluation run (the `video3dllm eval` options)."""

    task: str
    model: str
    annotations: str
    posed_images: str
    answers: str
    boxes: str | None = None
    frames_file: str | None = None
    frame_strategy: str = "uniform"
    frames_upbound: int = 32
    embodiedscan: list[str] | None = None
    trust_pickle: bool = False
    metrics_out: str | None = None
    batch_size: int = 32
    max_new_tokens: int = 512
    num_beams: int = 1
    caption_decoding: str = "checkpoint"  # Scan2Cap: "checkpoint" (its generation_config), "greedy" or "listener"
    limit: int | None = None
    device: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    newline_after_image: bool | None = None  # "\n" after the image placeholder; None: the model's config (prompt_newline_after_image)
    meteor: bool = True
    progress: bool = True


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    answered: int  # questions answered in this run
    skipped: int  # questions already in the answers file
    total: int  # records in the answers file
    seconds: float
    seconds_per_question: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """Records of an answers JSONL (a partly written last line, from an interruption, is dropped)."""
    p = Path(path)
    if not p.is_file():
        return []
    records = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                p.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
                break
            raise ValueError(f"{p}: line {i + 1} is not JSON; the answers file is corrupt (remove it to start over)") from None
    return records


def unique_questions(annotations: Sequence[Annotation]) -> list[Annotation]:
    """ScanQA: one annotation per question (the others only add reference answers); else as given."""
    seen: OrderedDict[str, Annotation] = OrderedDict()
    for ann in annotations:
        key = ann.question_id
        if key not in seen:
            seen[key] = ann
    return list(seen.values())


def _answers_by_question(annotations: Sequence[Annotation]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for ann in annotations:
        refs.setdefault(ann.question_id, [])
        for r in ann.references:
            if r not in refs[ann.question_id]:
                refs[ann.question_id].append(r)
    return refs


def _box_list(box: Any) -> list[float]:
    return [float(v) for v in np.asarray(box, dtype=np.float64).reshape(6)]


def generate_answers(model: Video3DLLM, dataset: Video3DDataset, annotations: Sequence[Annotation], answers_path: str | Path,
                     batch_size: int = 32, max_new_tokens: int = 512, num_beams: int = 1,
                     progress: bool = True, listener: ListenerDecoding | None = None) -> tuple[int, int, float]:
    """Answer every annotation not yet in `answers_path` (see the module docstring).

    `listener`: Scan2Cap captions by the speaker-listener search (`model.listener_decoding`), listening
    over the scene's candidate boxes when the dataset has a box file, else over the input box alone.
    Returns (answered now, skipped as already answered, seconds spent in the model).
    """
    if listener is not None and num_beams > 1:
        raise ValueError("listener caption decoding is a beam search of its own; use num_beams=1 with it")
    path = Path(answers_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {str(r.get("sample_id")) for r in read_answers(path)}
    todo = [a for a in annotations if a.question_id not in done]
    skipped = len(annotations) - len(todo)
    refs = _answers_by_question(dataset.annotations)
    by_scene: OrderedDict[str, list[Annotation]] = OrderedDict()
    for ann in todo:
        by_scene.setdefault(ann.scene_id, []).append(ann)
    cfg = dataset.config
    tokenizer = model.tokenizer
    model_seconds = 0.0
    bar = tqdm(total=len(todo), desc="answering", unit="q", disable=not progress, file=sys.stderr)
    with open(path, "a", encoding="utf-8") as out:
        for scene_id, anns in by_scene.items():
            for start in range(0, len(anns), max(1, batch_size)):
                chunk = anns[start:start + max(1, batch_size)]
                frames = dataset.scenes.frames(scene_id, cfg.frame_strategy, cfg.frames_upbound)
                t0 = time.perf_counter()
                with torch.no_grad():
                    visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                                 np.stack([f.patch_world_coords for f in frames]))
                    prompts = [dataset.prompt(a) for a in chunk]
                    prefix = model.prefill_prefix(visual, prompts[0].input_ids) if num_beams == 1 else None
                    objects = None
                    if any(a.task.is_grounding for a in chunk):
                        objects = model.object_features(visual, dataset.candidate_boxes(chunk[0]))
                model_seconds += time.perf_counter() - t0
                for ann, prompt in zip(chunk, prompts):
                    t0 = time.perf_counter()
                    record = _answer_one(model, tokenizer, ann, prompt, visual, prefix, objects, dataset, refs,
                                         max_new_tokens, num_beams, listener)
                    model_seconds += time.perf_counter() - t0
                    record["frames"] = [str(f.name) for f in frames]
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    bar.update(1)
    bar.close()
    return len(todo), skipped, model_seconds


@torch.no_grad()
def _answer_one(model: Video3DLLM, tokenizer: Any, ann: Annotation, prompt: Any, visual: Any, prefix: Any, objects: Any,
                dataset: Video3DDataset, refs: dict[str, list[str]], max_new_tokens: int, num_beams: int,
                listener: ListenerDecoding | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "sample_id": ann.question_id,
        "task": ann.task.value,
        "scene_id": ann.scene_id,
        "question_type": ann.question_type,
        "prompt": ann.human,
    }
    upstream_type = ann.raw.get("metadata", {}).get("upstream_question_type")
    if upstream_type is not None:  # the synthetic benchmark keeps upstream's type beside its own
        record["upstream_question_type"] = str(upstream_type)
    if ann.task.is_grounding:
        merged = model.build_inputs_embeds(prompt.input_ids, visual)
        scores = model.ground(merged, objects, prefix=prefix).scores
        boxes = dataset.candidate_boxes(ann)
        if ann.task is Task.SCANREFER:
            index, fell_back = select_scanrefer(scores)
            record.update(pred_response=_box_list(boxes[index]), pred_index=index, fell_back=fell_back,
                          gt_response=_box_list(ann.boxes[0]) if ann.boxes else None)
        else:
            chosen = select_multi3drefer(scores)
            record.update(pred_response=[_box_list(boxes[i]) for i in chosen], pred_index=chosen,
                          gt_response=[_box_list(b) for b in ann.boxes])
        record["scores"] = [round(float(s), 6) for s in scores.tolist()]
        return record
    if ann.task is Task.SCAN2CAP and ann.box_input is None:
        record.update(pred_response="", pred_box=None, gt_response=list(ann.references),
                      gt_box=None if ann.gt_box is None else list(ann.gt_box))
        return record
    coord = None if ann.task is not Task.SCAN2CAP else list(ann.box_input[:3])  # type: ignore[index]
    merged = model.build_inputs_embeds(prompt.input_ids, visual, coord_xyz=coord)
    if listener is not None and ann.task is Task.SCAN2CAP:
        generated = _caption_with_listener(model, dataset, ann, merged, visual, prefix, listener, max_new_tokens)
    else:
        generated = model.generate(merged, max_new_tokens=max_new_tokens, num_beams=num_beams, prefix=prefix)
    text = tokenizer.decode(generated.token_ids, skip_special_tokens=True).strip()
    record["pred_response"] = text
    if ann.task is Task.SCANQA:
        record["gt_response"] = refs.get(ann.question_id, list(ann.references))
    elif ann.task is Task.SQA3D:
        record["gt_response"] = ann.answer
    else:
        record.update(gt_response=list(ann.references), pred_box=list(ann.box_input) if ann.box_input else None,
                      gt_box=None if ann.gt_box is None else list(ann.gt_box))
    return record


def listener_candidates(scene_boxes: np.ndarray | None, box_input: Sequence[float]) -> tuple[np.ndarray, int]:
    """The boxes a Scan2Cap caption's listener compares ([N, 6]) and the index of the input box among them:
    the scene's candidate boxes with the input box, which is appended unless one of them is it (within 1 mm)."""
    target = np.asarray(box_input, dtype=np.float64).reshape(1, 6)
    if scene_boxes is None or len(scene_boxes) == 0:
        return target, 0
    boxes = np.asarray(scene_boxes, dtype=np.float64).reshape(-1, 6)
    same = np.flatnonzero(np.abs(boxes - target).max(axis=1) <= 1e-3)
    if len(same):
        return boxes, int(same[0])
    return np.concatenate([boxes, target]), len(boxes)


def _caption_with_listener(model: Video3DLLM, dataset: Video3DDataset, ann: Annotation, merged: Any, visual: Any,
                           prefix: Any, listener: ListenerDecoding, max_new_tokens: int) -> Any:
    """A Scan2Cap caption by the speaker-listener search, the listener asked in the dataset's prompt layout."""
    scene_boxes = dataset.boxes.get(ann.scene_id) if dataset.boxes else None
    boxes, target = listener_candidates(scene_boxes, ann.box_input)  # type: ignore[arg-type]
    objects = model.object_features(visual, boxes)
    cfg = dataset.config

    def listener_ids(text: str) -> list[int]:
        human = human_turn(Task.SCANREFER, description=text)
        return build_input_ids(model.tokenizer, Task.SCANREFER, human, system=cfg.system,
                               newline_after_image=cfg.newline_after_image).input_ids

    return model.generate_with_listener(merged, visual, objects, target, listener_ids, listener,
                                        max_new_tokens=max_new_tokens, prefix=prefix, listener_prefix=prefix)


def compute_metrics(task: str | Task, records: Sequence[dict[str, Any]], meteor: bool = True) -> dict[str, Any]:
    """Benchmark metrics of an answers file's records (see video3dllm_training.metrics)."""
    from video3dllm_training.metrics import (
        multi3drefer_f1,
        scan2cap_metrics,
        scanqa_metrics,
        scanrefer_accuracy,
        sqa3d_metrics,
    )

    t = parse_task(task)
    rows = [r for r in records if r.get("task") == t.value]
    if not rows:
        raise ValueError(f"no {t.value} answers to score")
    qtypes = [str(r.get("question_type")) for r in rows]
    if t is Task.SCANREFER:
        missing = [r["sample_id"] for r in rows if r.get("gt_response") is None]
        if missing:
            raise ValueError(f"scanrefer answers without a ground-truth box (annotation field 'box'), e.g. {missing[0]}")
        return scanrefer_accuracy([r["pred_response"] for r in rows], [r["gt_response"] for r in rows], qtypes)
    if t is Task.MULTI3DREFER:
        return multi3drefer_f1([r["pred_response"] for r in rows], [r["gt_response"] for r in rows], qtypes)
    if t is Task.SCAN2CAP:
        missing = [r["sample_id"] for r in rows if r.get("gt_box") is None]
        if missing:
            raise ValueError(f"scan2cap answers without 'gt_box' in the annotation, e.g. {missing[0]}")
        return scan2cap_metrics([r["pred_response"] for r in rows], [r["gt_response"] for r in rows],
                                [r.get("pred_box") for r in rows], [r["gt_box"] for r in rows], meteor=meteor)
    if t is Task.SCANQA:
        return scanqa_metrics([r["pred_response"] for r in rows], [r["gt_response"] for r in rows], meteor=meteor)
    # SQA3D reports EM per upstream type (what/is/how/can/which/others).
    sqa_types = [str(r.get("upstream_question_type", r.get("question_type"))) for r in rows]
    return sqa3d_metrics([r["pred_response"] for r in rows], [r["gt_response"] for r in rows], sqa_types)


def evaluate(cfg: EvalConfig, model: Video3DLLM | None = None) -> EvalResult:
    """Answer the split (resuming an existing answers file), then score every answer in the file."""
    from video3dllm_training.data import SceneStore, load_box_file, load_embodiedscan_infos, load_frames_file

    t_start = time.perf_counter()
    task = parse_task(cfg.task)
    annotations = load_annotations(cfg.annotations, tasks=[task])
    if not annotations:
        raise ValueError(f"{cfg.annotations} holds no {task.value} annotations (metadata.dataset)")
    questions = unique_questions(annotations)
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    if task.is_grounding and not cfg.boxes:
        raise ValueError(f"{task.value} needs candidate boxes: --boxes (e.g. scannet_val_pred_box.json)")
    if model is None:
        dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
        model = Video3DLLM.from_pretrained(cfg.model, device=cfg.device, dtype=dtype, attn_implementation=cfg.attn_implementation)
    model.eval()
    infos = load_embodiedscan_infos(cfg.embodiedscan, trust_pickle=cfg.trust_pickle) if cfg.embodiedscan else None
    store = SceneStore(cfg.posed_images, infos=infos, frames_file=load_frames_file(cfg.frames_file) if cfg.frames_file else None,
                       ingest_config=model.ingest_config())
    boxes = load_box_file(cfg.boxes) if cfg.boxes else None
    dataset = Video3DDataset(annotations, store, model.tokenizer, boxes,
                             DatasetConfig(frame_strategy=cfg.frame_strategy, frames_upbound=cfg.frames_upbound, training=False,
                                           spatial_instruction=False, boxes_are_gt=False,
                                           newline_after_image=model.config.prompt_newline_after_image
                                           if cfg.newline_after_image is None else cfg.newline_after_image))
    listener = resolve_caption_decoding(cfg.caption_decoding, model.generation_config) if task is Task.SCAN2CAP else None
    answered, skipped, model_s = generate_answers(model, dataset, questions, cfg.answers, cfg.batch_size, cfg.max_new_tokens,
                                                  cfg.num_beams, cfg.progress, listener)
    records = read_answers(cfg.answers)
    wanted = {q.question_id for q in questions}
    records = [r for r in records if str(r.get("sample_id")) in wanted]
    metrics = compute_metrics(task, records, meteor=cfg.meteor)
    result = EvalResult(metrics=metrics, answered=answered, skipped=skipped, total=len(records),
                        seconds=time.perf_counter() - t_start,
                        seconds_per_question=model_s / answered if answered else None)
    out = Path(cfg.metrics_out) if cfg.metrics_out else Path(cfg.answers).with_suffix(".metrics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": task.value, "metrics": metrics, "questions": len(records), "answered_now": answered,
                               "skipped": skipped, "seconds": round(result.seconds, 3),
                               "model_seconds_per_question": result.seconds_per_question,
                               "frame_strategy": cfg.frame_strategy, "frames_upbound": cfg.frames_upbound,
                               "caption_decoding": None if listener is None else {"mode": "listener", **listener.to_dict()},
                               "model": str(cfg.model)}, indent=2) + "\n", encoding="utf-8")
    result.extra["metrics_file"] = str(out)
    return result
