"""Synthetic benchmark v2: exact 3D relations, ambiguity rejection, seeded splits, loadable files.

Relations are checked on hand-built scenes whose answers are obvious by construction; generated
relation questions are re-answered from objects.json with an independent implementation (plain
numpy on the JSON, not `video3dllm_training.relations`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from video3dllm_core.model.prompts import Task
from video3dllm_core.synthetic import COLOURS, SceneObject
from video3dllm_training import relations as rel
from video3dllm_training.data import load_annotations, load_box_file
from video3dllm_training.synthetic_benchmark import (
    ANNOTATION_FILES,
    GENERATOR_VERSION,
    QUESTION_TYPES,
    ROUND_SHAPES,
    assign_splits,
    make_benchmark,
    make_benchmark_scene,
    scene_annotations,
)


def _o(i: int, label: str, xy: tuple[float, float], size: tuple[float, float, float] = (0.4, 0.4, 0.5),
       colour: str = "red", z0: float = 0.0, placement: str = "floor", shape: str = "box") -> SceneObject:
    return SceneObject(id=i, label=label, colour=colour, rgb=(0, 0, 0), shape=shape,
                       center=(xy[0], xy[1], z0 + size[2] / 2), size=size, placement=placement)


DOOR = _o(90, "door", (3.0, 0.0), (0.02, 0.9, 2.05), "dark brown", placement="wall", shape="panel")
WINDOW = _o(91, "window", (-3.0, 0.0), (0.02, 1.2, 1.0), "light blue", z0=1.0, placement="wall", shape="panel")


# ---------------------------------------------------------------- relations on hand-built scenes
def test_closest_and_farthest_with_margin_and_ambiguity() -> None:
    near, far = _o(0, "box", (1.0, 0.0)), _o(1, "box", (-1.0, 0.0))
    assert rel.closest_to([near, far, DOOR], DOOR) == near  # the reference itself is never an answer
    assert rel.farthest_from([near, far], DOOR) == far
    assert rel.centre_distance(near, DOOR) == pytest.approx(2.0)
    # mirror images: equally close -> rejected
    assert rel.closest_to([_o(0, "box", (1.0, 0.5)), _o(1, "box", (1.0, -0.5))], DOOR) is None
    # runner-up 0.2 m farther: within the 0.3 m margin -> rejected; 0.35 m -> accepted
    assert rel.closest_to([_o(0, "box", (1.0, 0.0)), _o(1, "box", (0.8, 0.0))], DOOR) is None
    assert rel.closest_to([_o(0, "box", (1.0, 0.0)), _o(1, "box", (0.65, 0.0))], DOOR) == _o(0, "box", (1.0, 0.0))
    assert rel.closest_to([], DOOR) is None


def test_closest_is_rejected_when_centre_and_edge_distance_disagree() -> None:
    ref = _o(0, "lamp", (0.0, 0.0), (0.2, 0.2, 1.0))
    small = _o(1, "box", (1.0, 0.0), (0.2, 0.2, 0.3))  # centre 1.0 m away, edge gap 0.8 m
    long = _o(2, "box", (0.0, 1.7), (0.2, 3.0, 0.3))  # centre 1.7 m away, edge gap 0.1 m
    assert rel.footprint_gap(small, ref) == pytest.approx(0.8) and rel.footprint_gap(long, ref) == pytest.approx(0.1)
    assert rel.closest_to([small, long], ref) is None
    assert rel.closest_to([small, _o(2, "box", (0.0, 1.7), (0.2, 0.2, 0.3))], ref) == small


def test_viewpoint_frame_and_leftmost_rightmost() -> None:
    view = rel.Viewpoint.from_object(DOOR)  # at x = 3 facing the room centre: forward -x, right +y
    np.testing.assert_allclose(view.forward, (-1.0, 0.0))
    np.testing.assert_allclose(view.right, (0.0, 1.0), atol=1e-12)
    assert view.local((0.0, -1.5)) == pytest.approx((3.0, -1.5))
    assert view.bearing_deg((0.0, -1.5)) == pytest.approx(math.degrees(math.atan2(1.5, 3.0)))  # positive = left
    left, mid, right = _o(0, "chair", (0.0, -1.5)), _o(1, "chair", (0.0, 0.0)), _o(2, "chair", (0.0, 1.5))
    assert rel.leftmost([mid, right, left], view) == left
    assert rel.rightmost([mid, right, left], view) == right
    # same bearing (26.6 deg) at different distances: leftmost in view and by offset disagree -> rejected
    a, b = _o(0, "chair", (1.0, -1.0)), _o(1, "chair", (-1.0, -2.0))
    assert view.bearing_deg(a.center) == pytest.approx(view.bearing_deg(b.center))
    assert rel.leftmost([a, b], view) is None
    # a candidate beside the viewer (not in front) makes "leftmost" undefined
    assert rel.leftmost([left, _o(3, "chair", (2.9, -1.0))], view) is None
    # bearing margin: 5 degrees apart -> rejected
    c = _o(4, "chair", (0.0, -1.5 + 3.0 * (math.tan(math.radians(26.57)) - math.tan(math.radians(21.57)))))
    assert rel.leftmost([left, c], view) is None


def test_situated_left_right_front_behind() -> None:
    view = rel.Viewpoint.from_object(DOOR, WINDOW)  # standing at the door facing the window
    assert rel.side_of(_o(0, "table", (0.0, -1.0)), view) == "left"
    assert rel.side_of(_o(0, "table", (0.0, 1.0)), view) == "right"
    assert rel.side_of(_o(0, "table", (0.0, 0.1)), view) is None  # almost straight ahead
    assert rel.side_of(_o(0, "table", (-2.5, 0.5)), view) is None  # 0.5 m aside but 5.7 degrees off the axis
    assert rel.front_or_behind(_o(0, "table", (1.0, 0.5)), view) == "in front"
    assert rel.front_or_behind(_o(0, "table", (2.9, -1.5)), view) is None  # beside the viewer
    back = rel.Viewpoint.from_object(WINDOW, DOOR)
    assert rel.side_of(_o(0, "table", (0.0, -1.0)), back) == "right"
    with pytest.raises(ValueError, match="facing target"):
        rel.Viewpoint.facing((1.0, 1.0), (1.1, 1.0))


def test_on_top_next_to_within_size_and_counting() -> None:
    table = _o(0, "table", (0.0, 0.0), (1.2, 0.8, 0.75))
    on = _o(1, "box", (0.3, 0.1), (0.3, 0.3, 0.3), colour="green", z0=0.75)
    floating = _o(2, "box", (-0.3, 0.1), (0.3, 0.3, 0.3), z0=0.9)
    chair = _o(3, "chair", (0.0, -0.8), (0.45, 0.45, 0.9))  # 0.175 m from the table's edge
    far_chair = _o(4, "chair", (2.0, 2.0), (0.45, 0.45, 0.9), colour="green")
    ball = _o(5, "ball", (-2.0, 2.0), (0.3, 0.3, 0.3), colour="green", shape="sphere")
    objs = [table, on, floating, chair, far_chair, ball, DOOR]
    assert rel.on_top_of(on, table) and not rel.on_top_of(floating, table) and not rel.on_top_of(table, on)
    assert rel.objects_on(table, objs) == [on] and rel.support_of(on, objs) == table and rel.support_of(chair, objs) is None
    assert rel.next_to(chair, objs) == table  # the box on the table does not count as "next to"
    assert rel.next_to(far_chair, objs) is None  # nothing within 0.5 m
    twin = _o(6, "cabinet", (0.0, -1.6), (0.8, 0.5, 1.0))  # 0.175 m on the other side of the chair
    assert rel.next_to(chair, objs + [twin]) is None
    assert rel.within(objs, table, 1.5) is not None and chair in rel.within(objs, table, 1.5)  # type: ignore[operator]
    assert rel.within([_o(7, "box", (1.5, 0.0), (0.1, 0.1, 0.1))], table, 1.5) is None  # on the boundary
    assert rel.largest([on, floating, _o(8, "box", (0, 3), (0.5, 0.5, 0.5))]) == _o(8, "box", (0, 3), (0.5, 0.5, 0.5))
    assert rel.smallest([on, floating]) is None  # equal volumes
    assert rel.count_matching(objs, colour="green") == 3
    assert rel.count_matching(objs, label="chair") == 2
    assert rel.count_matching(objs, shapes=ROUND_SHAPES) == 1
    assert rel.count_matching(objs, colour="dark brown") == 0  # the door is a landmark, never counted


def test_objects_from_json_round_trip_and_error() -> None:
    spec = make_benchmark_scene(4)
    objs = rel.objects_from_json(spec.to_json())
    assert [(o.id, o.label, o.colour, o.center, o.size, o.placement) for o in objs] == \
        [(o.id, o.label, o.colour, o.center, o.size, o.placement) for o in spec.objects]
    with pytest.raises(ValueError, match=r"objects\[0\]"):
        rel.objects_from_json({"objects": [{"id": 0, "label": "x"}]})


# ---------------------------------------------------------------- scenes
def test_benchmark_scenes_repeat_categories_and_stay_valid() -> None:
    stacked = 0
    for seed in range(12):
        spec = make_benchmark_scene(seed)
        assert [o.id for o in spec.objects] == list(range(len(spec.objects)))
        floor = [o for o in spec.objects if o.placement == "floor"]
        labels = [o.label for o in floor]
        assert len(floor) >= 5 and max(labels.count(lab) for lab in labels) >= 2
        for lab in set(labels):  # instances of a category differ in colour (a stacked extra box may repeat one)
            cols = [o.colour for o in floor if o.label == lab and o.center[2] - o.size[2] / 2 < 1e-6]
            assert len(cols) == len(set(cols))
        lx, ly, _ = spec.room_size
        grounded = [o for o in floor if o.center[2] - o.size[2] / 2 < 1e-6]
        stacked += len(floor) - len(grounded)
        for o in floor:
            lo, hi = np.asarray(o.center) - np.asarray(o.size) / 2, np.asarray(o.center) + np.asarray(o.size) / 2
            assert hi[2] <= 1.25 + 1e-9 and abs(lo[0]) <= lx / 2 and abs(hi[0]) <= lx / 2 and abs(hi[1]) <= ly / 2
        for i, a in enumerate(grounded):  # floor footprints never overlap
            for b in grounded[i + 1:]:
                assert rel.footprint_gap(a, b) > 0.05
        assert {o.label for o in spec.objects if o.placement == "wall"} == {"door", "window"}
    assert stacked >= 3


# ---------------------------------------------------------------- independent re-computation of answers
def _doc_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in doc["objects"]]


def _resolve(name: str, objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one object a name ("door", "stool", "red stool") denotes, by its own rules."""
    hits = [o for o in objs if o["label"] == name] or [o for o in objs if f"{o['colour']} {o['label']}" == name]
    assert len(hits) == 1, name
    return hits[0]


