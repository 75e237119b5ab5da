"""`video3dllm eval TASK`: answer a benchmark split with a checkpoint, then score it.

    video3dllm eval scanrefer --model outputs/run1/checkpoint-1000 \\
        --annotations data/processed/scanrefer_vg_val_llava_style.json \\
        --scans data/scannet/posed_images --boxes data/metadata/scannet_val_pred_box.json \\
        --answers results/scanrefer.jsonl

TASK: scanrefer, multi3drefer, scan2cap, scanqa, sqa3d. Answers are appended to --answers as they
come (a rerun skips the ids already there); metrics go to --metrics-out (default: the answers path
with .metrics.json) and stdout. See video3dllm_training.evaluate.
"""

from __future__ import annotations

import argparse
import json

from video3dllm_core.answer import CAPTION_DECODINGS

HELP = "evaluate a checkpoint on ScanRefer / Multi3DRefer / Scan2Cap / ScanQA / SQA3D (resumable answers + metrics)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP)
    p.add_argument("task", choices=("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d"))
    p.add_argument("--model", required=True, help="checkpoint folder (upstream layout)")
    p.add_argument("--annotations", required=True, help="the split's *_llava_style.json")
    p.add_argument("--scans", "--posed-images", dest="posed_images", required=True, help="posed-images root (<root>/<scene>/...)")
    p.add_argument("--answers", required=True, help="answers JSONL (appended; existing ids are skipped)")
    p.add_argument("--boxes", default=None, help="candidate boxes for grounding (scannet_val_pred_box.json)")
    p.add_argument("--frames-file", default=None, help="max-coverage picks, for mc strategies")
    p.add_argument("--frame-strategy", default="uniform", choices=("uniform", "mc", "mc-ratio90", "mc-ratio95"))
    p.add_argument("--frames-upbound", type=int, default=32)
    p.add_argument("--embodiedscan", nargs="+", default=None, help="EmbodiedScan info pickles (needs --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--metrics-out", default=None, help="metrics JSON (default: <answers>.metrics.json)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per scene sharing one frame encoding + prefix")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--caption-decoding", default="checkpoint", choices=CAPTION_DECODINGS,
                   help="Scan2Cap captions: as the checkpoint's generation_config.json asks (default; greedy unless it "
                        "asks for 'listener'), greedy, or the speaker-listener search (docs/engine.md, \"Captions\")")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--attn", default=None, help="attention implementation (default: the model's choice)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    p.add_argument("--newline-after-image", action=argparse.BooleanOptionalAction, default=None,
                   help="prompts with upstream eval's newline after the image placeholder, or without it (the training "
                        "layout); default: the model's config.json prompt_newline_after_image (true unless set)")


def run(args: argparse.Namespace) -> int:
    from video3dllm_training.evaluate import EvalConfig, evaluate

    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size and --max-new-tokens must be >= 1")
    cfg = EvalConfig(
        task=args.task, model=args.model, annotations=args.annotations, posed_images=args.posed_images, answers=args.answers,
        boxes=args.boxes, frames_file=args.frames_file, frame_strategy=args.frame_strategy, frames_upbound=args.frames_upbound,
        embodiedscan=args.embodiedscan, trust_pickle=args.trust_pickle, metrics_out=args.metrics_out,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, limit=args.limit,
        caption_decoding=args.caption_decoding,
        device=args.device, dtype=args.dtype, attn_implementation=args.attn, meteor=not args.no_meteor,
        newline_after_image=args.newline_after_image,
    )
    result = evaluate(cfg)
    print(json.dumps({"task": args.task, "answered": result.answered, "skipped": result.skipped, "questions": result.total,
                      "seconds": round(result.seconds, 2), "metrics": result.metrics, "metrics_file": result.extra["metrics_file"]}))
    return 0
