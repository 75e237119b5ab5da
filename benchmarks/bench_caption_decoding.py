"""Scan2Cap captions by greedy decoding and by the speaker-listener search, with several settings, side by side.

The search's settings (`ListenerDecoding`: beams, top_k, min_relative_prob, listener_weight) are a choice; this
measures them on one split of a synthetic benchmark (choose on `val`, report on `test`), in one process, next to
greedy decoding as the baseline: what the captions get right (`caption_breakdown`), CIDEr, and the model time
per caption as a ratio to greedy's.

    python benchmarks/bench_caption_decoding.py --benchmark BENCH [--model CHECKPOINT] [--split val]
        [--setting beams=4,listener_weight=1 --setting beams=8 ...]   # default: a small grid around the shipped one

Without --model: the embedded default model. ~2 min per setting for the 131 validation captions on one core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.model.listener_decoding import GENERATION_CONFIG_KEY, ListenerDecoding  # noqa: E402
from video3dllm_training.synthetic_eval import FILES, caption_breakdown  # noqa: E402

DEFAULT_SETTINGS = ("beams=4", "beams=4,listener_weight=0.5", "beams=4,listener_weight=2", "beams=8",
                    "beams=4,min_relative_prob=0.02", "beams=2")


def parse_setting(text: str) -> ListenerDecoding:
    """"beams=4,listener_weight=1" -> ListenerDecoding (unnamed fields keep their defaults)."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--setting {text!r}: expected NAME=VALUE pairs separated by commas")
        try:
            values[key.strip()] = int(value) if key.strip() in ("beams", "top_k") else float(value)
        except ValueError:
            raise SystemExit(f"--setting {text!r}: {key.strip()} needs a number, got {value!r}") from None
    try:
        return ListenerDecoding.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--setting {text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, help="folder written by `video3dllm make-benchmark`")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded default model)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N captions")
    p.add_argument("--setting", action="append", default=None,
                   help="listener settings NAME=VALUE,... (repeatable; default: a small grid around the shipped one)")
    p.add_argument("--out", default=None, help="answers folder (default: a temporary one)")
    args = p.parse_args(argv)
    runs: list[tuple[str, ListenerDecoding | None]] = [("greedy", None)]
    runs += [(text, parse_setting(text)) for text in (args.setting or DEFAULT_SETTINGS)]  # bad ones fail first
    import torch

    from video3dllm_core.default_model import DEFAULT_MODEL_DIR
    from video3dllm_core.model import Video3DLLM
    from video3dllm_training.evaluate import EvalConfig, evaluate

    bench = Path(args.benchmark)
    path = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    model = Video3DLLM.from_pretrained(path, device="cpu", dtype=torch.float32)
    frames = int(model.config.raw.get("frames_upbound", 4))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_caption_decoding_"))
    meta = bench / "metadata"
    rows = []
    for k, (name, settings) in enumerate(runs):
        if settings is not None:  # the model asks for exactly these settings ("checkpoint" decoding reads them)
            setattr(model.generation_config, GENERATION_CONFIG_KEY, {"mode": "listener", **settings.to_dict()})
        answers = out / f"run{k}.jsonl"
        cfg = EvalConfig(task="scan2cap", model=str(path),
                         annotations=str(bench / "processed" / f"{FILES['scan2cap']}_{args.split}_llava_style.json"),
                         posed_images=str(bench / "posed_images"), answers=str(answers),
                         boxes=str(meta / f"scannet_{args.split}_gt_box.json"),
                         frames_file=str(meta / "scannet_select_frames.json"), frame_strategy="mc", frames_upbound=frames,
                         batch_size=64, max_new_tokens=24, limit=args.limit, device="cpu", meteor=False, progress=False,
                         caption_decoding="greedy" if settings is None else "checkpoint")
        result = evaluate(cfg, model=model)
        rows.append((name, caption_breakdown(answers), result.metrics["cider"], result.seconds_per_question or 0.0))
    base_s = rows[0][3] or float("nan")
    print(f"Scan2Cap captions, {args.split} split of {bench} ({rows[0][1]['captions']} captions), model {path}")
    print("| decoding | right colour | right label | both | exact caption | CIDEr | model time per caption | x greedy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, b, cider, seconds in rows:
        print(f"| {name} | {100 * b['colour']:.1f} | {100 * b['label']:.1f} | {100 * b['object']:.1f} | "
              f"{100 * b['exact']:.1f} | {100 * cider:.1f} | {1000 * seconds:.0f} ms | {seconds / base_s:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
