"""`video3dllm demo`: a synthetic room streamed through the scene engine, questioned, and checked.

Renders a seeded room of the synthetic benchmark (`make_benchmark_scene`: exact depth, poses and
object boxes; seed 0 is none of the embedded model's training rooms), places it in a robot-like
`map` frame 20 m from the origin (a pure translation, so the axis-aligned ground-truth boxes stay
axis-aligned), streams the frames one by one into `SceneEngine` exactly as `video3dllm replay` does
with a recording, and asks questions of every task type drawn from the benchmark's templates for
this room (`scene_annotations`: attribute and relation grounding, a Multi3DRefer set, counting and
relation QA, a situated question, a caption at an object's centre, one "auto"), whose exact answers
come from the scene. One grounding question is asked half-way through the stream as well, to show
what the engine knows at that moment.

Each answer is printed next to the truth (boxes with their 3D IoU, expected words) and marked
CORRECT or WRONG, then the count of correct answers, the keyframe selection and latencies; the
replay report (answers.jsonl, summary.json, report.html + PNGs, correct/wrong boxes) goes to --out.

Without --model the embedded default model answers: a small Video-3D LLM trained on such rooms
(its measured accuracy is printed first, from its results.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

HELP = "render a synthetic room, stream it through the scene engine, ask questions, write a report"
# Where the synthetic room sits in the robot's map: far from the origin, like a real map.
T_MAP_WORLD_XYZ = (20.0, -12.0, 0.0)


def default_model_note() -> str:
    """What the embedded default model is and how well it does on held-out rooms and in this demo over ten
    rooms (from its results.json)."""
    from video3dllm_core.default_model import default_model_parameters, default_model_results
    from video3dllm_training.synthetic_eval import headline

    recorded = default_model_results()
    results = recorded["test"]["results"]
    ours, chance = results["default"], results["chance/prior"]

    def pct(task: str, key: str, block: dict[str, Any]) -> str:
        return f"{100 * headline(task, block[task]['metrics'])[key]:.0f} %"

    demo = recorded.get("demo")
    demo_words = "" if not demo else (
        f" Over rooms {demo['seeds'][0]}-{demo['seeds'][-1]} this demo gets {demo['mean']:.1f} of its "
        f"{len(demo['correct'])} answers right on average ({min(demo['per_room'])} to {max(demo['per_room'])} per room).")
    return (f"NOTE: the embedded default model is a small Video-3D LLM ({default_model_parameters() / 1e6:.1f} M "
            "parameters) trained on CPU on rendered rooms like this one (docs/training.md); it knows nothing else. "
            f"On held-out rooms it grounds {pct('scanrefer', 'acc@0.25', ours)} of referring expressions (chance "
            f"{pct('scanrefer', 'acc@0.25', chance)}) and answers {pct('scanqa', 'em', ours)} of questions exactly "
            f"(answer prior {pct('scanqa', 'em', chance)}).{demo_words} "
            "Pass --model PATH for a real Video-3D LLM checkpoint.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--out", default="video3dllm_demo_out", help="output directory (default ./video3dllm_demo_out)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--frames", type=int, default=40, help="frames along the camera loop (default 40)")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height (default 480)")
    p.add_argument("--turn", type=float, default=0.0, metavar="DEG",
                   help="turn the room by DEG degrees about up in the map frame (walls oblique to the map's axes, "
                        "as in a robot's map; default 0)")
    from video3dllm_core.commands.replay import add_caption_decoding_argument, add_scene_yaw_argument

    add_scene_yaw_argument(p)
    add_caption_decoding_argument(p)


def _name(obj: Any) -> str:
    return f"{obj.colour} {obj.label}"


def _truth_box(box: Any, label: str, T_map_world: np.ndarray) -> dict[str, Any]:
    """An objects.json box in the map frame: moved by T_map_world, and when that turns the room, the
    axis-aligned box around the turned box (what axis-aligned answers can match)."""
    from video3dllm_core.geometry import transform_box_hulls

    values = np.asarray([float(v) for v in box], dtype=np.float64)
    center, size = transform_box_hulls(T_map_world, values[:3], values[3:6])
    return {"label": label, "center_xyz": [float(v) for v in center], "size_xyz": [float(v) for v in size]}


def demo_map_pose(turn_deg: float = 0.0) -> np.ndarray:
    """T_map_world of the demo room: at T_MAP_WORLD_XYZ, turned by turn_deg about up around the room's centre
    (a robot's map frame has no relation to the room's walls)."""
    a = np.radians(turn_deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = T_MAP_WORLD_XYZ
    return T


def _question(human: str, suffix: str) -> str:
    return human.removeprefix("<image>").strip().removesuffix(suffix).strip()


def demo_queries(spec: Any, T_map_world: np.ndarray, mid_s: float, seed: int) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """Questions of every task drawn from the synthetic benchmark's templates for this room
    (``scene_annotations``: the phrasings the embedded model was trained on, exact answers computed from
    the scene), and the truth of each (by index).

    Truth: {"boxes": [...]} for grounding and captioning (the object meant), {"text": ...} for the
    expected answer words.
    """
    from video3dllm_core.model.prompts import Task
    from video3dllm_core.queries import QuerySpec
    from video3dllm_training.data.dataset import grounding_description
    from video3dllm_training.synthetic_benchmark import scene_annotations

    anns = scene_annotations(spec, "demo", "test", seed=seed)
    by_id = {o.id: o for o in spec.objects}

    def first(task: Task, qtype: str | None = None) -> dict[str, Any]:
        """The first question of that type (any question of the task when the room has none)."""
        items = [a for a in anns[task] if qtype is None or a["metadata"]["question_type"] == qtype]
        return (items or anns[task])[0]

    def boxes_of(ann: dict[str, Any]) -> list[dict[str, Any]]:
        """ScanRefer: one object id and one box; Multi3DRefer: lists of both (possibly empty)."""
        ids, boxes = ann["metadata"]["object_id"], ann["box"]
        if not isinstance(ids, list):
            ids, boxes = [ids], [boxes]
        return [_truth_box(box, _name(by_id[i]), T_map_world) for i, box in zip(ids, boxes)]

    ref_attr, ref_rel = first(Task.SCANREFER, "attribute"), first(Task.SCANREFER, "relation")
    multi = first(Task.MULTI3DREFER, "attribute")
    qa_count, qa_rel = first(Task.SCANQA, "count"), first(Task.SCANQA, "relation")
    sqa = first(Task.SQA3D, "relation")
    cap = first(Task.SCAN2CAP)
    qa_suffix, sqa_suffix = "Answer the question simply.", "Answer the question using a single word or phrase."
    situation_and_question = _question(sqa["conversations"][0]["value"], sqa_suffix)
    situation, _, question = situation_and_question.partition(". ")
    target = _truth_box(cap["gt_box"], _name(by_id[cap["metadata"]["object_id"]]), T_map_world)
    specs = [
        QuerySpec(0, grounding_description(ref_attr["conversations"][0]["value"]), "ground", at_s=mid_s),
        QuerySpec(1, grounding_description(ref_attr["conversations"][0]["value"]), "ground"),
        QuerySpec(2, grounding_description(ref_rel["conversations"][0]["value"]), "ground"),
        QuerySpec(3, grounding_description(multi["conversations"][0]["value"]), "ground_multi"),
        QuerySpec(4, _question(qa_count["conversations"][0]["value"], qa_suffix), "qa"),
        QuerySpec(5, _question(qa_rel["conversations"][0]["value"], qa_suffix), "auto"),
        QuerySpec(6, question, "situated_qa", situation=situation + "."),
        QuerySpec(7, "Describe the object at this location.", "caption",
                  target_xyz=tuple(target["center_xyz"])),  # type: ignore[arg-type]
    ]
    truth: dict[int, dict[str, Any]] = {
        0: {"boxes": boxes_of(ref_attr)},
        1: {"boxes": boxes_of(ref_attr)},
        2: {"boxes": boxes_of(ref_rel)},
        3: {"boxes": boxes_of(multi)},
        4: {"text": qa_count["conversations"][1]["value"]},
        5: {"text": qa_rel["conversations"][1]["value"]},
        6: {"text": sqa["conversations"][1]["value"]},
        7: {"boxes": [target], "text": cap["conversations"][1]["value"], "alternatives": cap.get("annotations", [])},
    }
    return specs, truth


def answer_words(text: str) -> str:
    """An answer as the demo compares it: lower case, a final full stop dropped, single spaces."""
    return " ".join(text.lower().strip().rstrip(".").split())


def add_truth(row: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The answers.jsonl row with `ground_truth` boxes, `expected_text` (and `also_accepted`: a caption's other
    references), each object's best IoU and `correct`.

    `correct`: grounding and captioning: every predicted box has IoU >= CORRECT_IOU with a true box and
    every true box is found (for one target: the chosen box is right); text answers: the words equal
    the expected answer (case and a final full stop ignored; a caption may match any of its references).
    None when the row failed.
    """
    from video3dllm_core.geometry import box_iou_3d
    from video3dllm_core.report import CORRECT_IOU

    row = dict(row)
    boxes = truth.get("boxes", [])
    row["ground_truth"] = boxes
    row["expected_text"] = truth.get("text")
    if truth.get("text") is not None:  # the other references a caption may match (the benchmark's annotations)
        row["also_accepted"] = [t for t in dict.fromkeys(truth.get("alternatives", []))
                                if answer_words(t) != answer_words(truth["text"])]
    checks: list[bool] = []
    if boxes and row.get("task") != "caption":
        gt = np.array([b["center_xyz"] + b["size_xyz"] for b in boxes], dtype=np.float64)
        pred = np.array([o["center_xyz"] + o["size_xyz"] for o in row["objects"]], dtype=np.float64).reshape(-1, 6)
        ious = box_iou_3d(pred[:, None], gt[None])  # [predicted, true]
        row["objects"] = [{**obj, "iou": float(ious[k].max())} for k, obj in enumerate(row["objects"])]
        every_box_right = bool((ious.max(axis=1) >= CORRECT_IOU).all())
        every_truth_found = bool((ious.max(axis=0, initial=0.0) >= CORRECT_IOU).all())
        checks.append(len(pred) > 0 and every_box_right and every_truth_found)
    elif row.get("task") in ("ground", "ground_multi") and not boxes:
        checks.append(not row["objects"])  # "no object" is the right answer
    if truth.get("text") is not None:
        expected = [truth["text"], *truth.get("alternatives", [])]
        checks.append(answer_words(str(row.get("text", ""))) in {answer_words(t) for t in expected})
    row["correct"] = None if row.get("error") else all(checks)
    return row


