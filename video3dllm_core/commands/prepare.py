"""`video3dllm prepare {sens,scene,frames}`: ScanNet preparation in the upstream processed-data layout.

    video3dllm prepare sens   data/scannet/scans data/scannet/posed_images --stride 10 --workers 8
    video3dllm prepare scene  data/scannet/scans --out data/metadata/scannet_train_gt_box.json --scene-list scannetv2_train.txt
    video3dllm prepare frames data/scannet/posed_images --out data/metadata/scannet_select_frames.json

`sens` exports .sens streams to posed-images folders (upstream generate_image_scannet.py --fast);
`scene` writes ground-truth boxes indexed by objectId from the scan files (extract_scannet_pcd.py +
extract_gt_box.py); `frames` precomputes max-coverage frame picks with the same keyframe code the
robot runs (max_coverage_sampling.py). EmbodiedScan's info pickles are read only with
--trust-pickle; without them axis alignment comes from the scene's txt and intrinsics from
depth_intrinsic.txt. The training package (video3dllm_training) does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "prepare ScanNet: export .sens, ground-truth boxes, max-coverage frame picks"


def _scene_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scenes", nargs="+", default=None, help="only these scene ids")
    g.add_argument("--scene-list", default=None, help="file with one scene id per line (e.g. scannetv2_train.txt)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help=HELP, description=HELP)
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")
    s = sub.add_parser("sens", help="export .sens files to posed-images folders")
    s.add_argument("scans", help="ScanNet scans folder (<scene>/<scene>.sens)")
    s.add_argument("out", help="posed-images root to write (<out>/<scene>/NNNNN.jpg ...)")
    s.add_argument("--stride", type=int, default=10, help="keep every n-th frame (default 10, upstream --fast)")
    s.add_argument("--workers", type=int, default=4, help="parallel processes (default 4)")
    _scene_args(s)
    b = sub.add_parser("scene", help="ground-truth boxes from the scan files (box JSON indexed by objectId)")
    b.add_argument("scans", help="ScanNet scans folder (<scene>/<scene>.txt, _vh_clean_2.ply, aggregation, segs)")
    b.add_argument("--out", required=True, help="box JSON to write, e.g. data/metadata/scannet_train_gt_box.json")
    _scene_args(b)
    f = sub.add_parser("frames", help="max-coverage frame picks per scene (upstream scannet_select_frames.json)")
    f.add_argument("posed_images", help="posed-images root (<root>/<scene>/NNNNN.jpg/.png/.txt)")
    f.add_argument("--out", required=True, help="JSON to write, e.g. data/metadata/scannet_select_frames.json")
    f.add_argument("--max-frames", type=int, default=32, help="frames picked per scene (default 32)")
    f.add_argument("--candidate-stride", type=int, default=2,
                   help="candidates = every n-th frame, all when that leaves fewer than --max-frames (default 2, upstream)")
    f.add_argument("--voxel-size", type=float, default=0.1, help="coverage voxel size in metres (default 0.1)")
    f.add_argument("--path-prefix", default="data/scannet/posed_images", help="prefix of the written frame_files paths")
    f.add_argument("--embodiedscan", nargs="+", default=None,
                   help="EmbodiedScan embodiedscan_infos_*.pkl (or their folder): frame lists and axis alignment as upstream")
    f.add_argument("--trust-pickle", action="store_true", help="allow unpickling --embodiedscan files (pickles can run code)")
    f.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    _scene_args(f)


def _scenes(args: argparse.Namespace) -> list[str] | None:
    if args.scenes:
        return list(args.scenes)
    if args.scene_list:
        path = Path(args.scene_list)
        if not path.is_file():
            raise FileNotFoundError(f"--scene-list {path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


def run(args: argparse.Namespace) -> int:
    from video3dllm_training import prepare

    scenes = _scenes(args)
    if args.step == "sens":
        done = prepare.prepare_sens(args.scans, args.out, frame_stride=args.stride, workers=args.workers, scene_ids=scenes)
        print(f"exported {len(done)} scene(s) to {args.out}")
        return 0
    if args.step == "scene":
        written, dropped = prepare.prepare_scene_boxes(args.scans, args.out, scenes)
        print(f"wrote boxes of {written} scene(s) to {args.out}")
        if dropped:
            print(f"dropped {len(dropped)} scene(s) whose object ids are not 0..n-1 (as upstream): {', '.join(dropped[:10])}",
                  file=sys.stderr)
        return 0
    from video3dllm_training.data import load_embodiedscan_infos

    infos = load_embodiedscan_infos(args.embodiedscan, trust_pickle=args.trust_pickle) if args.embodiedscan else None
    job = prepare.FramesJob(str(args.posed_images), max_frames=args.max_frames, candidate_stride=args.candidate_stride,
                            voxel_size_m=args.voxel_size, path_prefix=args.path_prefix)
    selections = prepare.prepare_frames(args.posed_images, args.out, scenes, infos=infos, job=job, workers=args.workers)
    print(json.dumps({"out": str(args.out), **prepare.coverage_summary(selections)}))
    return 0
