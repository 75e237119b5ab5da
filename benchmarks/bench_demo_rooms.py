"""How often `video3dllm demo`'s answers are right, over many rooms instead of one.

`video3dllm demo` asks eight questions about one room (seed 0 by default). One room is a small
sample: this runs the very same demo (render, stream through the scene engine, `demo_queries`,
`add_truth`) for seeds 0..N-1 and prints, per question, how many rooms got it right, and the mean
number of correct answers per room. Pass several models to compare them on the same rooms.

    python benchmarks/bench_demo_rooms.py --rooms 10 [--model NAME=CHECKPOINT ...] [--width 640 --height 480]
        [--max-frames 4 --max-frames 16]   # one column per model and keyframe budget
        [--stacked both]                   # columns with and without splitting stacked objects
        [--panels both]                    # columns with and without wall-panel proposals (doors, windows)
        [--proposal-frames 0 --proposal-frames 16]   # candidates fused from the keyframes alone / 16 frames
        [--turn 30 --scene-yaw both]       # rooms turned in the map; scene frame along the walls / the map
        [--caption-decoding greedy --caption-decoding checkpoint]   # captions decoded greedily / as the model asks

Without --model: the embedded default model. ~1 s per room on one core at 640x480.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.commands.demo import ask_demo_room, render_demo_room  # noqa: E402
from video3dllm_core.engine import EngineConfig, SceneEngine  # noqa: E402
from video3dllm_core.answer import CAPTION_DECODINGS  # noqa: E402
from video3dllm_core.proposals import ProposalConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--model", action="append", default=None,
                   help="NAME=CHECKPOINT (repeatable; default: the embedded default model)")
    p.add_argument("--frames", type=int, default=40, help="frames along the camera loop (the demo's default 40)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--max-frames", type=int, action="append", default=None,
                   help="keyframe budget (repeatable: one column per budget; default: the model's own)")
    p.add_argument("--stacked", choices=("split", "merged", "both"), default="split",
                   help="geometric proposals split a support from what stands on it (ProposalConfig.split_stacked, "
                        "the default), keep them merged, or one column each")
    p.add_argument("--panels", choices=("on", "off", "both"), default="on",
                   help="geometric proposals include coloured wall panels (ProposalConfig.propose_wall_panels, "
                        "the default), or not, or one column each")
    p.add_argument("--proposal-frames", type=int, action="append", default=None,
                   help="frames fused for the proposals (EngineConfig.proposal_max_frames; repeatable: one column "
                        "each; default: the engine's)")
    p.add_argument("--turn", type=float, default=0.0, metavar="DEG",
                   help="turn every room by DEG degrees about up in the map frame (demo --turn)")
    p.add_argument("--scene-yaw", choices=("walls", "world", "both"), default="walls",
                   help="EngineConfig.scene_yaw (default walls), or one column each")
    p.add_argument("--caption-decoding", action="append", choices=CAPTION_DECODINGS, default=None,
                   help="EngineConfig.caption_decoding (repeatable: one column each; default: the engine's, "
                        "'checkpoint')")
    args = p.parse_args(argv)
    models: list[tuple[str, str | None]] = [("default", None)]
    if args.model:
        models = [(name, path) for name, _, path in (spec.partition("=") for spec in args.model)]
        for (name, path), spec in zip(models, args.model):
            if not path:
                raise SystemExit(f"--model {spec!r}: expected NAME=CHECKPOINT")
    budgets: list[int | None] = args.max_frames or [None]
    splits = {"split": [True], "merged": [False], "both": [True, False]}[args.stacked]
    panel_modes = {"on": [True], "off": [False], "both": [True, False]}[args.panels]
    proposal_frames: list[int | None] = args.proposal_frames or [None]
    yaws = ["walls", "world"] if args.scene_yaw == "both" else [args.scene_yaw]
    decodings: list[str | None] = args.caption_decoding or [None]

    def column(name: str, budget: int | None, split: bool, panels: bool, pf: int | None, yaw: str,
               decoding: str | None) -> str:
        words = [name] + ([f"({budget} frames)"] if budget else [])
        words += [] if len(splits) == 1 else ["split" if split else "merged"]
        words += [] if len(panel_modes) == 1 else ["panels" if panels else "no panels"]
        words += [] if pf is None else [f"proposals from {pf or 'keyframes'}"]
        words += [] if len(yaws) == 1 else [f"yaw {yaw}"]
        words += [] if decoding is None else [f"captions {decoding}"]
        return " ".join(words)

    runs = [(column(name, b, split, panels, pf, yaw, dec), path, b, split, panels, pf, yaw, dec)
            for name, path in models for b in budgets for split in splits for panels in panel_modes
            for pf in proposal_frames for yaw in yaws for dec in decodings]
    rooms = [render_demo_room(seed, args.frames, args.width, args.height, args.turn) for seed in range(args.rooms)]
    correct: dict[str, Counter[str]] = {}
    per_room: dict[str, list[int]] = {}
    proposals_ms: dict[str, list[float]] = {}  # per room: the slowest proposals stage (the one that computed them)
    caption_ms: dict[str, list[float]] = {}  # per room: the caption's decode stage
    questions: list[str] = []
    for name, path, budget, split, panels, pf, yaw, decoding in runs:
        correct[name], per_room[name], proposals_ms[name], caption_ms[name] = Counter(), [], [], []
        extra: dict[str, Any] = {} if pf is None else {"proposal_max_frames": pf}
        if decoding is not None:
            extra["caption_decoding"] = decoding
        engine = SceneEngine.load(EngineConfig(model_path=path, max_frames=budget, **extra, scene_yaw=yaw,
                                               proposal_config=ProposalConfig(split_stacked=split,
                                                                              propose_wall_panels=panels)))
        for seed, (spec, frames) in enumerate(rooms):
            engine.reset()  # a fresh scene for every room, one model load per model
            _, rows = ask_demo_room(spec, frames, engine, seed, args.turn)
            for row in rows:
                key = f"Q{row['index']} {row['task']}"
                if key not in questions:
                    questions.append(key)
                correct[name][key] += bool(row.get("correct"))
            per_room[name].append(sum(bool(r.get("correct")) for r in rows))
            proposals_ms[name].append(1000 * max((r.get("timings") or {}).get("proposals_s", 0.0) for r in rows))
            caption_ms[name] += [1000 * (r.get("timings") or {}).get("decode_s", 0.0) for r in rows if r["task"] == "caption"]
    print(f"demo questions answered correctly in {args.rooms} rooms (seeds 0..{args.rooms - 1}, "
          f"{args.frames} frames at {args.width}x{args.height}" + (f", turned {args.turn:g} deg" if args.turn else "") + ")")
    print("| question | " + " | ".join(correct) + " |")
    print("| --- |" + " --- |" * len(correct))
    for key in questions:
        print(f"| {key} | " + " | ".join(f"{correct[name][key]} / {args.rooms}" for name in correct) + " |")
    print("| mean correct per room (of 8) | " + " | ".join(f"{sum(v) / len(v):.2f}" for v in per_room.values()) + " |")
    print("| per room | " + " | ".join(" ".join(map(str, v)) for v in per_room.values()) + " |")
    print("| proposals stage, mean of the slowest query per room (ms) | "
          + " | ".join(f"{sum(v) / len(v):.0f}" for v in proposals_ms.values()) + " |")
    print("| caption decode stage, mean (ms) | "
          + " | ".join(f"{sum(v) / max(len(v), 1):.0f}" for v in caption_ms.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
