"""The `video3dllm` command line: one entry point, one module per sub-command.

Each sub-command module exposes `add_parser(subparsers)` and `run(args) -> int`. Modules are
imported lazily so that `video3dllm --help` stays fast and a broken optional dependency only
affects the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "video3dllm_core.commands.demo",
    "synth-scene": "video3dllm_core.commands.synth_scene",
    "bag-from-scene": "video3dllm_core.commands.bag_from_scene",
    "select-frames": "video3dllm_core.commands.select_frames",
    "prepare": "video3dllm_core.commands.prepare",
    "train": "video3dllm_core.commands.train",
    "eval": "video3dllm_core.commands.evaluate",
    "make-benchmark": "video3dllm_core.commands.make_benchmark",
    "init-model": "video3dllm_core.commands.init_model",
    "pretrain-tower": "video3dllm_core.commands.pretrain_tower",
    "replay": "video3dllm_core.commands.replay",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video3dllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as exc:
        # Bad input: a clear one-line message and a non-zero exit, not a traceback.
        print(f"video3dllm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
