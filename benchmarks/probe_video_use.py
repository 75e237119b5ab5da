"""Does the decoder read the video? The same questions asked with another room's video.

Video-3D LLM's decoder is meant to read the position-aware video tokens: the "no object" score, a
relation's landmark, a caption's colour and a count are all in the video and nowhere else. This script
runs a checkpoint over the rooms of one split twice - once with each room's own keyframes (4 max-coverage
frames, as evaluation) and once with the keyframes of another room (the next room of the benchmark in
sorted order, from any split) - with everything else the room's own: the prompt, and for grounding the
candidate boxes (ground truth) and their object features, computed from the room's own frames. A
decoder that reads the video changes its answers when the video changes; one that does not, does not.

* Video token spread: how far each room's pooled, projected video tokens lie from their mean (the content
  the decoder could read), next to the norm of the 3D position embedding added to them (mean over rooms).
* ScanRefer: accuracy with the eval rule (argmax, no-object fallback), own video and other room's video,
  and how many descriptions changed their chosen box.
* ScanQA, SQA3D, Scan2Cap: teacher-forced on the reference answer (the eval prompt, Scan2Cap's box
  centre at ``<coord>``): the answer's cross-entropy per token, and how often the answer's first word
  (Scan2Cap: its colour, the word after "a") is the argmax, own and other room's video.

    python benchmarks/probe_video_use.py --benchmark default_model_work/bench \\
        --model shipped=video3dllm_core/default_model [--model NAME=CHECKPOINT ...] [--split val]

One core: ~2 min per model on the validation rooms of the default-model recipe's benchmark. Results:
docs/training.md, "The decoder does not read the video".
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.model import Video3DLLM  # noqa: E402
from video3dllm_core.model.grounding import select_scanrefer  # noqa: E402
from video3dllm_core.model.modeling import VisualFeatures  # noqa: E402
from video3dllm_core.model.objects import ObjectFeatures  # noqa: E402
from video3dllm_core.model.prompts import Task, build_input_ids  # noqa: E402
from video3dllm_training.data import SceneStore, load_box_file, load_frames_file  # noqa: E402
from video3dllm_training.data.annotations import load_annotations  # noqa: E402

ANSWER_TASKS = (Task.SCANQA, Task.SQA3D, Task.SCAN2CAP)
FRAMES = 4


@dataclass
class Swap:
    """What one model did with each room's own video and with another room's."""

    ground_own: list[bool] = field(default_factory=list)  # ScanRefer: right box
    ground_other: list[bool] = field(default_factory=list)
    ground_changed: list[bool] = field(default_factory=list)  # chosen box differs
    answer_ce: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # task: (own, other)
    first_word: dict[str, tuple[list[bool], list[bool]]] = field(default_factory=dict)
    token_spread: list[float] = field(default_factory=list)  # per room: pooled tokens' mean distance from their mean
    pe_norm: list[float] = field(default_factory=list)  # per room: mean norm of the tokens' 3D position embedding


def token_spread(visual: VisualFeatures) -> tuple[float, float]:
    """(how much a room's video tokens differ from one another: the mean distance of its pooled, projected
    patch features from their mean, the mean norm of the 3D position embedding added to them). The
    decoder sees their sum; content that is a few per cent of the embedding is not there to read."""
    pooled = visual.pooled.flatten(0, -2).float()
    spread = (pooled - pooled.mean(0)).norm(dim=-1).mean()
    return float(spread), float(visual.position_embedding.flatten(0, -2).float().norm(dim=-1).mean())


def other_rooms(bench: Path) -> dict[str, str]:
    """Each room of the benchmark and the room whose video stands in for its own (the next one, sorted)."""
    rooms = sorted(p.name for p in (bench / "posed_images").iterdir() if p.is_dir())
    if len(rooms) < 2:
        raise SystemExit(f"{bench / 'posed_images'}: {len(rooms)} room(s); swapping videos needs at least 2")
    return {room: rooms[(k + 1) % len(rooms)] for k, room in enumerate(rooms)}


def answer_span(model: Video3DLLM, prompt_ids: list[int], answer: str) -> tuple[list[int], list[int]]:
    """(the prompt followed by the answer and ``<|im_end|>``, the answer's token ids + ``<|im_end|>``): the
    sequence to teacher-force and the targets of its last ``len(targets)`` next-token predictions."""
    answer_ids = list(model.tokenizer(answer, add_special_tokens=False).input_ids)
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = answer_ids + [int(im_end)]
    return list(prompt_ids) + targets, targets


def teacher_forced(model: Video3DLLM, ids: list[int], targets: list[int], visual: VisualFeatures,
                   coord_xyz: list[float] | None, word: int = 0) -> tuple[float, bool]:
    """(mean cross-entropy of ``targets`` given everything before them, whether ``targets[word]`` is the argmax)."""
    merged = model.build_inputs_embeds(ids, visual, coord_xyz=coord_xyz)
    hidden = model.run_decoder(merged).hidden
    logits = model.logits(hidden[merged.length - len(targets) - 1: merged.length - 1]).float()
    target = torch.tensor(targets)
    return float(F.cross_entropy(logits, target)), bool(int(torch.argmax(logits[word])) == targets[word])


@torch.no_grad()
def swap_test(model: Video3DLLM, bench: Path, split: str, limit: int | None = None,
              others: dict[str, str] | None = None) -> Swap:
    """Every ScanRefer description and text question of ``split`` (the first ``limit`` of each task),
    asked with each room's own video and with ``others[room]``'s (default: :func:`other_rooms`)."""
    others = others if others is not None else other_rooms(bench)
    processed, meta = bench / "processed", bench / "metadata"
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(meta / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    visuals: dict[str, VisualFeatures] = {}

    def visual_of(room: str) -> VisualFeatures:
        if room not in visuals:
            frames = store.frames(room, "mc", FRAMES)
            visuals[room] = model.encode_frames(np.stack([f.crop_rgb for f in frames]),
                                                np.stack([f.world_coords for f in frames]),
                                                np.stack([f.patch_world_coords for f in frames]))
        return visuals[room]

    newline = model.config.prompt_newline_after_image
    out = Swap()
    boxes = load_box_file(meta / f"scannet_{split}_gt_box.json")
    objects_of: dict[str, ObjectFeatures] = {}  # each room's candidates once, however many descriptions
    descriptions = load_annotations(processed / f"scanrefer_vg_{split}_llava_style.json", tasks=["scanrefer"])
    for ann in descriptions[:limit]:
        if ann.scene_id not in objects_of:
            objects_of[ann.scene_id] = model.object_features(visual_of(ann.scene_id), boxes[ann.scene_id])
        objects = objects_of[ann.scene_id]
        ids = build_input_ids(model.tokenizer, ann.task, ann.human, newline_after_image=newline).input_ids
        chosen = []
        for room in (ann.scene_id, others[ann.scene_id]):
            scores = model.ground(model.build_inputs_embeds(ids, visual_of(room)), objects).scores
            chosen.append(select_scanrefer(scores)[0])
        out.ground_own.append(chosen[0] in ann.object_ids)
        out.ground_other.append(chosen[1] in ann.object_ids)
        out.ground_changed.append(chosen[0] != chosen[1])
    for task in ANSWER_TASKS:
        ce: tuple[list[float], list[float]] = ([], [])
        first: tuple[list[bool], list[bool]] = ([], [])
        for ann in load_annotations(processed / f"{task.value}_{split}_llava_style.json", tasks=[task.value])[:limit]:
            coord = None
            if task is Task.SCAN2CAP:
                if ann.box_input is None:
                    continue  # no box given: eval answers the empty caption
                coord = [float(v) for v in ann.box_input[:3]]
            prompt = build_input_ids(model.tokenizer, task, ann.human, newline_after_image=newline).input_ids
            ids, targets = answer_span(model, list(prompt), ann.answer)
            for k, room in enumerate((ann.scene_id, others[ann.scene_id])):
                loss, right = teacher_forced(model, ids, targets, visual_of(room), coord,
                                             word=1 if task is Task.SCAN2CAP else 0)
                ce[k].append(loss)
                first[k].append(right)
        out.answer_ce[task.value], out.first_word[task.value] = ce, first
    for room in sorted({a.scene_id for a in descriptions}):
        spread, pe = token_spread(visual_of(room))
        out.token_spread.append(spread)
        out.pe_norm.append(pe)
    return out


def table(results: list[tuple[str, Swap]]) -> str:
    def pct(values: list[bool]) -> str:
        return f"{100 * float(np.mean(values)):.1f}" if values else "-"

    def mean(values: list[float]) -> str:
        return f"{float(np.mean(values)):.3f}" if values else "-"

    tasks = [t.value for t in ANSWER_TASKS]
    head = ["model", "video token spread / 3D PE norm", "ScanRefer acc: own video / other room's", "choices changed"]
    head += [f"{t} answer CE: own / other" for t in tasks]
    head += [f"{t} {'colour' if t == Task.SCAN2CAP.value else 'first'} word: own / other" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in results:
        cells = [name, f"{mean(s.token_spread)} / {mean(s.pe_norm)}", f"{pct(s.ground_own)} / {pct(s.ground_other)}",
                 pct(s.ground_changed)]
        cells += [f"{mean(s.answer_ce[t][0])} / {mean(s.answer_ce[t][1])}" for t in tasks]
        cells += [f"{pct(s.first_word[t][0])} / {pct(s.first_word[t][1])}" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N items of each task (default all)")
    args = p.parse_args(argv)
    models = [spec.partition("=") for spec in args.model]
    for spec, (name, _, path) in zip(args.model, models):
        if not name or not path:
            raise SystemExit(f"--model {spec!r}: expected NAME=CHECKPOINT")
    bench = Path(args.benchmark)
    others = other_rooms(bench)
    results = []
    for name, _, path in models:
        model = Video3DLLM.from_pretrained(path, device="cpu")
        model.eval()
        results.append((name, swap_test(model, bench, args.split, args.limit, others)))
    n = results[0][1]
    counts = ", ".join([f"scanrefer {len(n.ground_own)}"] + [f"{t} {len(n.answer_ce[t][0])}" for t in n.answer_ce])
    print(f"{args.split} rooms, each asked with its own video and with the next room's (values x100, CE in nats; {counts})")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
