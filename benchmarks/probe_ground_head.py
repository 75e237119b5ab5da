"""Where grounding loses the colour: the `<ground>` state, the object feature, or the head.

A ScanRefer description is grounded by the head comparing two things: the decoder's final hidden
state at `<ground>` (the query) and one feature per candidate box (the object: its mean projected
appearance + the centre's sine embedding + the box size embedding). This script takes a checkpoint,
caches both for every ScanRefer description of the train and validation rooms (GT boxes,
max-coverage keyframes, the eval prompt), and asks two questions on the cache:

1. Which part carries the colour? Linear probes (standardised, ``probe_object_features.linear_probe``)
   for the colour word of the description from the `<ground>` state and from the mean of the
   decoder's final states over the text after the video, and for the target's colour from its
   appearance part and from the whole object feature (targets seen in the keyframes).
2. What could a head do with it? The checkpoint's own head on the validation rooms, then fresh heads
   of the same form (Linear -> ReLU -> LayerNorm -> Linear on both sides, cosine, InfoNCE at T=0.07)
   trained alone on the train rooms' cache, the decoder and tower fixed, with four object inputs:
   ``sum`` (the model's own feature), ``sum, appearance standardised`` (per dimension, with the train
   objects' mean and deviation), ``concat, appearance standardised`` (appearance and position side by
   side) and ``oracle colour + label`` (one-hot colour and label from objects.json beside the position
   part: the ceiling when the object side is perfect).

    python benchmarks/probe_ground_head.py --benchmark default_model_work/bench \\
        --model default_model_work/ground_pe/checkpoint-3000 [--epochs 20] [--seeds 0,1]

One core: ~1.5 min to cache the 150-room benchmark of the default-model recipe, ~1 min per head and
seed (~9 min with the defaults). Results: docs/benchmarks.md, "Where grounding loses the colour".
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, also when loaded by path

from probe_object_features import linear_probe  # noqa: E402

from video3dllm_core.model import Video3DLLM  # noqa: E402
from video3dllm_training.data import SceneStore, load_box_file, load_frames_file  # noqa: E402
from video3dllm_training.data.annotations import load_annotations  # noqa: E402
from video3dllm_training.data.dataset import DatasetConfig, Video3DDataset  # noqa: E402
from video3dllm_training.loss import GROUND_TEMPERATURE  # noqa: E402
from video3dllm_training.relations import load_scene_objects  # noqa: E402

HEAD_INPUTS = ("sum", "sum, appearance standardised", "concat, appearance standardised", "oracle colour + label")


@dataclass
class Description:
    """One cached ScanRefer description: the head's two inputs and what objects.json says."""

    scene_id: str  # the room: its descriptions share appearance, position, seen, colours and labels
    question_type: str
    text: str
    targets: list[int]
    ground_state: np.ndarray  # [H] decoder's final hidden state at <ground>
    text_state: np.ndarray  # [H] mean final hidden state over the text after the video block
    appearance: np.ndarray  # [N, H] mean projected patch feature inside each box (0 when unseen)
    position: np.ndarray  # [N, H] centre embedding (+ box size embedding)
    seen: np.ndarray  # [N] bool: some patch of the keyframes lies inside the box
    colours: list[str]
    labels: list[str]
    own_scores: np.ndarray  # [N+1] the checkpoint's own head


def colour_word(text: str, colours: list[str]) -> str | None:
    """The first colour of ``colours`` named in the description (multi-word colours included)."""
    lowered = text.lower()
    found = [(m.start(), c) for c in colours for m in re.finditer(rf"\b{re.escape(c)}\b", lowered)]
    if not found:
        return None
    first = min(found)[0]
    return max((c for start, c in found if start == first), key=len)  # "light blue", not "blue"


