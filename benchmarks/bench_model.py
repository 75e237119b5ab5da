"""Model latency: time-to-first-token and decode speed, cold (no cache) vs warm (cached visual prefix).

Cold is what the upstream code does for every question: encode all keyframes, prefill the whole
merged sequence (system prompt + V x 210 visual tokens + question), then decode. Warm is a
question on keyframes whose visual features and prefix KV cache are already computed: only the
question's own tokens are prefilled (on a copy of the cache), then decode.

    python benchmarks/bench_model.py                           # fixture checkpoint, CPU, 8/16/32 frames
    python benchmarks/bench_model.py --real-shapes --dry-run   # 7B architecture on the meta device
    python benchmarks/bench_model.py --real-shapes --device cuda  # 7B shapes, random bf16 weights (GPU)

Prints a markdown table (median of ``--repeats`` runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from video3dllm_core.model import IMAGE_TOKEN_INDEX, Video3DLLM, Video3DLLMConfig  # noqa: E402
from video3dllm_core.model.config import released_7b_config_dict  # noqa: E402
from video3dllm_core.model.decoding import greedy_continue  # noqa: E402
from video3dllm_core.model.modeling import default_attn_implementation  # noqa: E402
from video3dllm_core.model.vision import resolve_tower_config  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
QUESTION = "\n What is in front of the wooden cabinet? Answer the question simply.<|im_end|>\n<|im_start|>assistant\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--attn", default=None, help="attention implementation (default: eager on CPU, flash/sdpa on CUDA)")
    parser.add_argument("--real-shapes", action="store_true", help="Qwen2-7B + SigLIP-so400m shapes, random bf16 weights")
    parser.add_argument("--dry-run", action="store_true", help="with --real-shapes: build on the meta device and stop")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def random_real_shapes_model(device: torch.device, attn: str | None, seed: int) -> Video3DLLM:
    config = Video3DLLMConfig.from_dict(released_7b_config_dict())
    tower = resolve_tower_config(config.mm_vision_tower, None)
    dtype = torch.bfloat16
    model = Video3DLLM.build(config, tower, device=device, dtype=dtype,
                             attn_implementation=attn or default_attn_implementation(device, dtype))
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("norm" in name or "layer_norm" in name):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)


def prompt_ids(model: Video3DLLM, rng: np.random.Generator) -> list[int]:
    tok = model.tokenizer
    if tok is not None:
        return tok(SYSTEM).input_ids + [IMAGE_TOKEN_INDEX] + tok(QUESTION).input_ids
    vocab = int(model.language_model.config.vocab_size)
    return rng.integers(0, vocab - 3, 14).tolist() + [IMAGE_TOKEN_INDEX] + rng.integers(0, vocab - 3, 20).tolist()


def random_frames(frames: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    crops = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    coords = rng.uniform(-3.0, 3.0, (frames, size, size, 3)).astype(np.float32)
    return crops, coords


def bench_frames(model: Video3DLLM, frames: int, new_tokens: int, repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed + frames)
    device = model.device
    ids = prompt_ids(model, rng)
    crops, coords = random_frames(frames, model.vision_tower.image_size, rng)
    lm = model.language_model
    rows: dict[str, list[float]] = {k: [] for k in ("encode", "prefix", "cold_ttft", "warm_ttft", "cold_tps", "warm_tps")}
    merged_len = 0
    with torch.no_grad():
        for attempt in range(repeats + 1):  # attempt 0 warms up allocators and thread pools, not counted
            # cold: everything per question, as upstream
            t_enc, visual = _timed(device, lambda: model.encode_frames(crops, coords))
            merged = model.build_inputs_embeds(ids, visual)
            merged_len = merged.length
            t_fill, out = _timed(device, lambda: model.run_decoder(merged))
            t_dec, _ = _timed(device, lambda: greedy_continue(lm, out.hidden[-1], out.cache, merged.length,
                                                              new_tokens, eos_token_ids=()))
            cold = (t_enc, t_enc + t_fill, (new_tokens - 1) / t_dec)
            # warm: prefix prefilled once per keyframe set, then only the question
            t_prefix, prefix = _timed(device, lambda: model.prefill_prefix(visual, ids))
            t_fill, out = _timed(device, lambda: model.run_decoder(merged, prefix=prefix))
            t_dec, _ = _timed(device, lambda: greedy_continue(lm, out.hidden[-1], out.cache, merged.length,
                                                              new_tokens, eos_token_ids=()))
            if attempt == 0:
                continue
            rows["encode"].append(cold[0])
            rows["cold_ttft"].append(cold[1])
            rows["cold_tps"].append(cold[2])
            rows["prefix"].append(t_prefix)
            rows["warm_ttft"].append(t_fill)
            rows["warm_tps"].append((new_tokens - 1) / t_dec)
    result = {k: statistics.median(v) for k, v in rows.items()}
    result["merged_len"] = merged_len
    result["visual_tokens"] = frames * int(visual.image_block.shape[0]) // visual.num_frames
    return result


def markdown_table(results: dict[int, dict[str, float]]) -> str:
    lines = [
        "| frames | visual tokens | merged len | encode ms | prefix prefill ms | TTFT cold ms | TTFT warm ms | "
        "TTFT speed-up | decode tok/s cold | decode tok/s warm |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for frames, r in results.items():
        lines.append(
            f"| {frames} | {int(r['visual_tokens'])} | {int(r['merged_len'])} | {1e3 * r['encode']:.1f} | "
            f"{1e3 * r['prefix']:.1f} | {1e3 * r['cold_ttft']:.1f} | {1e3 * r['warm_ttft']:.1f} | "
            f"{r['cold_ttft'] / r['warm_ttft']:.0f}x | {r['cold_tps']:.0f} | {r['warm_tps']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.dry_run and not args.real_shapes:
        raise SystemExit("--dry-run only applies to --real-shapes")
    if args.real_shapes and args.dry_run:
        config = Video3DLLMConfig.from_dict(released_7b_config_dict())
        tower = resolve_tower_config(config.mm_vision_tower, None)
        model = Video3DLLM.build(config, tower, device="meta", dtype=torch.bfloat16, attn_implementation="sdpa")
        params = sum(p.numel() for p in model.parameters())
        print(f"real shapes on meta: {params / 1e9:.2f} B parameters "
              f"({2 * params / 2**30:.1f} GiB in bf16); decoder layers {config.text_config.num_hidden_layers}, "
              f"vision layers {len(model.vision_tower.tower.encoder.layers)}, hidden {config.hidden_size}")
        return 0
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.real_shapes:
        model = random_real_shapes_model(device, args.attn, args.seed)
        label = "7B shapes, random bf16 weights"
    else:
        model = Video3DLLM.from_pretrained(args.checkpoint, device=device, attn_implementation=args.attn)
        label = f"checkpoint {args.checkpoint.name}"
    attn = model.language_model.config._attn_implementation
    print(f"# Model benchmark: {label}, device {device}, dtype {model.dtype}, attention {attn}, "
          f"torch threads {torch.get_num_threads()}, {args.new_tokens} new tokens, median of {args.repeats}\n")
    results = {v: bench_frames(model, v, args.new_tokens, args.repeats, args.seed) for v in args.frames}
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
