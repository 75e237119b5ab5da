"""`video3dllm make-benchmark OUT`: a synthetic five-task benchmark in the upstream data layout.

Seeded synthetic rooms rendered as ScanNet-like posed images, box files, the max-coverage frames
file and templated ScanQA / SQA3D / Scan2Cap / ScanRefer / Multi3DRefer annotations (train, val and
test splits by scene), ready for `video3dllm train` and `video3dllm eval` (see video3dllm_training.synthetic_benchmark).
"""

from __future__ import annotations

import argparse
import json

HELP = "write a synthetic five-task benchmark (scenes, boxes, frame picks, annotations)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("make-benchmark", help=HELP, description=HELP)
    p.add_argument("out", help="output folder (must be new or empty)")
    p.add_argument("--scenes", type=int, default=8, help="number of scenes (default 8; >= 2)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--frames", type=int, default=24, help="frames rendered per scene (default 24)")
    p.add_argument("--width", type=int, default=320, help="depth/colour width (default 320)")
    p.add_argument("--height", type=int, default=240, help="depth/colour height (default 240)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="fraction of scenes in the val split (default 0.25)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of scenes in the test split (default 0.1; at least one test scene from 3 scenes on)")


def run(args: argparse.Namespace) -> int:
    from video3dllm_training.synthetic_benchmark import make_benchmark

    info = make_benchmark(args.out, scenes=args.scenes, seed=args.seed, frames_per_scene=args.frames, width=args.width,
                          height=args.height, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                          progress=True)
    print(json.dumps({"out": args.out, "counts": info["counts"], "total_s": info["total_s"]}))
    return 0
