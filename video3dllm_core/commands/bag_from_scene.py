"""`video3dllm bag-from-scene SCENE OUT`: record a posed-images scene as a robot-style rosbag2."""

from __future__ import annotations

import argparse

HELP = "write a posed-images scene as a rosbag2 with RealSense topics and a map/odom/base_link TF tree"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bag-from-scene", help=HELP, description=HELP)
    p.add_argument("scene", help="posed-images directory (e.g. made by `video3dllm synth-scene`)")
    p.add_argument("out", help="rosbag2 directory to create (must not exist)")
    p.add_argument(
        "--depth-encoding",
        choices=("16UC1", "32FC1"),
        default="16UC1",
        help="aligned depth as uint16 millimetres (RealSense default) or float32 metres (default 16UC1)",
    )
    p.add_argument("--compressed", action="store_true", help="JPEG colour on .../color/image_raw/compressed")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.bag_writer import write_scene_bag

    summary = write_scene_bag(
        args.scene, args.out, depth_encoding=args.depth_encoding, compressed=args.compressed, storage=args.storage
    )
    counts = ", ".join(f"{t} {n}" for t, n in summary.message_counts.items())
    print(f"wrote {summary.path} ({summary.storage}, {len(summary.image_stamps_ns)} frames): {counts}")
    return 0