def description_rows(model: Video3DLLM, bench: Path, split: str, frames_upbound: int) -> list[Description]:
    """Cache every ScanRefer description of the split (GT boxes, max-coverage keyframes, eval prompt)."""
    meta = bench / "metadata"
    annotations = load_annotations(str(bench / "processed" / f"scanrefer_vg_{split}_llava_style.json"))
    store = SceneStore(str(bench / "posed_images"), frames_file=load_frames_file(str(meta / "scannet_select_frames.json")),
                       ingest_config=model.ingest_config())
    boxes = load_box_file(str(meta / f"scannet_{split}_gt_box.json"))
    dataset = Video3DDataset(annotations, store, model.tokenizer, boxes,
                             DatasetConfig(frame_strategy="mc", frames_upbound=frames_upbound, training=False,
                                           spatial_instruction=False, boxes_are_gt=False,
                                           newline_after_image=model.config.prompt_newline_after_image))
    by_scene: dict[str, list] = {}
    for ann in annotations:
        by_scene.setdefault(ann.scene_id, []).append(ann)
    rows: list[Description] = []
    with torch.no_grad():
        for scene_id, anns in by_scene.items():
            objects = load_scene_objects(bench / "posed_images", scene_id, len(boxes[scene_id]))
            frames = store.frames(scene_id, "mc", frames_upbound)
            visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                         np.stack([f.patch_world_coords for f in frames]))
            feats = model.object_features(visual, dataset.candidate_boxes(anns[0]))
            appearance = feats.before_pe.float().numpy()
            position_pe = feats.center_pe.float()
            if feats.size_embedding is not None:
                position_pe = position_pe + feats.size_embedding.float()
            position = position_pe.numpy()
            seen = feats.patch_mask.reshape(len(appearance), -1).any(-1).numpy()
            prompts = [dataset.prompt(a) for a in anns]
            prefix = model.prefill_prefix(visual, prompts[0].input_ids)
            for ann, prompt in zip(anns, prompts):
                merged = model.build_inputs_embeds(prompt.input_ids, visual)
                decoded = model.run_decoder(merged, prefix)
                ground_state = decoded.hidden_at(model.ground_position(merged))[None]
                assert model.ground_head is not None  # checked when the model was loaded
                own = model.ground_head(feats.features, ground_state, **model.ground_inputs(merged, feats)).scores
                rows.append(Description(
                    scene_id=scene_id, question_type=str(ann.question_type), text=ann.human.splitlines()[-1],
                    targets=list(ann.object_ids),
                    ground_state=ground_state[0].float().numpy(), text_state=decoded.hidden.mean(0).float().numpy(),
                    appearance=appearance, position=position, seen=seen,
                    colours=[o.colour for o in objects], labels=[o.label for o in objects], own_scores=own.float().numpy()))
    return rows


def _mlp(width_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width), nn.ReLU(), nn.LayerNorm(width), nn.Linear(width, width))


class ProbeHead(nn.Module):
    """A grounding head of the checkpoint's form over one of ``HEAD_INPUTS``."""

    def __init__(self, kind: str, train: list[Description]) -> None:
        super().__init__()
        if kind not in HEAD_INPUTS:
            raise ValueError(f"head input {kind!r}: expected one of {HEAD_INPUTS}")
        self.kind = kind
        width = train[0].ground_state.shape[0]
        rooms = {r.scene_id: r for r in train}.values()  # each room's objects once, however many descriptions
        seen = np.concatenate([r.appearance[r.seen] for r in rooms])
        self.mean = torch.tensor(seen.mean(0), dtype=torch.float32)
        self.std = torch.tensor(seen.std(0) + 1e-6, dtype=torch.float32)
        self.colours = sorted({c for r in train for c in r.colours})
        self.labels = sorted({label for r in train for label in r.labels})
        width_in = 2 * width if kind.startswith("concat") else width
        self.obj, self.query = _mlp(width_in, width), _mlp(width, width)
        self.zero_target = nn.Parameter(torch.randn(width_in) * 0.02)

    def object_input(self, row: Description) -> torch.Tensor:
        appearance = torch.tensor(row.appearance, dtype=torch.float32)
        position = torch.tensor(row.position, dtype=torch.float32)
        if self.kind == "sum":
            return appearance + position
        standardised = (appearance - self.mean) / self.std * torch.tensor(row.seen, dtype=torch.float32)[:, None]
        if self.kind == "sum, appearance standardised":
            return standardised + position
        if self.kind == "concat, appearance standardised":
            return torch.cat([standardised, position], dim=-1)
        half = position.shape[1] // 2
        if len(self.colours) + len(self.labels) > half:
            raise ValueError(f"oracle input: {len(self.colours)} colours + {len(self.labels)} labels do not fit in {half} dims")
        one_hot = torch.zeros(len(row.colours), half)
        for i, (colour, label) in enumerate(zip(row.colours, row.labels)):
            if colour in self.colours:
                one_hot[i, self.colours.index(colour)] = 1.0
            if label in self.labels:
                one_hot[i, len(self.colours) + self.labels.index(label)] = 1.0
        return torch.cat([one_hot, position[:, :half]], dim=-1)

    def forward(self, row: Description) -> torch.Tensor:
        candidates = torch.cat([self.object_input(row), self.zero_target[None]], dim=0)
        query = self.query(torch.tensor(row.ground_state, dtype=torch.float32)[None])
        return (F.normalize(self.obj(candidates)) * F.normalize(query)).sum(-1)


def train_head(kind: str, train: list[Description], epochs: int, seed: int, batch: int = 32, lr: float = 1e-3) -> ProbeHead:
    """Fit a fresh ``ProbeHead`` on the cached train descriptions with the training's InfoNCE loss."""
    torch.manual_seed(seed)
    head = ProbeHead(kind, train)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = order.permutation(len(train))
        for start in range(0, len(train), batch):
            loss = torch.zeros(())
            for i in perm[start:start + batch]:
                logits = head(train[i]) / GROUND_TEMPERATURE
                loss = loss + torch.logsumexp(logits, 0) - torch.logsumexp(logits[train[i].targets], 0)
            optimiser.zero_grad()
            (loss / len(perm[start:start + batch])).backward()
            optimiser.step()
    return head


