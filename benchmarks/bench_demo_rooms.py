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
        [--record video3dllm_core/default_model/results.json]       # the embedded model's counts, for the slow test

Without --model: the embedded default model. ~1 s per room on one core at 640x480.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from video3dllm_core.commands.demo import DemoRoomsScore, render_demo_room, score_demo_rooms  # noqa: E402
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
    p.add_argument("--record", default=None, metavar="RESULTS_JSON",
                   help="write the counts (one column only: the embedded model with the engine's defaults) into the "
                        "'demo' block of this results.json (video3dllm_core/default_model/results.json is what the "
                        "slow test reproduces)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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

    if args.record and (args.model or args.max_frames or args.stacked != "split" or args.panels != "on"
                        or args.proposal_frames or args.turn or args.scene_yaw != "walls" or args.caption_decoding):
        raise SystemExit("--record measures the embedded default model as `video3dllm demo` runs it: "
                         "no --model, --max-frames, --stacked, --panels, --proposal-frames, --turn, --scene-yaw or "
                         "--caption-decoding")
    runs = [(column(name, b, split, panels, pf, yaw, dec), path, b, split, panels, pf, yaw, dec)
            for name, path in models for b in budgets for split in splits for panels in panel_modes
            for pf in proposal_frames for yaw in yaws for dec in decodings]
    seeds = list(range(args.rooms))
    rooms = [render_demo_room(seed, args.frames, args.width, args.height, args.turn) for seed in seeds]
    scores: dict[str, DemoRoomsScore] = {}
    for name, path, budget, split, panels, pf, yaw, decoding in runs:
        extra: dict[str, Any] = {} if pf is None else {"proposal_max_frames": pf}
        if decoding is not None:
            extra["caption_decoding"] = decoding
        engine = SceneEngine.load(EngineConfig(model_path=path, max_frames=budget, **extra, scene_yaw=yaw,
                                               proposal_config=ProposalConfig(split_stacked=split,
                                                                              propose_wall_panels=panels)))
        scores[name] = score_demo_rooms(engine, seeds, args.frames, args.width, args.height, args.turn, rooms=rooms)
    questions = list(next(iter(scores.values())).correct)
    print(f"demo questions answered correctly in {args.rooms} rooms (seeds 0..{args.rooms - 1}, "
          f"{args.frames} frames at {args.width}x{args.height}" + (f", turned {args.turn:g} deg" if args.turn else "") + ")")
    print("| question | " + " | ".join(scores) + " |")
    print("| --- |" + " --- |" * len(scores))
    for key in questions:
        print(f"| {key} | " + " | ".join(f"{score.correct[key]} / {args.rooms}" for score in scores.values()) + " |")
    print("| mean correct per room (of 8) | " + " | ".join(f"{score.mean:.2f}" for score in scores.values()) + " |")
    print("| per room | " + " | ".join(" ".join(map(str, score.per_room)) for score in scores.values()) + " |")
    print("| proposals stage, mean of the slowest query per room (ms) | "
          + " | ".join(f"{sum(score.proposals_ms) / len(score.proposals_ms):.0f}" for score in scores.values()) + " |")
    print("| caption decode stage, mean (ms) | "
          + " | ".join(f"{sum(score.caption_ms) / max(len(score.caption_ms), 1):.0f}" for score in scores.values()) + " |")
    if args.record:
        record(Path(args.record), args, next(iter(scores.values())))
        print(f"recorded the demo's counts in {args.record}")
    return 0


def record(path: Path, args: argparse.Namespace, score: DemoRoomsScore) -> None:
    """Merge the counts into the "demo" block of a results.json (the embedded model's: what the slow test
    `test_default_model_accuracy.py` reproduces and `video3dllm demo` quotes)."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data["demo"] = {
        "command": "python benchmarks/bench_demo_rooms.py " + " ".join(shlex.quote(a) for a in (args.argv or [])),
        "seeds": score.seeds, "frames": args.frames, "width": args.width, "height": args.height, "turn_deg": args.turn,
        "correct": score.correct, "per_room": score.per_room, "mean": round(score.mean, 4),
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
