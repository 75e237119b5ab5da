"""`video3dllm pretrain-tower BENCH MODEL OUT`: teach a small model's vision tower what each patch shows.

Every patch of every train-room frame is labelled with the category and colour of the object box that
holds it (background otherwise); the tower is trained with two linear heads on those labels, then
written back into the checkpoint. Step 2b of the embedded default model's recipe
(training/recipes/default_model.sh; why: docs/training.md, "Vision tower pretraining").
"""

from __future__ import annotations

import argparse
import json

HELP = "pretrain a small model's vision tower on a synthetic benchmark's per-patch object labels"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain-tower", help=HELP, description=HELP)
    p.add_argument("benchmark", help="folder written by `video3dllm make-benchmark` (train rooms trained on, val rooms measured)")
    p.add_argument("model", help="checkpoint whose vision tower is trained (e.g. `video3dllm init-model` output)")
    p.add_argument("out", help="checkpoint folder to write (the input with the trained tower; tower_pretraining.json)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the train frames (default 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, one-cycle schedule (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per step (default 16)")
    p.add_argument("--background-weight", type=float, default=0.2, help="loss weight of background patches (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="head initialisation and frame order (default 0)")


def run(args: argparse.Namespace) -> int:
    from video3dllm_training.pretrain_tower import TowerPretrainConfig, pretrain_tower

    cfg = TowerPretrainConfig(benchmark=args.benchmark, model=args.model, output=args.out, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, background_weight=args.background_weight, seed=args.seed)
    result = pretrain_tower(cfg, log=lambda line: print(line, flush=True))
    last = result.history[-1]
    print(json.dumps({"out": str(result.output), "val_label": round(last["val_label"], 4),
                      "val_colour": round(last["val_colour"], 4)}))
    return 0