def accuracy(scores: list[np.ndarray], rows: list[Description], question_type: str | None = None) -> float:
    """ScanRefer accuracy with GT boxes: the argmax over the real candidates is a target (x100)."""
    hits = [int(np.argmax(s[:-1])) in r.targets for s, r in zip(scores, rows)
            if question_type is None or r.question_type == question_type]
    return 100.0 * float(np.mean(hits)) if hits else float("nan")


def head_scores(head: ProbeHead, rows: list[Description]) -> list[np.ndarray]:
    with torch.no_grad():
        return [head(r).numpy() for r in rows]


def colour_probes(train: list[Description], val: list[Description]) -> list[tuple[str, int, float]]:
    """(part, validation examples, probe accuracy x100) for the colour word and the target's colour."""
    colours = sorted({c for r in train for c in r.colours}, key=len, reverse=True)

    def probe(name: str, pairs: list[list[tuple[np.ndarray, str]]]) -> tuple[str, int, float]:
        (x_train, y_train), (x_val, y_val) = (zip(*split) for split in pairs)
        return name, len(pairs[1]), 100.0 * linear_probe(np.stack(x_train), list(y_train), np.stack(x_val), list(y_val))

    out = []
    for name, attr in (("`<ground>` state -> colour word", "ground_state"), ("mean text state -> colour word", "text_state")):
        out.append(probe(name, [[(getattr(r, attr), w) for r in rows if (w := colour_word(r.text, colours)) is not None]
                                for rows in (train, val)]))
    for name, whole in (("target appearance -> its colour", False), ("target object feature -> its colour", True)):
        out.append(probe(name, [[(r.appearance[t] + (r.position[t] if whole else 0.0), r.colours[t]) for r in rows
                                 for t in r.targets[:1] if r.seen[t]] for rows in (train, val)]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", required=True, help="checkpoint with a grounding head")
    p.add_argument("--frames-upbound", type=int, default=4, help="max-coverage keyframes per room (default 4)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of head-only training per head (default 20)")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds of each head (default 0,1)")
    p.add_argument("--inputs", default=";".join(HEAD_INPUTS), help="';'-separated subset of: " + "; ".join(HEAD_INPUTS))
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = [k.strip() for k in args.inputs.split(";") if k.strip()]
    unknown = [k for k in kinds if k not in HEAD_INPUTS]
    if unknown:
        raise SystemExit(f"--inputs {unknown}: expected a ';'-separated subset of {list(HEAD_INPUTS)}")
    torch.set_num_threads(1)
    bench = Path(args.benchmark)
    model = Video3DLLM.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    model.eval()
    if model.ground_head is None:
        raise SystemExit(f"--model {args.model}: this checkpoint has no grounding head")
    train = description_rows(model, bench, "train", args.frames_upbound)
    val = description_rows(model, bench, "val", args.frames_upbound)

    print(f"what carries the colour: linear probes, train rooms -> validation rooms ({len(train)} / {len(val)} "
          "ScanRefer descriptions); accuracy x100")
    print("| part -> target | validation examples | accuracy |\n| --- | --- | --- |")
    for name, count, acc in colour_probes(train, val):
        print(f"| {name} | {count} | {acc:.1f} |")

    own = [r.own_scores for r in val]
    seen = [r for r in val if r.seen[r.targets[0]]]
    unseen = [r for r in val if not r.seen[r.targets[0]]]
    print(f"\nthe checkpoint's own head on the validation rooms: {accuracy(own, val):.1f} % "
          f"(target seen in the keyframes: {accuracy([r.own_scores for r in seen], seen):.1f} % of {len(seen)}; "
          f"unseen: {accuracy([r.own_scores for r in unseen], unseen):.1f} % of {len(unseen)})")
    print(f"\nheads trained alone on the cached train rooms ({args.epochs} epochs, seeds {args.seeds}; mean over seeds; "
          "ScanRefer Acc with GT boxes x100)")
    print("| object input | train | validation | attribute | relation |\n| --- | --- | --- | --- | --- |")
    print(f"| the checkpoint's own head | {accuracy([r.own_scores for r in train], train):.1f} | {accuracy(own, val):.1f} | "
          f"{accuracy(own, val, 'attribute'):.1f} | {accuracy(own, val, 'relation'):.1f} |")
    for kind in kinds:
        cells = []
        for seed in seeds:
            head = train_head(kind, train, args.epochs, seed)
            scores_train, scores_val = head_scores(head, train), head_scores(head, val)
            cells.append([accuracy(scores_train, train), accuracy(scores_val, val),
                          accuracy(scores_val, val, "attribute"), accuracy(scores_val, val, "relation")])
        mean = np.nanmean(np.array(cells), axis=0)
        print(f"| {kind} | " + " | ".join(f"{v:.1f}" for v in mean) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
