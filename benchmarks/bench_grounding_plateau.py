"""How fast a small decoder trained from scratch leaves the grounding plateau, per initialisation and loss.

The embedded default model's first recipe did not learn to ground: the InfoNCE loss stayed near its
starting value for thousands of steps. This benchmark isolates that: ScanRefer only, the small model of
`video3dllm init-model`, and four settings side by side from the same seed and batches:

* ``qk x1``: transformers' initialisation (query/key projections N(0, 0.02^2)), InfoNCE only (the old recipe);
* ``qk x1 + recall``: plus the description recall loss at ``<ground>`` (``--description-loss 1``);
* ``qk x4``: query/key projections x4 (``init-model --attention-init-scale 4``, the default now);
* ``qk x4 + recall``: both (the default model's recipe).

``--content-scales 1,4,16`` replaces the four settings by ``qk x4 + recall`` with the projector's output
multiplied by each factor (video tokens and the object features' patch mean alike, the 3D position
embedding unchanged): whether the decoder reads the appearance better when it is a larger part of a
token (`probe_object_features.py`'s spread column shows it is 3-10 % of what distinguishes objects).

Speed: the vision tower is frozen here (as in the recipe of the time), so its outputs and the patch-in-box
masks are computed once per scene and reused; projector, decoder and heads train exactly as in
``video3dllm train`` (the ``merge_sequence`` splice of ``build_inputs_embeds``, ``infonce_loss``, ``description_recall_loss``, AdamW
with warmup and cosine decay, gradient clipping 1). The table reports the argmax accuracy over the ground-truth
candidates on the validation rooms (the share of descriptions whose target scores highest), its ratio to
the ``qk x1`` baseline of the same run (with ``--content-scales``, the first factor), and chance.

    python benchmarks/bench_grounding_plateau.py --benchmark default_model_work/bench --steps 1500

One core: ~4 min per setting at 1500 steps (batch 4, 4 frames, stride 9).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.layout import image_block, merge_sequence, pool_features
from video3dllm_core.model.objects import mean_selected_features, min_inside_points, patch_inside_counts
from video3dllm_training.data import DatasetConfig, SceneStore, Video3DDataset, load_box_file, load_frames_file
from video3dllm_training.data.annotations import load_annotations
from video3dllm_training.loss import description_recall_loss, infonce_loss
from video3dllm_training.small_model import init_small_model

SETTINGS = (("qk x1", 1.0, 0.0), ("qk x1 + recall", 1.0, 1.0), ("qk x4", 4.0, 0.0), ("qk x4 + recall", 4.0, 1.0))
# name, query/key init scale, recall weight, projector output factor
Setting = tuple[str, float, float, float]


def _samples(model: Video3DLLM, bench: Path, split: str, frames: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-scene frozen-tower outputs and masks, and per-sample ids / targets / description ids."""
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(bench / "metadata" / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config(), cache_scenes=1)
    anns = sorted(load_annotations(bench / "processed" / f"scanrefer_vg_{split}_llava_style.json"), key=lambda a: a.scene_id)
    ds = Video3DDataset(anns, store, model.tokenizer, load_box_file(bench / "metadata" / f"scannet_{split}_gt_box.json"),
                        DatasetConfig(frame_strategy="mc", frames_upbound=frames, training=True, spatial_instruction=False))
    tower = model.vision_tower
    scenes: dict[str, Any] = {}
    samples = []
    for i in range(len(ds)):
        s = ds[i]
        if s.scene_id not in scenes:
            with torch.no_grad():
                visual = model.encode_frames(s.crop_rgb, s.world_coords, s.patch_world_coords)
                counts = patch_inside_counts(visual.world_coords, s.boxes, tower.patch_size, tower.grid)
                scenes[s.scene_id] = {"siglip": visual.siglip, "pe": visual.position_embedding,
                                      "mask": counts >= min_inside_points(tower.patch_size),
                                      "center_pe": model.position_embedding(model.pe_coords(s.boxes[:, :3]))}
        samples.append({"scene": s.scene_id, "ids": s.input_ids.tolist(), "targets": s.ground_targets,
                        "description": s.description_ids})
    return scenes, samples


