"""Score checkpoints on a synthetic-benchmark split next to the chance/prior baselines.

Used by ``benchmarks/bench_default_model.py`` (the table in docs/benchmarks.md) and by the slow test that
checks the embedded default model still reproduces its recorded accuracy. Each task runs the code of
``video3dllm eval`` (``video3dllm_training.evaluate``) with max-coverage frames: ScanRefer and
Multi3DRefer choose among the split's ground-truth boxes, Scan2Cap captions at the matched detector box.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "evaluate_checkpoint", "baseline_metrics", "headline", "results_table", "relation_breakdown",
           "relation_table", "multi_breakdown", "multi_kind", "multi_kind_breakdown", "multi_kind_table", "multi_table",
           "caption_breakdown", "caption_table"]

TASKS = ("scanrefer", "multi3drefer", "scanqa", "sqa3d", "scan2cap")
FILES = {"scanrefer": "scanrefer_vg", "multi3drefer": "multi3drefer", "scanqa": "scanqa", "sqa3d": "sqa3d",
         "scan2cap": "scan2cap"}
HEADLINE = {"scanrefer": ("acc@0.25", "acc@0.5"), "multi3drefer": ("f1@0.25", "f1@0.5"), "scanqa": ("em",),
            "sqa3d": ("em",), "scan2cap": ("cider",)}


def headline(task: str, metrics: dict[str, Any], group: str = "all") -> dict[str, float]:
    """The numbers the table shows: {metric: value} of one group (overall or a question type)."""
    if task in ("scanrefer", "multi3drefer"):
        return {k: metrics[group][k] for k in HEADLINE[task]} if group in metrics else {}
    if task == "sqa3d":
        return {"em": metrics["em"]["all"]} if group == "all" else {}
    return {k: metrics[k] for k in HEADLINE[task]} if group == "all" else {}


def evaluate_checkpoint(name: str, path: str | Path, bench: Path, split: str, out: Path, limit: int | None,
                        frames_upbound: int, model: Any = None, newline_after_image: bool | None = None,
                        caption_decoding: str = "checkpoint") -> dict[str, Any]:
    """{task: {metrics, questions}} of one checkpoint (answers under out/name/, resumable); the prompt layout
    as `EvalConfig.newline_after_image` (None: the model's config); captions decoded as
    `EvalConfig.caption_decoding` (a listener hears the room's boxes)."""
    from video3dllm_training.evaluate import EvalConfig, evaluate

    meta = bench / "metadata"
    results = {}
    for task in TASKS:
        cfg = EvalConfig(task=task, model=str(path), annotations=str(bench / "processed" / f"{FILES[task]}_{split}_llava_style.json"),
                         posed_images=str(bench / "posed_images"), answers=str(out / name / f"{task}.jsonl"),
                         boxes=str(meta / f"scannet_{split}_gt_box.json") if task in ("scanrefer", "multi3drefer", "scan2cap") else None,
                         frames_file=str(meta / "scannet_select_frames.json"), frame_strategy="mc",
                         frames_upbound=frames_upbound, batch_size=64, max_new_tokens=24, limit=limit, device="cpu",
                         meteor=False, progress=False, newline_after_image=newline_after_image,
                         caption_decoding=caption_decoding)
        result = evaluate(cfg, model=model)
        results[task] = {"metrics": result.metrics, "questions": result.total}
        print(f"  {name} {task}: {result.total} questions, {result.seconds:.1f} s", file=sys.stderr)
    return results


def baseline_metrics(bench: Path, split: str, limit: int | None) -> dict[str, Any]:
    """{task: {metrics}} of the chance/prior baselines on the same questions."""
    from video3dllm_training.baselines import chance_metrics
    from video3dllm_training.data import load_box_file
    from video3dllm_training.data.annotations import load_annotations
    from video3dllm_training.evaluate import unique_questions

    boxes = load_box_file(bench / "metadata" / f"scannet_{split}_gt_box.json")
    out = {}
    for task in TASKS:
        anns = load_annotations(bench / "processed" / f"{FILES[task]}_{split}_llava_style.json")
        if limit is not None:  # the same questions the evaluation answers
            keep = {q.question_id for q in unique_questions(anns)[:limit]}
            anns = [a for a in anns if a.question_id in keep]
        train = load_annotations(bench / "processed" / f"{FILES[task]}_train_llava_style.json")
        out[task] = {"metrics": chance_metrics(task, anns, boxes, train)}
    return out


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per task, question type and metric; one column per model (values x100)."""
    names = list(results)
    lines = ["| task | group | metric | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for task in TASKS:
        metrics = results[names[0]][task]["metrics"]
        groups = ["all"] + sorted(g for g in metrics if isinstance(metrics.get(g), dict) and "count" in metrics[g]
                                  and g != "all") if task in ("scanrefer", "multi3drefer") else ["all"]
        for group in groups:
            for metric in HEADLINE[task]:
                cells = []
                for name in names:
                    value = headline(task, results[name][task]["metrics"], group).get(metric)
                    cells.append("" if value is None else f"{100 * value:.1f}")
                count = metrics.get(group, {}).get("count") if isinstance(metrics.get(group), dict) else None
                label = group if count is None else f"{group} ({int(count)})"
                lines.append(f"| {task} | {label} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)




def relation_breakdown(bench: Path, split: str, answers: Path) -> dict[str, float]:
    """What a model does with ScanRefer's relation descriptions ("the plant closest to the door"), from its
    answers JSONL: how often it picks an object of the named label (``right_label``), how often the right one
    (``accuracy``), how often the right one among its right-label picks (``accuracy_given_label``), against
    ``same_label_chance`` (mean of 1 / objects of the target's label: a uniform pick among them). Accuracy
    at that chance means the label was found and the relation not resolved (fractions; ``descriptions``: count).
    """
    from video3dllm_training.data import load_box_file
    from video3dllm_training.data.annotations import load_annotations
    from video3dllm_training.evaluate import read_answers
    from video3dllm_training.relations import load_scene_objects

    anns = load_annotations(bench / "processed" / f"scanrefer_vg_{split}_llava_style.json")
    target = {a.question_id: a.object_ids[0] for a in anns}
    boxes = load_box_file(bench / "metadata" / f"scannet_{split}_gt_box.json")
    objects: dict[str, Any] = {}
    n = right_label = correct = 0
    chance = 0.0
    for row in read_answers(answers):
        if row.get("question_type") != "relation":
            continue
        scene = row["scene_id"]
        if scene not in objects:
            objects[scene] = load_scene_objects(bench / "posed_images", scene, len(boxes[scene]))
        labels = [o.label for o in objects[scene]]
        want = target[str(row["sample_id"])]
        n += 1
        chance += 1 / labels.count(labels[want])
        right_label += labels[int(row["pred_index"])] == labels[want]
        correct += int(row["pred_index"]) == want
    if n == 0:
        raise ValueError(f"{answers}: no ScanRefer answers with question_type 'relation'")
    return {"descriptions": n, "right_label": right_label / n, "accuracy": correct / n,
            "accuracy_given_label": correct / right_label if right_label else 0.0, "same_label_chance": chance / n}


def _multi_answers(answers: Path) -> list[tuple[dict[str, Any], bool, float]]:
    """Each Multi3DRefer answer with whether it is the empty set and its F1@0.25 (raises when there is none)."""
    from video3dllm_training.evaluate import read_answers
    from video3dllm_training.metrics.boxes import multi3drefer_query_f1

    rows = [(row, not row["pred_response"], multi3drefer_query_f1(row["pred_response"], row["gt_response"], (0.25,))[0.25])
            for row in read_answers(answers)]
    if not rows:
        raise ValueError(f"{answers}: no Multi3DRefer answers")
    return rows


def _multi_counts(rows: list[tuple[bool, float]]) -> dict[str, float]:
    """``descriptions``, ``answered_nothing``, ``exact`` and ``f1`` of (empty answer, F1@0.25) pairs."""
    return {"descriptions": len(rows), "answered_nothing": sum(e for e, _ in rows) / len(rows),
            "exact": sum(f == 1.0 for _, f in rows) / len(rows), "f1": sum(f for _, f in rows) / len(rows)}


def multi_breakdown(answers: Path) -> dict[str, dict[str, float]]:
    """Multi3DRefer answers (JSONL of ``video3dllm eval``) grouped by how many objects the description
    means ("none", "one", "several"): ``descriptions`` (count), ``answered_nothing`` (fraction whose answer
    is the empty set), ``exact`` (fraction with every target found and nothing else, F1@0.25 = 1) and
    ``f1`` (mean F1@0.25). Says whether a low F1 is wrong objects or no answer at all."""
    groups: dict[str, list[tuple[bool, float]]] = {"none": [], "one": [], "several": []}
    for row, empty, f1 in _multi_answers(answers):
        truth = row["gt_response"]
        groups["none" if not truth else "one" if len(truth) == 1 else "several"].append((empty, f1))
    return {name: _multi_counts(rows) for name, rows in groups.items() if rows}


def multi_kind(description: str) -> str:
    """What a synthetic Multi3DRefer description names (the generator's six templates): "colour" ("all the
    pink objects."), "label" ("all the chairs."), "colour + label" ("all the pink chairs."), "shape" ("all the
    round objects."), "on" ("all the objects on the table.") or "within" ("all the objects within 1.5 metres
    of the door."); "other" for any other "all the objects ..." description."""
    from video3dllm_core.synthetic import COLOURS

    words = description.lower().strip().rstrip(".").split()
    if words[:2] != ["all", "the"] or len(words) < 3:
        raise ValueError(f"{description!r} is not a synthetic Multi3DRefer description ('all the ...')")
    rest = words[2:]
    if rest[0] == "objects" and len(rest) > 1:
        return {"on": "on", "within": "within"}.get(rest[1], "other")
    if rest == ["round", "objects"]:
        return "shape"
    if rest[0] in COLOURS:
        return "colour" if rest[1:] == ["objects"] else "colour + label"
    return "label"


def multi_kind_breakdown(answers: Path) -> dict[str, dict[str, float | None]]:
    """Multi3DRefer answers grouped by :func:`multi_kind` of their description, with the counts of
    :func:`multi_breakdown` (and ``with_targets``: how many of the descriptions mean at least one object).
    Says which kind of description a model cannot answer (the demo's "all the pink objects." is "colour").
    ``score_change``: over every two descriptions of the same kind in the same room (e.g. "all the pink
    objects." and "all the green objects."), the largest change of a candidate's score, median over the pairs
    (None without such a pair): near 0 when the words that differ do not reach the grounding head."""
    import itertools

    import numpy as np

    from video3dllm_training.data.dataset import grounding_description

    groups: dict[str, list[tuple[bool, float]]] = {}
    with_targets: dict[str, int] = {}
    scores: dict[tuple[str, str], list[np.ndarray]] = {}
    for row, empty, f1 in _multi_answers(answers):
        kind = multi_kind(grounding_description(row["prompt"]))
        groups.setdefault(kind, []).append((empty, f1))
        with_targets[kind] = with_targets.get(kind, 0) + bool(row["gt_response"])
        scores.setdefault((kind, str(row["scene_id"])), []).append(np.asarray(row["scores"], dtype=np.float64))

    def score_change(kind: str) -> float | None:
        changes = [float(np.abs(a - b).max()) for (k, _), rows in scores.items() if k == kind
                   for a, b in itertools.combinations(rows, 2)]
        return float(np.median(changes)) if changes else None

    return {name: {**_multi_counts(rows), "with_targets": with_targets[name], "score_change": score_change(name)}
            for name, rows in sorted(groups.items())}


def multi_kind_table(breakdowns: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """Markdown table of :func:`multi_kind_breakdown` per model and kind of description (values x100 except the
    score change)."""
    lines = ["| model | description names | descriptions (with targets) | answered nothing | exact set | F1@0.25 | "
             "score change (not x100) |", "|---|---|---|---|---|---|---|"]
    for name, groups in breakdowns.items():
        for group, b in groups.items():
            change = "-" if b["score_change"] is None else f"{b['score_change']:.3f}"
            n, with_targets, nothing, exact, f1 = (float(b[k] or 0.0) for k in
                                                   ("descriptions", "with_targets", "answered_nothing", "exact", "f1"))
            lines.append(f"| {name} | {group} | {int(n)} ({int(with_targets)}) | "
                         f"{100 * nothing:.1f} | {100 * exact:.1f} | {100 * f1:.1f} | {change} |")
    return "\n".join(lines)


def multi_table(breakdowns: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of :func:`multi_breakdown` per model and target count (values x100)."""
    lines = ["| model | targets | descriptions | answered nothing | exact set | F1@0.25 |", "|---|---|---|---|---|---|"]
    for name, groups in breakdowns.items():
        for group, b in groups.items():
            lines.append(f"| {name} | {group} | {int(b['descriptions'])} | {100 * b['answered_nothing']:.1f} | "
                         f"{100 * b['exact']:.1f} | {100 * b['f1']:.1f} |")
    return "\n".join(lines)


def caption_breakdown(answers: Path) -> dict[str, float]:
    """Scan2Cap answers (JSONL of ``video3dllm eval`` on a synthetic benchmark) by what the caption gets
    right: ``captions`` (count), ``colour`` / ``label`` (fraction whose caption starts "a <colour> <label>"
    with the object's colour / label, read off the plain reference "a <colour> <label>." - the shortest
    one), ``object`` (both) and ``exact`` (the caption equals one of the references, case and a final full
    stop ignored: what `video3dllm demo` counts as correct). CIDEr alone does not say whether the object
    was named."""
    from video3dllm_core.commands.demo import answer_words
    from video3dllm_training.evaluate import read_answers

    rows = [r for r in read_answers(answers) if r.get("gt_response")]
    if not rows:
        raise ValueError(f"{answers}: no Scan2Cap answers with references")
    counts = {"colour": 0, "label": 0, "object": 0, "exact": 0}
    for row in rows:
        refs = [answer_words(str(r)).split() for r in row["gt_response"]]
        plain = min(refs, key=len)
        if len(plain) < 3 or plain[0] != "a":
            raise ValueError(f"{answers}: row {row.get('question_id', row.get('id'))}: no plain reference "
                             f"'a <colour> <label>.' among {row['gt_response']}")
        colour, label = plain[1], plain[2:]
        pred = answer_words(str(row.get("pred_response") or "")).split()
        colour_ok = pred[:2] == ["a", colour]
        label_ok = pred[2:2 + len(label)] == label
        counts["colour"] += colour_ok
        counts["label"] += label_ok
        counts["object"] += colour_ok and label_ok
        counts["exact"] += pred in refs
    return {"captions": len(rows), **{k: v / len(rows) for k, v in counts.items()}}


def caption_table(breakdowns: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`caption_breakdown` per model (values x100)."""
    lines = ["| model | captions | right colour | right label | both | exact caption |", "|---|---|---|---|---|---|"]
    for name, b in breakdowns.items():
        lines.append(f"| {name} | {int(b['captions'])} | {100 * b['colour']:.1f} | {100 * b['label']:.1f} | "
                     f"{100 * b['object']:.1f} | {100 * b['exact']:.1f} |")
    return "\n".join(lines)


def relation_table(breakdowns: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`relation_breakdown` per model (values x100)."""
    lines = ["| model | right label | right object | right object among right-label picks | same-label chance |",
             "|---|---|---|---|---|"]
    for name, b in breakdowns.items():
        lines.append(f"| {name} | {100 * b['right_label']:.1f} | {100 * b['accuracy']:.1f} | "
                     f"{100 * b['accuracy_given_label']:.1f} | {100 * b['same_label_chance']:.1f} |")
    return "\n".join(lines)