def _print_row(row: dict[str, Any]) -> None:
    from video3dllm_core.commands.replay import print_answer

    print_answer(row)
    for gt in row.get("ground_truth") or []:
        c, s = gt["center_xyz"], gt["size_xyz"]
        print(f"   truth: {gt['label']} centre ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) size ({s[0]:.2f}, {s[1]:.2f}, {s[2]:.2f})")
    if row.get("expected_text"):
        also = row.get("also_accepted") or []
        print(f"   expected: {row['expected_text']!r}" + (f" (also accepted: {', '.join(map(repr, also))})" if also else ""))
    if row.get("correct") is not None:
        print(f"   -> {'CORRECT' if row['correct'] else 'WRONG'}")


def render_demo_room(seed: int, frames: int, width: int, height: int, turn_deg: float = 0.0) -> tuple[Any, list[Any]]:
    """The benchmark room of `seed` and its rendered frames, placed in the `map` frame by `demo_map_pose(turn_deg)`."""
    from video3dllm_core.synthetic import render_frames
    from video3dllm_training.synthetic_benchmark import make_benchmark_scene

    if frames < 2:
        raise ValueError(f"--frames must be at least 2, got {frames}")
    spec = make_benchmark_scene(seed)
    T_map_world = demo_map_pose(turn_deg)
    return spec, [dataclasses.replace(f, T_world_cam=T_map_world @ f.T_world_cam)
                  for f in render_frames(spec, frames, width, height)]


