"""`video3dllm init-model BENCH OUT`: a fresh small Video-3D LLM with a tokenizer trained on a benchmark's text.

The starting point of the embedded default model (docs/training.md, "The embedded default model"):
the released architecture scaled down (video3dllm_training.small_model), weights drawn from --seed,
written as an upstream checkpoint folder for `video3dllm train --model OUT`.
"""

from __future__ import annotations

import argparse
import json

HELP = "write a fresh small Video-3D LLM (tokenizer trained on a synthetic benchmark) to train from scratch"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init-model", help=HELP, description=HELP)
    p.add_argument("benchmark", help="folder written by `video3dllm make-benchmark` (its train text trains the tokenizer)")
    p.add_argument("out", help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--no-position-embedding", action="store_true",
                   help="the paper's ablation: no 3D position embedding on video tokens and object features")
    p.add_argument("--attention-init-scale", type=float, default=4.0,
                   help="factor on the decoder's query/key projections after initialisation (default 4; 1 = transformers')")
    p.add_argument("--object-feature-type", choices=("patch14-pe-size", "patch14-pe"), default="patch14-pe-size",
                   help="object features for grounding: with the learned box size embedding (default) or upstream's "
                        "patch14-pe (patch mean + centre embedding only)")
    p.add_argument("--vision-tower-from", default=None, metavar="CHECKPOINT",
                   help="take the vision tower's weights from this checkpoint (e.g. `video3dllm pretrain-tower` output)")
    p.add_argument("--calibrate-projector", action="store_true",
                   help="scale the projector on the benchmark's train frames so that visual content and 3D position "
                        "enter the decoder at the same scale (default: PyTorch's layer defaults, as the shipped model)")


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.model import Video3DLLM
    from video3dllm_training.small_model import init_small_model

    out = init_small_model(args.benchmark, args.out, seed=args.seed, position_embedding=not args.no_position_embedding,
                           attention_init_scale=args.attention_init_scale, vision_tower_from=args.vision_tower_from,
                           calibrate_projector=args.calibrate_projector,
                           overrides={"object_feature_type": args.object_feature_type})
    model = Video3DLLM.from_pretrained(out, device="cpu")
    print(json.dumps({"out": str(out), "parameters": sum(p.numel() for p in model.parameters()),
                      "vocab_size": len(model.tokenizer),
                      "position_embedding": model.config.world_position_embedding_type,
                      "object_feature_type": model.config.object_feature_type}))
    return 0
