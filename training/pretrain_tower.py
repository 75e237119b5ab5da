"""Pretrain the small model's vision tower on a synthetic benchmark: every patch learns its object's label and colour.

Why: the grounding head ranks candidate boxes by one feature each (upstream's ``patch14-pe``: the mean
projected patch feature inside the box plus the sine embedding of its centre). Linear probes
(`benchmarks/probe_object_features.py`) show that with a randomly initialised tower, even after both
training stages, that feature carries the colour (97-100 %) but hardly the category (13-17 %, majority
16 %): the language loss reaches the tower only through 36 pooled tokens and one mean per box. The
released model starts from SigLIP, whose patches already know what they show; the small model has no
such start, so this step gives it one on the benchmark's own train rooms - dense supervision, every
patch, from the exact object boxes the renderer wrote.

The targets come from geometry, as the object feature does: a patch belongs to the box holding the
most of its points when at least half of them (`min_inside_points`) lie inside, else to the
background class. Two linear heads on the tower output (label, colour) are trained with the tower by
cross-entropy, background patches down-weighted (they are ~90 % of all patches). Only the tower is
kept; the heads are thrown away. Validation rooms are measured, never trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.objects import min_inside_points, patch_inside_counts
from video3dllm_core.model.vision import pixel_values_from_crops

from .data import SceneStore, load_box_file
from .relations import load_scene_objects

__all__ = ["TowerPretrainConfig", "TowerPretrainResult", "patch_targets", "load_split", "pretrain_tower"]


@dataclass
class TowerPretrainConfig:
    """What `video3dllm pretrain-tower` runs (docs/training.md, "Vision tower pretraining")."""

    benchmark: str  # folder written by `video3dllm make-benchmark`
    model: str  # checkpoint whose tower is trained (e.g. from `video3dllm init-model`)
    output: str  # checkpoint folder written: the input checkpoint with the trained tower
    epochs: int = 20
    lr: float = 1e-3  # peak of a one-cycle schedule (5 % warm-up), AdamW, weight decay 0.01
    batch_size: int = 16  # frames per step
    background_weight: float = 0.2  # cross-entropy weight of the background class
    seed: int = 0
    eval_frames: int = 300  # train frames measured after every epoch (all validation frames are)


@dataclass
class TowerPretrainResult:
    output: Path
    classes: dict[str, list[str]]  # "label" / "colour" -> class names (background is the extra last class)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch


@dataclass
class _Split:
    crops: torch.Tensor  # [F, S, S, 3] uint8
    label: torch.Tensor  # [F, grid*grid] class index, len(labels) = background
    colour: torch.Tensor  # [F, grid*grid]

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def head(self, n: int) -> "_Split":
        return _Split(self.crops[:n], self.label[:n], self.colour[:n])


def patch_targets(world_coords: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, background: int,
                  patch_size: int, grid: int) -> torch.Tensor:
    """[V, S, S, 3] world points, [N, 6] boxes, [N] class per box -> [V, grid*grid] class per patch.

    A patch takes the class of the box holding most of its points if that box holds at least
    `min_inside_points(patch_size)` of them (the object feature's own selection rule), else `background`.
    """
    frames = world_coords.shape[0]
    if boxes.shape[0] == 0:
        return torch.full((frames, grid * grid), background, dtype=torch.long)
    counts = patch_inside_counts(world_coords, boxes, patch_size, grid)  # [N, V, grid, grid]
    best = counts.argmax(0)
    owned = counts.max(0).values >= min_inside_points(patch_size)
    return torch.where(owned, classes[best], torch.full_like(best, background)).flatten(1).long()


def load_split(model: Video3DLLM, benchmark: str | Path, split: str, labels: list[str] | None = None,
               colours: list[str] | None = None) -> tuple[_Split, list[str], list[str]]:
    """Every frame of the split's rooms, ingested as the model sees it, with per-patch label/colour targets.

    `labels` / `colours` fix the class lists (the train split's); when None they are the split's own, sorted.
    Objects of a class not in the lists count as background.
    """
    bench = Path(benchmark)
    meta = bench / "metadata"
    boxes_by_scene = load_box_file(str(meta / f"scannet_{split}_gt_box.json"))
    if not boxes_by_scene:
        raise ValueError(f"{meta}/scannet_{split}_gt_box.json lists no scenes")
    objects_by_scene = {sid: load_scene_objects(bench / "posed_images", sid, len(b))
                        for sid, b in boxes_by_scene.items()}
    if labels is None:
        labels = sorted({o.label for objs in objects_by_scene.values() for o in objs})
    if colours is None:
        colours = sorted({o.colour for objs in objects_by_scene.values() for o in objs})
    store = SceneStore(str(bench / "posed_images"), ingest_config=model.ingest_config())
    tower = model.vision_tower
    crops, label_rows, colour_rows = [], [], []
    for scene_id, boxes in boxes_by_scene.items():
        objects = objects_by_scene[scene_id]
        frames = store.ingested(scene_id, store.all_stems(scene_id))
        world = torch.from_numpy(np.stack([f.world_coords for f in frames]))
        box = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 6)
        lab = torch.tensor([labels.index(o.label) if o.label in labels else len(labels) for o in objects])
        col = torch.tensor([colours.index(o.colour) if o.colour in colours else len(colours) for o in objects])
        label_rows.append(patch_targets(world, box, lab, len(labels), tower.patch_size, tower.grid))
        colour_rows.append(patch_targets(world, box, col, len(colours), tower.patch_size, tower.grid))
        crops.append(torch.from_numpy(np.stack([f.crop_rgb for f in frames])))
    return _Split(torch.cat(crops), torch.cat(label_rows), torch.cat(colour_rows)), labels, colours


def _accuracy(model: Video3DLLM, head: torch.nn.Linear, data: _Split, n_labels: int, batch: int = 32) -> dict[str, float]:
    """Label / colour accuracy over object patches (background patches excluded)."""
    tower = model.vision_tower
    tower.eval()
    right_label = right_colour = total = 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            z_label, z_colour = _logits(model, head, data.crops[i:i + batch], n_labels)
            label, colour = data.label[i:i + batch], data.colour[i:i + batch]
            on_object = label < n_labels
            right_label += int((z_label.argmax(-1) == label)[on_object].sum())
            right_colour += int((z_colour.argmax(-1) == colour)[on_object].sum())
            total += int(on_object.sum())
    tower.train()
    return {"label": right_label / max(total, 1), "colour": right_colour / max(total, 1)}


def _logits(model: Video3DLLM, head: torch.nn.Linear, crops: torch.Tensor, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    tower = model.vision_tower
    pixels = pixel_values_from_crops(crops, tower.image_size, torch.device("cpu"), torch.float32)
    z = head(tower(pixels))
    return z[..., :n_labels + 1], z[..., n_labels + 1:]


def pretrain_tower(cfg: TowerPretrainConfig, log: Callable[[str], None] = print) -> TowerPretrainResult:
    """Train `cfg.model`'s vision tower on the benchmark's train frames; write the checkpoint to `cfg.output`."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs ({cfg.epochs}) and batch_size ({cfg.batch_size}) must be >= 1")
    start = time.time()
    torch.manual_seed(cfg.seed)
    model = Video3DLLM.from_pretrained(cfg.model, device="cpu", dtype=torch.float32)
    train, labels, colours = load_split(model, cfg.benchmark, "train")
    val, _, _ = load_split(model, cfg.benchmark, "val", labels, colours)
    log(f"frames: {len(train)} train, {len(val)} val; {len(labels)} labels, {len(colours)} colours "
        f"({time.time() - start:.0f} s)")
    tower = model.vision_tower
    model.requires_grad_(False)
    tower.requires_grad_(True)  # from_pretrained leaves every parameter frozen
    tower.train()
    width = int(tower.config.hidden_size)
    head = torch.nn.Linear(width, len(labels) + 1 + len(colours) + 1)
    params = list(tower.parameters()) + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                   pct_start=0.05)
    label_weight = torch.ones(len(labels) + 1)
    label_weight[-1] = cfg.background_weight
    colour_weight = torch.ones(len(colours) + 1)
    colour_weight[-1] = cfg.background_weight
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            z_label, z_colour = _logits(model, head, train.crops[idx], len(labels))
            loss = (F.cross_entropy(z_label.flatten(0, 1), train.label[idx].flatten(), weight=label_weight)
                    + F.cross_entropy(z_colour.flatten(0, 1), train.colour[idx].flatten(), weight=colour_weight))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        on_train = _accuracy(model, head, train.head(cfg.eval_frames), len(labels))
        on_val = _accuracy(model, head, val, len(labels))
        row = {"epoch": epoch + 1, "loss": loss.item(), "train_label": on_train["label"], "train_colour": on_train["colour"],
               "val_label": on_val["label"], "val_colour": on_val["colour"], "elapsed_s": time.time() - start}
        history.append(row)
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.3f}  patch label/colour accuracy "
            f"train {row['train_label']:.3f}/{row['train_colour']:.3f}  val {row['val_label']:.3f}/{row['val_colour']:.3f}"
            f"  ({row['elapsed_s']:.0f} s)")
    tower.eval()
    model.requires_grad_(False)
    out = save_checkpoint(model, cfg.output)
    classes = {"label": labels, "colour": colours}
    (out / "tower_pretraining.json").write_text(json.dumps({"config": asdict(cfg), "classes": classes, "history": history},
                                                           indent=1))
    return TowerPretrainResult(output=out, classes=classes, history=history)