def ask_demo_room(spec: Any, frames: list[Any], engine: Any, seed: int,
                  turn_deg: float = 0.0) -> tuple[Any, list[dict[str, Any]]]:
    """Stream the frames (rendered with the same `turn_deg`) through the (fresh) engine, ask `demo_queries`, and
    check every answer: (replay result, answers.jsonl rows with the truth and `correct`, see `add_truth`)."""
    from video3dllm_core.replay import replay

    duration_s = (frames[-1].stamp_ns - frames[0].stamp_ns) / 1e9
    queries, truth = demo_queries(spec, demo_map_pose(turn_deg), mid_s=round(duration_s / 2, 3), seed=seed)
    result = replay(frames, engine, queries, rate="max")
    return result, [add_truth(r.to_dict(), truth[r.spec.index]) for r in result.records]


@dataclasses.dataclass
class DemoRoomsScore:
    """How many of the demo's answers were right over several rooms (`score_demo_rooms`)."""

    seeds: list[int]
    correct: dict[str, int]  # "Q<index> <task>" -> rooms that got it right
    per_room: list[int]  # right answers of each room, in seed order
    proposals_ms: list[float]  # per room: the slowest proposals stage (the query that computed them)
    caption_ms: list[float]  # per room: the caption's decode stage

    @property
    def mean(self) -> float:
        """Mean number of right answers per room."""
        return sum(self.per_room) / max(len(self.per_room), 1)