def _xy(o: dict[str, Any]) -> np.ndarray:
    return np.asarray(o["box"]["center"][:2])


def _cross_z(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _check_qa(question: str, answer: str, objs: list[dict[str, Any]], floor: list[dict[str, Any]]) -> str | None:
    """Re-answer a ScanQA question; returns the kind checked (None when not a checked template)."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    if m := re.fullmatch(r"What is the object closest to the (.+)\?", question):
        ref = _resolve(m[1], objs)
        d = sorted((float(np.linalg.norm(_xy(o) - _xy(ref))), o["label"]) for o in floor if o["id"] != ref["id"])
        assert d[1][0] - d[0][0] >= 0.3 and answer == d[0][1]
        return "closest"
    if m := re.fullmatch(r"What colour is the (.+) (closest to|farthest from) the (.+)\?", question):
        ref = _resolve(m[3], objs)
        d = sorted((float(np.linalg.norm(_xy(o) - _xy(ref))), o["colour"]) for o in floor if o["label"] == m[1])
        if m[2] == "farthest from":
            d = d[::-1]
        assert abs(d[0][0] - d[1][0]) >= 0.3 and answer == d[0][1]
        return m[2]
    if m := re.fullmatch(r"What colour is the (leftmost|rightmost) (.+) seen from the (.+)\?", question):
        ref = _resolve(m[3], objs)
        eye, ahead = _xy(ref), -_xy(ref) / np.linalg.norm(_xy(ref))  # facing the room centre (origin)
        # angle counter-clockwise from the facing direction (seen from above, z up) = to the left
        ang = sorted((math.atan2(_cross_z(ahead, _xy(o) - eye), float(ahead @ (_xy(o) - eye))), o["colour"])
                     for o in floor if o["label"] == m[2])
        best, second = (ang[-1], ang[-2]) if m[1] == "leftmost" else (ang[0], ang[1])
        assert abs(math.degrees(best[0] - second[0])) >= 10 and answer == best[1]
        return m[1]
    if m := re.fullmatch(r"How many (.+) are there\?", question):
        phrase = m[1]
        if phrase == "round objects":
            n = sum(o["shape"] in ("cylinder", "sphere", "cone") for o in floor)
        elif phrase.endswith(" objects"):
            n = sum(o["colour"] == phrase.split()[0] for o in floor)
        else:
            first, _, rest = phrase.partition(" ")
            colour, plural = (first, rest) if first in COLOURS else (None, phrase)
            label = plural[:-2] if plural.endswith("xes") else plural[:-1]
            n = sum(o["label"] == label and colour in (None, o["colour"]) for o in floor)
        assert answer == words[n], (question, answer, n)
        return "count colour" if phrase.endswith(" objects") else "count"
    return None


def _check_sqa(situation: str, question: str, answer: str, objs: list[dict[str, Any]], floor: list[dict[str, Any]]) -> str | None:
    m = re.fullmatch(r"I am standing at the (.+) facing the (.+)\.", situation)
    q = re.fullmatch(r"Is the (.+) on my left or right\?", question)
    if not (m and q):
        return None
    eye, target = _xy(_resolve(m[1], objs)), _xy(_resolve(m[2], objs))
    ahead = (target - eye) / np.linalg.norm(target - eye)
    off = _xy(_resolve(q[1], floor)) - eye
    lateral = _cross_z(ahead, off)  # > 0: counter-clockwise of the facing direction = left
    assert abs(lateral) >= 0.3 and answer == ("left" if lateral > 0 else "right")
    return "side"


def test_generated_relation_answers_match_an_independent_recomputation() -> None:
    checked: dict[str, int] = {}
    for seed in range(30):
        spec = make_benchmark_scene(1000 + seed)
        doc = json.loads(json.dumps(spec.to_json()))  # exactly what objects.json holds
        objs = _doc_objects(doc)
        floor = [o for o in objs if o["placement"] == "floor"]
        anns = scene_annotations(spec, f"scene{seed:04d}_00", "train", None, seed)
        for it in anns[Task.SCANQA]:
            q = it["conversations"][0]["value"].removeprefix("<image> ").removesuffix(" Answer the question simply.")
            kind = _check_qa(q, it["conversations"][1]["value"], objs, floor)
            if kind:
                checked[kind] = checked.get(kind, 0) + 1
        for it in anns[Task.SQA3D]:
            text = it["conversations"][0]["value"].removeprefix("<image> ").removesuffix(
                " Answer the question using a single word or phrase.")
            situation, question = text.split(". ", 1)
            if _check_sqa(situation + ".", question, it["conversations"][1]["value"], objs, floor):
                checked["side"] = checked.get("side", 0) + 1
        for it in anns[Task.SCANREFER]:
            desc = it["conversations"][0]["value"].split("\n")[-1]
            target = objs[it["metadata"]["object_id"]]
            assert it["box"] == target["box"]["center"] + target["box"]["size"]
            if m := re.fullmatch(r"The (.+) closest to the (.+)\.", desc):
                ref = _resolve(m[2], objs)
                d = sorted((float(np.linalg.norm(_xy(o) - _xy(ref))), o["id"]) for o in floor if o["label"] == m[1])
                assert d[1][0] - d[0][0] >= 0.3 and d[0][1] == target["id"]
                checked["refer closest"] = checked.get("refer closest", 0) + 1
            if m := re.fullmatch(r"The .+ (?:closest to|farthest from|seen from|on) the (.+)\.", desc):
                # the anchor is the object the relation is to, named by its label alone
                assert it["metadata"]["anchor_ids"] == [_resolve(m[1], objs)["id"]], desc
                checked["refer anchor"] = checked.get("refer anchor", 0) + 1
            else:
                assert "anchor_ids" not in it["metadata"], desc
        for it in anns[Task.MULTI3DREFER]:
            desc = it["conversations"][0]["value"].split("\n")[-2]
            if m := re.fullmatch(r"All the objects (?:on|within [0-9.]+ metres? of) the (.+)\.", desc):
                assert it["metadata"]["anchor_ids"] == [_resolve(m[1], objs)["id"]], desc
                checked["multi anchor"] = checked.get("multi anchor", 0) + 1
            else:
                assert "anchor_ids" not in it["metadata"], desc
            if m := re.fullmatch(r"All the (\w+) objects\.", desc):
                expected = [o["id"] for o in floor if (o["colour"] == m[1] or (m[1] == "round" and o["shape"] in ROUND_SHAPES))]
                assert it["metadata"]["object_id"] == expected
                assert it["metadata"]["upstream_question_type"] == ("zt_wo_d", "st_wo_d", "mt")[min(len(expected), 2)]
                checked["multi colour"] = checked.get("multi colour", 0) + 1
    assert all(checked.get(k, 0) >= 5 for k in ("closest", "closest to", "farthest from", "leftmost", "rightmost", "count",
                                                  "count colour", "side", "refer closest", "multi colour", "refer anchor",
                                                  "multi anchor")), checked


def test_annotations_are_consistent_and_typed() -> None:
    spec = make_benchmark_scene(77)
    anns = scene_annotations(spec, "scene0000_00", "val", None, 3)
    assert anns == scene_annotations(spec, "scene0000_00", "val", None, 3)
    for task, items in anns.items():
        answers: dict[str, str] = {}
        for it in items:
            assert it["metadata"]["question_type"] in QUESTION_TYPES
            human, answer = it["conversations"][0]["value"], it["conversations"][1]["value"]
            assert answers.setdefault(human + str(it.get("box_input")), answer) == answer, human  # no contradictions
    types = {it["metadata"]["question_type"] for items in anns.values() for it in items}
    assert {"attribute", "relation", "count"} <= types
    zero = [it for it in anns[Task.MULTI3DREFER] if not it["metadata"]["object_id"]]
    assert zero and all(it["box"] == [] and it["metadata"]["upstream_question_type"].startswith("zt") for it in zero)


# ---------------------------------------------------------------- splits and files
def test_splits_are_fixed_by_the_seed() -> None:
    s = assign_splits(10, 0, val_fraction=0.1, test_fraction=0.1)
    assert s == assign_splits(10, 0, val_fraction=0.1, test_fraction=0.1)
    assert s.count("val") == 1 and s.count("test") == 1 and s.count("train") == 8
    assert s == ["train", "train", "train", "test", "train", "train", "train", "train", "train", "val"]  # frozen
    assert len({tuple(assign_splits(10, k, 0.1, 0.1)) for k in range(6)}) > 1
    assert assign_splits(3, 5, 0.1, 0.1).count("test") == 1 and assign_splits(3, 5, 0.1, 0.1).count("val") == 1
    assert assign_splits(2, 5, 0.5, 0.1).count("test") == 0  # two scenes: train + val only
    with pytest.raises(ValueError, match="--scenes"):
        assign_splits(1, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        assign_splits(10, 0, 0.5, 0.5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "scene.json"}


def test_benchmark_files_are_deterministic_split_by_scene_and_loadable(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(scenes=4, seed=11, frames_per_scene=2, width=32, height=24, val_fraction=0.25, test_fraction=0.25)
    info = make_benchmark(tmp_path / "a", **kw)
    make_benchmark(tmp_path / "b", **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]
    bench = json.loads((tmp_path / "a" / "benchmark.json").read_text())
    assert bench["version"] == GENERATOR_VERSION and bench["seed"] == 11 and bench["scene_count"] == 4
    assert bench["split_of"] == dict(zip([f"scene{i:04d}_00" for i in range(4)], assign_splits(4, 11, 0.25, 0.25)))
    assert info["counts"] == bench["counts"] and "total_s" in info and "total_s" not in bench
    groups = bench["scenes"]
    assert sorted(sum(groups.values(), [])) == sorted(bench["split_of"]) and all(groups[k] for k in ("train", "val", "test"))
    for split, scenes in groups.items():
        gt = load_box_file(tmp_path / "a" / "metadata" / f"scannet_{split}_gt_box.json")
        assert sorted(gt) == scenes
        for task in Task:
            anns = load_annotations(tmp_path / "a" / "processed" / ANNOTATION_FILES[task].format(split=split))
            assert anns and {x.task for x in anns} == {task} and {x.scene_id for x in anns} <= set(scenes)
            assert len(anns) == bench["counts"][split][task.value]
            for x in anns:
                if task.is_grounding:  # boxes are the GT boxes at the object ids
                    np.testing.assert_allclose(np.asarray(x.boxes).reshape(-1, 6), gt[x.scene_id][list(x.object_ids)])
                if task is Task.SCAN2CAP and split != "train":
                    assert x.references and x.answer == x.references[0]


def test_two_scenes_still_work_without_a_test_split(tmp_path: Path) -> None:
    info = make_benchmark(tmp_path / "b", scenes=2, seed=3, frames_per_scene=2, width=32, height=24, val_fraction=0.5)
    assert info["scenes"]["test"] == [] and len(info["scenes"]["val"]) == 1
    assert not (tmp_path / "b" / "processed" / "scanqa_test_llava_style.json").exists()
    assert (tmp_path / "b" / "metadata" / "scannet_val_pred_box.json").is_file()
