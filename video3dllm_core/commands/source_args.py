"""The recording options shared by the commands that read a rosbag2 or posed-images source.

`select-frames` and `replay` both open their input with `video3dllm_core.sources.open_source`;
the bag options (topics, world frame, sync slop) are declared and passed on here, once, so the
two commands accept the same flags with the same defaults. This is a helper module, not a
sub-command (the CLI registry in video3dllm_core.cli lists the commands explicitly).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_source_arguments", "source_options"]


def add_source_arguments(parser: argparse.ArgumentParser, world_frame_help: str) -> None:
    """Add the "rosbag2 options" group: --world-frame, --rgb-topic, --depth-topic, --info-topic, --sync-slop.

    Every default is None, meaning "the source's own default" (realsense-ros 4.x topics, map, 0.02 s),
    so that `source_options` can hand on only what the user gave.
    """
    bag = parser.add_argument_group("rosbag2 options (defaults: realsense-ros 4.x topics)")
    bag.add_argument("--world-frame", default=None, help=world_frame_help)
    bag.add_argument("--rgb-topic", default=None, help="colour topic, Image or CompressedImage")
    bag.add_argument("--depth-topic", default=None, help="depth topic (aligned to colour)")
    bag.add_argument("--info-topic", default=None, help="camera_info of the depth topic")
    bag.add_argument("--sync-slop", type=float, default=None, help="colour/depth pairing slop in seconds (default 0.02)")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """`open_source` keyword arguments for the options the user gave (None ones are left out), so a
    posed-images directory is not handed bag options and a bag keeps its defaults."""
    options = {
        "world_frame": args.world_frame,
        "rgb_topic": args.rgb_topic,
        "depth_topic": args.depth_topic,
        "info_topic": args.info_topic,
        "sync_slop_s": args.sync_slop,
    }
    return {k: v for k, v in options.items() if v is not None}