def score_demo_rooms(engine: Any, seeds: list[int], frames: int = 40, width: int = 640, height: int = 480,
                     turn_deg: float = 0.0, rooms: list[tuple[Any, list[Any]]] | None = None) -> DemoRoomsScore:
    """`video3dllm demo` on each seed's room (render, stream through `engine`, reset before each room, ask
    `demo_queries`, check with `add_truth`), counted. `rooms`: already rendered (spec, frames) per seed."""
    score = DemoRoomsScore(list(seeds), {}, [], [], [])
    for k, seed in enumerate(seeds):
        spec, room_frames = rooms[k] if rooms is not None else render_demo_room(seed, frames, width, height, turn_deg)
        engine.reset()  # a fresh scene for every room, one model load for all
        _, rows = ask_demo_room(spec, room_frames, engine, seed, turn_deg)
        for row in rows:
            key = f"Q{row['index']} {row['task']}"
            score.correct[key] = score.correct.get(key, 0) + bool(row.get("correct"))
        score.per_room.append(sum(bool(r.get("correct")) for r in rows))
        score.proposals_ms.append(1000 * max((r.get("timings") or {}).get("proposals_s", 0.0) for r in rows))
        score.caption_ms += [1000 * (r.get("timings") or {}).get("decode_s", 0.0) for r in rows if r["task"] == "caption"]
    return score


def run(args: argparse.Namespace) -> int:
    from video3dllm_core.commands.replay import load_engine
    from video3dllm_core.replay import build_summary, write_outputs

    notes = [default_model_note()] if args.model is None else []
    for note in notes:
        print(note)
        print()
    t_start = time.perf_counter()
    spec, frames = render_demo_room(args.seed, args.frames, args.width, args.height, args.turn)
    t_render = time.perf_counter() - t_start
    objects = [o for o in spec.objects if o.placement == "floor"]
    lx, ly, lz = spec.room_size
    x_m, y_m = T_MAP_WORLD_XYZ[:2]
    print(
        f"scene seed {args.seed}: {lx:.1f} x {ly:.1f} x {lz:.1f} m room at map ({x_m:.0f}, {y_m:.0f})"
        + (f" turned {args.turn:g} deg" if args.turn else "") + " with "
        + ", ".join(_name(o) for o in objects)
    )
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {t_render:.2f} s")

    t0 = time.perf_counter()
    engine = load_engine(args, args.model)
    t_load = time.perf_counter() - t0
    print(f"loaded the {'embedded default' if args.model is None else args.model} model in {t_load:.2f} s")
    result, rows = ask_demo_room(spec, frames, engine, args.seed, args.turn)
    summary = build_summary(result, engine, f"synthetic scene seed {args.seed} ({len(frames)} frames)", {}, "map")
    print()
    for row in rows:
        _print_row(row)
    checked = [r["correct"] for r in rows if r.get("correct") is not None]
    print(f"{sum(checked)} of {len(rows)} answers correct against the scene's ground truth "
          f"(boxes: IoU >= 0.25; words: exact)")
    print()

    names = {int(f.stamp_ns): f.name for f in frames}
    stats = engine.stats()
    keyframes = engine.keyframe_poses()
    cfg = getattr(engine, "config", None)
    print(
        f"keyframes: {len(keyframes)} of {stats.pool_size} pooled frames "
        f"(strategy {getattr(cfg, 'strategy', '?')}, budget {engine.frame_budget}), "
        f"coverage {stats.last_coverage:.1%} of {stats.voxels_total} voxels: "
        + " ".join(str(names.get(int(s), s)) for s, _ in keyframes)
    )
    from video3dllm_core.commands.replay import print_summary

    print_summary(summary)
    files = write_outputs(args.out, result, engine, summary, rows, title=f"video3dllm demo: synthetic scene seed {args.seed}",
                          notes=notes)
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - t_start:.1f} s")
    return 0