def _forward(model: Video3DLLM, batch: list[dict[str, Any]], scenes: dict[str, Any],
             content_scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Grounding scores per sample and the decoder's final hidden states at <ground> [B, H]."""
    embed = model.language_model.get_input_embeddings()
    grid, stride = model.vision_tower.grid, model.config.mm_spatial_pool_stride
    visual: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    sequences, features, positions = [], [], []
    for smp in batch:
        scene = scenes[smp["scene"]]
        if smp["scene"] not in visual:
            projected = content_scale * model.mm_projector(scene["siglip"])
            block = image_block(pool_features(projected, grid, stride) + scene["pe"], model.image_newline)
            visual[smp["scene"]] = (block, mean_selected_features(projected, scene["mask"]) + scene["center_pe"])
        block, objects = visual[smp["scene"]]
        merged = merge_sequence(smp["ids"], embed, block)
        sequences.append(merged.embeds)
        features.append(objects)
        positions.append(merged.token_positions(model.config.ground_token_ids)[-1])
    longest = max(x.shape[0] for x in sequences)
    inputs = sequences[0].new_zeros((len(sequences), longest, sequences[0].shape[1]))
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, x in enumerate(sequences):
        inputs[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1
    hidden = model.language_model.get_decoder()(inputs_embeds=inputs, attention_mask=mask, use_cache=False,
                                                position_ids=torch.arange(longest)[None].expand(len(sequences), -1)).last_hidden_state
    at_ground = torch.stack([hidden[i, p] for i, p in enumerate(positions)])
    assert model.ground_head is not None
    return [model.ground_head(f, h[None]).scores for f, h in zip(features, at_ground)], at_ground


@torch.no_grad()
def _accuracy(model: Video3DLLM, samples: list[dict[str, Any]], scenes: dict[str, Any], content_scale: float = 1.0) -> float:
    model.eval()
    hits = total = 0
    for i in range(0, len(samples), 16):
        batch = samples[i:i + 16]
        for smp, scores in zip(batch, _forward(model, batch, scenes, content_scale)[0]):
            if smp["targets"]:
                total += 1
                hits += int(int(torch.argmax(scores[:-1])) in smp["targets"])
    model.train()
    return hits / max(total, 1)


def _train(model: Video3DLLM, train: tuple[dict[str, Any], list[dict[str, Any]]], val: tuple[dict[str, Any], list[dict[str, Any]]],
           steps: int, recall_weight: float, lr: float, batch_size: int, seed: int, every: int,
           content_scale: float = 1.0) -> list[float]:
    torch.manual_seed(seed)
    model.requires_grad_(True)
    model.vision_tower.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, int(0.03 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    scenes, samples = train
    curve = []
    for step in range(1, steps + 1):
        batch = [samples[i] for i in rng.choice(len(samples), batch_size, replace=False)]
        scores, hidden = _forward(model, batch, scenes, content_scale)
        loss = torch.stack([infonce_loss(s, smp["targets"]) for s, smp in zip(scores, batch)]).mean()
        if recall_weight:
            logits = model.logits(hidden)
            loss = loss + recall_weight * torch.stack(
                [description_recall_loss(logits[i], smp["description"]) for i, smp in enumerate(batch)]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            val_scenes, val_samples = val
            curve.append(_accuracy(model, val_samples, val_scenes, content_scale))
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", type=Path, required=True, help="folder of `video3dllm make-benchmark`")
    p.add_argument("--work", type=Path, default=Path("grounding_plateau_work"), help="scratch folder for the fresh models")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=500, help="evaluate every N steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object-feature-type", default="patch14-pe", choices=("patch14-pe", "patch14-pe-size"),
                   help="the fresh models' object features (default patch14-pe: the documented table predates the box "
                        "size embedding that init-model now adds)")
    p.add_argument("--content-scales", default=None,
                   help="comma-separated factors: run 'qk x4 + recall' with the projector output scaled by each instead")
    args = p.parse_args(argv)
    settings: list[Setting] = [(name, qk, recall, 1.0) for name, qk, recall in SETTINGS]
    if args.content_scales:
        try:
            factors = [float(f) for f in args.content_scales.split(",")]
        except ValueError:
            raise SystemExit(f"--content-scales {args.content_scales!r}: expected numbers such as 1,4,16") from None
        if not factors or any(f <= 0 for f in factors):
            raise SystemExit(f"--content-scales {args.content_scales!r}: factors must be > 0")
        settings = [(f"content x{f:g}", 4.0, 1.0, f) for f in factors]
    torch.set_num_threads(1)
    rows = []
    cached: dict[str, Any] = {}
    for name, scale, recall, content in settings:
        start = time.perf_counter()
        path = init_small_model(args.benchmark, args.work / f"init_qk{scale:g}", seed=args.seed, attention_init_scale=scale,
                                overrides={"object_feature_type": args.object_feature_type})
        model = Video3DLLM.from_pretrained(path, device="cpu", dtype=torch.float32, attn_implementation="sdpa")
        tower = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
        if not cached:  # tower, PE and masks do not depend on the decoder's initialisation: computed once
            cached = {"tower": tower, "train": _samples(model, args.benchmark, "train", args.frames),
                      "val": _samples(model, args.benchmark, "val", args.frames)}
        assert all(torch.equal(tower[k], cached["tower"][k]) for k in tower), "the fresh models' towers differ"
        curve = _train(model, cached["train"], cached["val"], args.steps, recall, args.lr, args.batch_size, args.seed, args.every,
                       content)
        rows.append((name, curve, time.perf_counter() - start))
        print(f"{name}: {[round(c, 3) for c in curve]} ({rows[-1][2]:.0f} s)", file=sys.stderr, flush=True)
    candidates = [len(cached["val"][0][s["scene"]]["mask"]) for s in cached["val"][1] if s["targets"]]
    chance = float(np.mean([1.0 / n for n in candidates]))
    marks = [min(args.every * (i + 1), args.steps) for i in range(len(rows[0][1]))]
    print(f"ScanRefer-only, {args.steps} steps x batch {args.batch_size}, validation argmax accuracy (chance {chance:.3f})")
    print("| setting | " + " | ".join(f"step {m}" for m in marks) + " | final / baseline | final / chance |")
    print("| --- | " + " | ".join("---" for _ in marks) + " | --- | --- |")
    base = rows[0][1][-1]
    for name, curve, _ in rows:
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in curve) + f" | {curve[-1] / base:.2f} | {curve[-1] / chance:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
