"""The grounding head's attribute match trained alone on a fixed model: which form and learning rate learn.

The attribute match (``GroundingHead.match``, ``ground_attribute_match``) adds to each candidate's cosine
score a bilinear term between the description's mean input embedding and the box's mean tower feature.
Everything it reads comes from a model that does not change while it trains (stage 3 of
``training/recipes/default_model.sh`` freezes the rest), so it can be fitted on a cache: this script runs a
checkpoint once over every ScanRefer and Multi3DRefer description of the train and validation rooms
(ground-truth boxes as candidates, 4 max-coverage keyframes, the eval prompt), keeps the cosine scores
(without the checkpoint's own match, if it has one), the text mean, the tower means and the targets, and
then trains matches alone on the train rooms (InfoNCE at T = 0.07, Adam, batch 4, constant learning rate):

* ``unbounded``: the package's ``AttributeMatch`` as shipped;
* ``tanh 0.3``: ``0.3 tanh(.)`` of the same bilinear form (the bounded term of an earlier experiment,
  docs/training.md, "The attribute match").

Each row is measured on the validation rooms with the eval scripts' rules (ScanRefer: argmax with the
no-object fallback; Multi3DRefer: the running-sum rule; F1 of the chosen set of ground-truth boxes).

    python benchmarks/probe_attribute_match.py --benchmark default_model_work/bench \\
        --model default_model_work/run_pe/checkpoint-1500 [--lrs 1e-4,2e-3] [--epochs 3]

One core: ~1.5 min to cache the 150-room benchmark of the default-model recipe, ~1 min per fitted row
and epoch. Results: docs/training.md, "The attribute match".
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.model import Video3DLLM  # noqa: E402
from video3dllm_core.model.grounding import AttributeMatch, select_multi3drefer, select_scanrefer  # noqa: E402
from video3dllm_core.model.prompts import build_input_ids  # noqa: E402
from video3dllm_training.data import SceneStore, load_box_file, load_frames_file  # noqa: E402
from video3dllm_training.data.annotations import load_annotations  # noqa: E402
from video3dllm_training.data.dataset import grounding_description, grounding_targets  # noqa: E402
from video3dllm_training.init_model import add_attribute_match  # noqa: E402
from video3dllm_training.loss import GROUND_TEMPERATURE, infonce_loss  # noqa: E402
from video3dllm_training.synthetic_eval import multi_kind  # noqa: E402

FORMS = ("unbounded", "tanh 0.3")


@dataclass
class Row:
    """One cached description: what the match reads and what the rest of the head scored."""

    task: str  # scanrefer | multi3drefer
    kind: str  # ref-attribute, ref-relation, ..., multi-colour (colour-only), multi-attribute, ...
    cosine: np.ndarray  # [N+1] the head's scores without any attribute match (last: no object)
    text_mean: np.ndarray  # [H]
    tower_mean: np.ndarray  # [N, mm_hidden]
    targets: tuple[int, ...]


def description_kind(task: str, question_type: str | None, description: str) -> str:
    """``ref-<type>`` for ScanRefer; ``multi-<what it names>`` for Multi3DRefer (``synthetic_eval.multi_kind``:
    ``multi-colour`` is a colour-only description, "All the pink objects.")."""
    if task == "scanrefer":
        return f"ref-{question_type}"
    return f"multi-{multi_kind(description)}"


class BoundedMatch(AttributeMatch):
    """``bound * tanh`` of the attribute match's bilinear form (for comparison; not in the package)."""

    def __init__(self, text_width: int, tower_width: int, bound: float = 0.3) -> None:
        super().__init__(text_width, tower_width)
        self.bound = bound

    def forward(self, text_mean: torch.Tensor, tower_mean: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(super().forward(text_mean, tower_mean))


def new_match(form: str, text_width: int, tower_width: int, seed: int) -> AttributeMatch:
    """A match of ``form`` initialised as ``video3dllm train --attribute-match`` does (text side seeded, object side 0)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r} (one of {FORMS})")
    match = AttributeMatch(text_width, tower_width) if form == "unbounded" else BoundedMatch(text_width, tower_width)
    match.reset_parameters(torch.Generator().manual_seed(seed))
    return match


@torch.no_grad()
def cache_split(model: Video3DLLM, bench: Path, split: str, frames_upbound: int = 4) -> list[Row]:
    """Every ScanRefer and Multi3DRefer description of ``split`` run through ``model`` (see the module docstring)."""
    processed = bench / "processed"
    anns = (load_annotations(processed / f"scanrefer_vg_{split}_llava_style.json", tasks=["scanrefer"])
            + load_annotations(processed / f"multi3drefer_{split}_llava_style.json", tasks=["multi3drefer"]))
    boxes = load_box_file(bench / "metadata" / f"scannet_{split}_gt_box.json")
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(bench / "metadata" / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    if model.ground_head is not None and model.ground_head.match is None:
        add_attribute_match(model)  # a zero match: only for the text and tower means; scores stay the cosines
    by_scene: OrderedDict[str, list] = OrderedDict()
    for ann in anns:
        by_scene.setdefault(ann.scene_id, []).append(ann)
    rows = []
    for scene_id, group in by_scene.items():
        frames = store.frames(scene_id, "mc", frames_upbound)
        visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                     np.stack([f.patch_world_coords for f in frames]))
        candidates = boxes[scene_id]
        objects = model.object_features(visual, candidates)
        prefix = None
        for ann in group:
            ids = build_input_ids(model.tokenizer, ann.task, ann.human,
                                  newline_after_image=model.config.prompt_newline_after_image).input_ids
            if prefix is None:
                prefix = model.prefill_prefix(visual, ids)
            merged = model.build_inputs_embeds(ids, visual)
            out = model.ground(merged, objects, prefix=prefix)
            assert out.match is not None and objects.tower_mean is not None
            cosine = out.scores - torch.cat([out.match, out.match.new_zeros(1)])
            description = grounding_description(ann.human)
            rows.append(Row(task=ann.task.value, kind=description_kind(ann.task.value, ann.question_type, description),
                            cosine=cosine.float().numpy(), text_mean=model.text_mean(merged).numpy(),
                            tower_mean=objects.tower_mean.float().numpy(),
                            targets=tuple(grounding_targets(ann.object_ids, candidates, ann.boxes, True, ann.id, 0.5))))
    return rows


def scores_with(row: Row, match: nn.Module | None) -> torch.Tensor:
    cosine = torch.from_numpy(row.cosine)
    if match is None:
        return cosine
    added = match(torch.from_numpy(row.text_mean), torch.from_numpy(row.tower_mean))
    return cosine + torch.cat([added, added.new_zeros(1)])


def set_f1(chosen: list[int], targets: tuple[int, ...]) -> float:
    """F1 of two index sets; both empty is 1 (the Multi3DRefer script's convention for "no object")."""
    c, t = set(chosen), set(targets)
    if not c and not t:
        return 1.0
    hits = len(c & t)
    return 0.0 if hits == 0 else 2 * hits / (len(c) + len(t))


@torch.no_grad()
def evaluate(rows: list[Row], match: nn.Module | None) -> dict[str, tuple[float, int]]:
    """{group: (value x100, descriptions)}: ScanRefer accuracy and Multi3DRefer F1, overall and per kind, and
    how often colour-only descriptions are answered with nothing."""
    values: dict[str, list[float]] = {}
    for row in rows:
        scores = scores_with(row, match)
        if row.task == "scanrefer":
            index, _ = select_scanrefer(scores)
            value = float(index in row.targets)
            group = "scanrefer"
        else:
            chosen = select_multi3drefer(scores)
            value = set_f1(chosen, row.targets)
            group = "multi3drefer"
            if row.kind == "multi-colour":
                values.setdefault("multi-colour: answered nothing", []).append(float(not chosen))
        values.setdefault(group, []).append(value)
        values.setdefault(row.kind, []).append(value)
    return {k: (100 * float(np.mean(v)), len(v)) for k, v in sorted(values.items())}


def fit(rows: list[Row], form: str, lr: float, epochs: int, seed: int = 0, batch_size: int = 4) -> AttributeMatch:
    """A match of ``form`` trained alone on ``rows`` (InfoNCE, Adam at constant ``lr``, shuffled batches)."""
    torch.manual_seed(seed)
    match = new_match(form, rows[0].text_mean.shape[0], rows[0].tower_mean.shape[1], seed)
    optimizer = torch.optim.Adam(match.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            loss = torch.stack([infonce_loss(scores_with(r, match), r.targets, GROUND_TEMPERATURE) for r in batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return match


COLUMNS = ("scanrefer", "ref-attribute", "ref-relation", "multi3drefer", "multi-colour", "multi-colour: answered nothing")


def table(results: list[tuple[str, dict[str, tuple[float, int]]]]) -> str:
    head = "| match | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, res in results:
        lines.append(f"| {name} | " + " | ".join(f"{res[c][0]:.1f}" if c in res else "-" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", required=True, help="checkpoint (its own match, if any, is left out of the cosines)")
    p.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {FORMS}")
    p.add_argument("--lrs", default="1e-4,2e-3", help="comma-separated learning rates")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)
    model = Video3DLLM.from_pretrained(args.model, device="cpu")
    model.eval()
    own = model.ground_head is not None and model.ground_head.match is not None
    bench = Path(args.benchmark)
    train_rows, val_rows = cache_split(model, bench, "train"), cache_split(model, bench, "val")
    print(f"cached {len(train_rows)} train and {len(val_rows)} validation descriptions", flush=True)
    results: list[tuple[str, dict[str, tuple[float, int]]]] = [("none (cosine only)", evaluate(val_rows, None))]
    if own:
        results.append(("the checkpoint's own", evaluate(val_rows, model.ground_head.match)))  # type: ignore[union-attr]
    for form in args.forms.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            match = fit(train_rows, form.strip(), lr, args.epochs, args.seed)
            results.append((f"{form.strip()}, lr {lr:g}, {args.epochs} epochs", evaluate(val_rows, match)))
            print(f"fitted {form.strip()} at lr {lr:g}", flush=True)
    n = {c: results[0][1].get(c, (0.0, 0))[1] for c in COLUMNS}
    print(f"validation rooms (values x100; descriptions: {', '.join(f'{c} {n[c]}' for c in COLUMNS)})")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
