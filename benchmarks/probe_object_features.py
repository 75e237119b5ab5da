"""What an object's grounding feature says about it: linear probes for colour, label and primitive shape.

The grounding head compares the `<ground>` state with one feature per candidate box (upstream's
``patch14-pe``: the mean of the projected patch features inside the box over the keyframes, plus the
sine embedding of the box centre; ``patch14-pe-size`` adds a learned embedding of the box's log
size). Whatever the feature does not carry, no decoder can ground by.
This script measures it on a synthetic benchmark: for every floor object seen in the max-coverage
keyframes of the train and validation rooms it computes the feature parts of a checkpoint, fits a
linear softmax probe on the train rooms and reports its accuracy on the validation rooms, for

* ``tower``: the mean tower output inside the box (before the projector);
* ``projected``: the mean projected feature (``ObjectFeatures.before_pe``);
* ``grounding feature``: what the head gets (``ObjectFeatures.features``: the projected mean + the centre
  embedding, + the box size embedding for ``patch14-pe-size`` models);
* ``box size``: the candidate box's size (dx, dy, dz) - part of the feature only for ``patch14-pe-size``
  models; shows how much of the label is size (the benchmark's table, chair, cabinet, bed, sofa and box are all cuboids);

against the majority class of the train rooms (chance row). Targets: the colour, the label (12
categories) and the label's primitive shape (cuboid, cylinder, sphere or cone). The ``spread`` column is
how much the part varies between objects (root mean square distance from its mean over the validation
objects): a probe standardises every feature, the decoder and the head do not, so a part that carries
the colour with a spread of 0.05 next to a centre embedding of norm ~10 is nearly invisible to them.

    python benchmarks/probe_object_features.py --benchmark default_model_work/bench \\
        --model default=video3dllm_core/default_model [--model other=CHECKPOINT] [--frames-upbound 4]

One core: ~1 min per model for the 150-room benchmark of the default-model recipe.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.model import Video3DLLM  # noqa: E402
from video3dllm_core.model.objects import mean_selected_features  # noqa: E402
from video3dllm_training.data import SceneStore, load_box_file, load_frames_file  # noqa: E402
from video3dllm_training.relations import load_scene_objects  # noqa: E402

FEATURES = ("tower", "projected", "grounding feature", "box size")
TARGETS = ("colour", "label", "primitive")


def object_rows(model: Video3DLLM, bench: Path, split: str, frames_upbound: int) -> dict[str, list]:
    """Feature parts, colour and label of every floor object seen in the split's keyframes."""
    meta = bench / "metadata"
    store = SceneStore(str(bench / "posed_images"), frames_file=load_frames_file(str(meta / "scannet_select_frames.json")),
                       ingest_config=model.ingest_config())
    rows: dict[str, list] = {feature: [] for feature in (*FEATURES, *TARGETS)}
    for scene_id, boxes in load_box_file(str(meta / f"scannet_{split}_gt_box.json")).items():
        objects = load_scene_objects(bench / "posed_images", scene_id, len(boxes))
        frames = store.frames(scene_id, "mc", frames_upbound)
        with torch.no_grad():
            visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]))
            box = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 6)
            features = model.object_features(visual, box)  # the head's input, and its patch selection
            mask = features.patch_mask
            tower_mean = mean_selected_features(visual.siglip, mask)
        for i, obj in enumerate(objects):
            if obj.label in ("door", "window") or not bool(mask[i].any()):
                continue
            rows["tower"].append(tower_mean[i].float().numpy())
            rows["projected"].append(features.before_pe[i].float().numpy())
            rows["grounding feature"].append(features.features[i].float().numpy())
            rows["box size"].append(box[i, 3:].numpy())
            rows["colour"].append(obj.colour)
            rows["label"].append(obj.label)
            rows["primitive"].append(obj.shape)
    return rows


def linear_probe(x_train: np.ndarray, y_train: list[str], x_val: np.ndarray, y_val: list[str], seed: int = 0,
                 steps: int = 500) -> float:
    """Validation accuracy of a softmax regression fitted on standardised train features (Adam, full batch)."""
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    xv = torch.tensor((x_val - mean) / std, dtype=torch.float32)
    yt = torch.tensor([index[c] for c in y_train])
    yv = torch.tensor([index.get(c, -1) for c in y_val])
    torch.manual_seed(seed)
    probe = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(xv).argmax(1) == yv).float().mean())


def spread(x: np.ndarray) -> float:
    """Root mean square distance of the rows of ``x`` [N, D] from their mean."""
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


def majority(y_train: list[str], y_val: list[str]) -> float:
    top = Counter(y_train).most_common(1)[0][0]
    return sum(y == top for y in y_val) / len(y_val)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--frames-upbound", type=int, default=4, help="max-coverage keyframes per room (default 4)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bench = Path(args.benchmark)
    table: list[tuple[str, str, list[float], float]] = []
    chance = None
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--model {spec!r}: expected NAME=CHECKPOINT")
        model = Video3DLLM.from_pretrained(path, device="cpu", dtype=torch.float32)
        model.eval()
        train = object_rows(model, bench, "train", args.frames_upbound)
        val = object_rows(model, bench, "val", args.frames_upbound)
        for feature in FEATURES:
            if feature == "box size" and any(row[1] == feature for row in table):
                continue  # the same for every model
            accs = [linear_probe(np.stack(train[feature]), train[target], np.stack(val[feature]), val[target])
                    for target in TARGETS]
            table.append((name if feature != "box size" else "-", feature, accs, spread(np.stack(val[feature]))))
        chance = [majority(train[target], val[target]) for target in TARGETS]
        counts = (len(train["label"]), len(val["label"]), len(set(train["colour"])), len(set(train["label"])))
    assert chance is not None
    print(f"linear probes, train rooms -> validation rooms ({counts[0]} / {counts[1]} seen floor objects, "
          f"{counts[2]} colours, {counts[3]} labels, {args.frames_upbound} max-coverage keyframes); accuracy x100")
    print("| model | feature | " + " | ".join(TARGETS) + " | spread |")
    print("| --- | --- |" + " --- |" * (len(TARGETS) + 1))
    for model_name, feature, accs, rms in table:
        print(f"| {model_name} | {feature} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + f" | {rms:.3g} |")
    print("| chance | majority class of the train rooms | " + " | ".join(f"{100 * a:.1f}" for a in chance) + " | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
