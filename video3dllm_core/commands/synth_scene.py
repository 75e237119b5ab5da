"""`video3dllm synth-scene OUT --seed N`: render a synthetic room to the ScanNet posed-images layout."""

from __future__ import annotations

import argparse

HELP = "render a synthetic RGB-D scene (posed-images layout + objects.json + scene.json)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth-scene", help=HELP, description=HELP)
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="scene seed; the same seed gives the same scene (default 0)")
    p.add_argument("--frames", type=int, default=60, help="number of frames along the camera loop (default 60)")
    p.add_argument("--width", type=int, default=640, help="depth (and colour) width in pixels (default 640)")
    p.add_argument("--height", type=int, default=480, help="depth (and colour) height in pixels (default 480)")
    p.add_argument(
        "--color-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="render colour at another size, same field of view (ScanNet: 1296 968)",
    )
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian colour noise, intensity units (default 0)")
    p.add_argument(
        "--no-axis-align",
        action="store_true",
        help="write world-frame poses and no axis_align_matrix.txt (default: ScanNet-like raw poses + alignment)",
    )


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.synthetic import make_scene, write_synthetic_scene

    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    spec = make_scene(args.seed)
    info = write_synthetic_scene(
        args.out,
        seed=args.seed,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        color_size=tuple(args.color_size) if args.color_size else None,
        axis_align=not args.no_axis_align,
        noise_std=args.noise,
        scene=spec,
    )
    labels = ", ".join(f"{o.colour} {o.label}" for o in spec.objects)
    lx, ly, lz = spec.room_size
    print(
        f"wrote {args.frames} frames to {args.out} in {info['total_s']:.2f} s: "
        f"{lx:.1f} x {ly:.1f} m room with {labels}"
    )
    return 0
