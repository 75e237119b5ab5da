"""A seeded, versioned synthetic five-task benchmark in the upstream processed-data layout
(`video3dllm make-benchmark`).

N seeded rooms are rendered as ScanNet-like scenes, with annotations for every task in upstream's
`*_llava_style.json` format whose answers are computed exactly from the scene geometry
(`video3dllm_training.relations`):

    OUT/posed_images/<scene_id>/                 NNNNN.jpg/.png/.txt, intrinsics, axis_align_matrix.txt,
                                                 objects.json (exact boxes), scene.json
    OUT/metadata/scannet_{train,val,test}_gt_box.json   GT boxes per split (index = object id)
    OUT/metadata/scannet_{val,test}_pred_box.json       "detector" boxes: GT boxes with seeded noise
    OUT/metadata/scannet_select_frames.json      max-coverage picks (`prepare frames`)
    OUT/processed/{scanqa,sqa3d,scan2cap,scanrefer_vg,multi3drefer}_{train,val,test}_llava_style.json
    OUT/multi.yaml                               upstream data YAML of the training files
    OUT/benchmark.json                           version, seed, split of every scene, counts

The test files exist only when the test split has scenes (>= 3 scenes). benchmark.json holds no
timings, so the same arguments give byte-identical annotation, box and metadata files (scene.json
of every scene records its render time; images are deterministic too).

Scenes (`make_benchmark_scene`): the room, door and window of `video3dllm_core.synthetic.make_scene`
and 6-10 floor objects in which two categories repeat 2-3 times, drawn from a palette of 4-6
colours (instances of one category always differ in colour; colours repeat across categories),
sizes drawn per instance from the catalogue ranges, and, often, a box standing on a table, cabinet
or bed. Blue and brown are left out of the palette (the window is light blue, the door dark brown).

Splits: scenes are assigned to train / val / test by a permutation drawn from the seed
(`assign_splits`): `val_fraction` and `test_fraction` of the scenes (rounded, at least one each;
no test scene when there are only 2 scenes), the rest train.

Templates (every answer exact, every relation asked only when `relations` calls it unambiguous;
"objects" are floor objects, the door and window are landmarks; an object is named "the <label>"
when its label is unique, else "the <colour> <label>" when that is unique):
  ScanQA        attribute: "What colour is the <label>?", "What is the <colour> object?"
                count:     "How many <labels> / <colour> objects / <colour> <labels> / round objects are there?"
                relation:  "What is the object closest to / farthest from the <ref>?" -> label,
                           "What colour is the <label> closest to / farthest from the <ref>?",
                           "What colour is the leftmost / rightmost <label> seen from the <ref>?",
                           "What is on the <support>?"
                size:      "What colour is the largest / smallest <label>?"
  SQA3D         "I am standing at the <A> facing the <B>." + "Is the <T> on my left or right?",
                "Is the <T> in front of me or behind me?", "How many <labels> are on my left / right?",
                "What colour is the <label> on my left / right?";
                "I am standing next to the <A>." + "What colour is the <label>?"
  ScanRefer     "the <colour> <label>.", "the <label> closest to / farthest from the <ref>.",
                "the leftmost / rightmost <label> seen from the <ref>.", "the <label> on the <support>.",
                "the largest / smallest <label>."
  Multi3DRefer  "all the <colour> objects." / "all the <labels>." / "all the <colour> <labels>." /
                "all the round objects." / "all the objects on the <support>." /
                "all the objects within <r> metres of the <ref>." (zero, one or more targets)
  Scan2Cap      "a <colour> <label> next to the <anchor>." / "... on the <support>." / "a <colour> <label>."

Every annotation carries `metadata.question_type` (attribute / relation / count / size, see
QUESTION_TYPES), `metadata.relation` (closest, farthest, leftmost, rightmost, side, front_behind,
on, within, next_to, largest, smallest, or null) and `metadata.upstream_question_type` (upstream's
own split: ScanRefer/Scan2Cap unique/multiple, Multi3DRefer zt/st_w(o)_d/mt, SQA3D what/is/how/...).
ScanRefer and Multi3DRefer descriptions of a relation to another object ("closest to the door", "seen from the
window", "on the bed", "within 2 metres of the sofa") also carry `metadata.anchor_ids`: that object's id (Sr3D's
"anchor"); the relation match's landmark loss trains on it (`video3dllm train --landmark-loss`). Version 4 added
it; every question, answer, box and frame is the same as version 2's (3 was an unmerged branch, docs/training.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from video3dllm_core.model.prompts import Task, human_turn
from video3dllm_core.synthetic import CATALOGUE, COLOURS, GENERATOR_VERSION as SCENE_GENERATOR_VERSION
from video3dllm_core.synthetic import SceneObject, SceneSpec, build_meshes, make_scene, write_synthetic_scene
from video3dllm_core.synthetic.scene import place_on_floor
from video3dllm_training import relations as rel
from video3dllm_training.data.boxes import write_box_file
from video3dllm_training.metrics.answers import sqa3d_question_type
from video3dllm_training.metrics.boxes import iou_matrix
from video3dllm_training.prepare import FramesJob, prepare_frames

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "QUESTION_TYPES",
    "ANNOTATION_FILES",
    "ROUND_SHAPES",
    "BENCHMARK_COLOURS",
    "DEFAULT_CAPS",
    "make_benchmark",
    "make_benchmark_scene",
    "assign_splits",
    "scene_annotations",
    "noisy_boxes",
    "number_word",
]

# Bump whenever the same arguments would produce different files (scenes, templates, margins).
GENERATOR_VERSION = "4"
SPLITS = ("train", "val", "test")
QUESTION_TYPES = ("attribute", "relation", "count", "size")
ANNOTATION_FILES = {
    Task.SCANQA: "scanqa_{split}_llava_style.json",
    Task.SQA3D: "sqa3d_{split}_llava_style.json",
    Task.SCAN2CAP: "scan2cap_{split}_llava_style.json",
    Task.SCANREFER: "scanrefer_vg_{split}_llava_style.json",
    Task.MULTI3DREFER: "multi3drefer_{split}_llava_style.json",
}
ROUND_SHAPES = ("cylinder", "sphere", "cone")
BENCHMARK_COLOURS = tuple(c for c in COLOURS if c not in ("blue", "brown"))  # window light blue, door dark brown
REPEATABLE = ("chair", "box", "ball", "stool", "trash can", "lamp", "plant", "traffic cone")
SUPPORTS = ("table", "cabinet", "bed")
MAX_TOP_M = 1.25  # every object stays below the camera loop (>= 1.35 m)
WITHIN_RADII_M = (1.0, 1.5, 2.0)
# Most questions per scene, task and question type (drawn with the scene's seed).
DEFAULT_CAPS: Mapping[str, int] = {"attribute": 6, "relation": 12, "count": 6, "size": 3}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")


def number_word(n: int) -> str:
    """Counting answers are words ("two"), as ScanQA / SQA3D's normaliser spells digits."""
    if not 0 <= n < len(_NUMBER_WORDS):
        raise ValueError(f"count {n} has no answer word (0-20)")
    return _NUMBER_WORDS[n]


def _plural(label: str) -> str:
    return label + ("es" if label.endswith(("s", "x", "ch", "sh")) else "s")


def _box(obj: SceneObject) -> list[float]:
    return [float(v) for v in (*obj.center, *obj.size)]


# ---------------------------------------------------------------- scenes
def _extent(shape: str, params: tuple[float, ...]) -> tuple[float, float, float]:
    if shape == "box":
        return params[0], params[1], params[2]
    if shape in ("cylinder", "cone"):
        return 2 * params[0], 2 * params[0], params[1]
    return 2 * params[0], 2 * params[0], 2 * params[0]


def _draw(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(np.round(rng.uniform(*lo_hi), 3))


def make_benchmark_scene(seed: int, min_objects: int = 6, max_objects: int = 10) -> SceneSpec:
    """A room with repeated categories, shared colours, varied sizes and maybe a stacked box.

    The room, door and window are `make_scene(seed)`'s; the floor objects are drawn here (see the
    module docstring) and placed as make_scene places them (WALL_MARGIN from the walls, OBJECT_GAP
    apart). Object ids are list indices: floor objects first, then door and window. Boxes are the
    exact axis-aligned boxes of the rendered meshes.
    """
    if not 4 <= min_objects <= max_objects:
        raise ValueError(f"need 4 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    base = make_scene(seed)
    lx, ly, _ = base.room_size
    rng = np.random.default_rng([seed, 23])
    n = int(rng.integers(min_objects, max_objects + 1))
    repeated = [str(x) for x in rng.choice(REPEATABLE, size=2, replace=False)]
    labels = [lab for lab in repeated for _ in range(int(rng.integers(2, 4)))]
    singles = [str(x) for x in rng.permutation([lab for lab in CATALOGUE if lab not in repeated])]
    labels += singles[: max(0, n - len(labels))]
    palette = [str(x) for x in rng.choice(BENCHMARK_COLOURS, size=int(rng.integers(4, 7)), replace=False)]
    colours: dict[str, list[str]] = {
        lab: [str(c) for c in rng.choice(palette, size=labels.count(lab), replace=False)] for lab in dict.fromkeys(labels)
    }
    drawn = []
    for k, lab in enumerate(labels):
        shape, ranges = CATALOGUE[lab]
        params = tuple(_draw(rng, r) for r in ranges)
        drawn.append((k, lab, shape, params, colours[lab].pop()))
    drawn.sort(key=lambda d: -_extent(d[2], d[3])[0] * _extent(d[2], d[3])[1])  # big ones first

    placed: list[SceneObject] = []
    footprints: list[tuple[float, float, float, float]] = []
    for _, lab, shape, params, colour in drawn:
        dx, dy, dz = _extent(shape, params)
        centre = place_on_floor(rng, (lx, ly), (dx, dy), footprints)
        if centre is None:
            continue
        cx, cy = centre
        placed.append(SceneObject(id=len(placed), label=lab, colour=colour, rgb=COLOURS[colour], shape=shape,
                                  center=(cx, cy, dz / 2), size=(dx, dy, dz), params=params))
    supports = [o for o in placed if o.label in SUPPORTS and o.size[2] + 0.25 <= MAX_TOP_M]
    if supports and rng.random() < 0.7:
        s = supports[int(rng.integers(len(supports)))]
        top = s.size[2]
        (lo_x, hi_x), (lo_y, hi_y), (lo_z, hi_z) = CATALOGUE["box"][1]
        bx = min(_draw(rng, (lo_x, hi_x)), round(s.size[0] - 0.1, 3))
        by = min(_draw(rng, (lo_y, hi_y)), round(s.size[1] - 0.1, 3))
        bz = min(_draw(rng, (lo_z, hi_z)), round(MAX_TOP_M - top, 3))
        cx = s.center[0] + float(rng.uniform(-1, 1)) * (s.size[0] - bx) / 2 * 0.8
        cy = s.center[1] + float(rng.uniform(-1, 1)) * (s.size[1] - by) / 2 * 0.8
        colour = palette[int(rng.integers(len(palette)))]
        placed.append(SceneObject(id=len(placed), label="box", colour=colour, rgb=COLOURS[colour], shape="box",
                                  center=(cx, cy, top + bz / 2), size=(bx, by, bz), params=(bx, by, bz)))
    walls = [replace(o, id=len(placed) + k) for k, o in enumerate(o for o in base.objects if o.placement == "wall")]
    spec = SceneSpec(seed=seed, room_size=base.room_size, objects=tuple(placed + walls),
                     version=f"benchmark-{GENERATOR_VERSION}")
    exact: dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]] = {}
    for m in build_meshes(spec):
        if m.object_id >= 0:
            v = np.asarray(m.mesh.vertices)
            (x0, y0, z0), (x1, y1, z1) = v.min(axis=0).tolist(), v.max(axis=0).tolist()
            exact[m.object_id] = ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), (x1 - x0, y1 - y0, z1 - z0)
    objects = tuple(replace(o, center=exact[o.id][0], size=exact[o.id][1]) for o in spec.objects)
    return replace(spec, objects=objects)


def noisy_boxes(spec: SceneSpec, seed: int) -> np.ndarray:
    """Stand-in detector proposals: each GT box with its centre moved by N(0, (3 % of its size)^2)
    and its size scaled by U(0.9, 1.1), seeded."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for obj in spec.objects:
        c, s = np.asarray(obj.center), np.asarray(obj.size)
        out.append(np.concatenate([c + rng.normal(0.0, 0.03, 3) * s, s * rng.uniform(0.9, 1.1, 3)]))
    return np.asarray(out, dtype=np.float64)


def assign_splits(scenes: int, seed: int, val_fraction: float = 0.25, test_fraction: float = 0.1) -> list[str]:
    """Split of every scene index, fixed by the seed: round(fraction * scenes) scenes (at least one)
    in val and in test (test only from 3 scenes on, none when test_fraction is 0), the rest train."""
    if scenes < 2:
        raise ValueError(f"--scenes must be >= 2 (at least one training and one validation scene), got {scenes}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, got {test_fraction}")
    n_val = max(1, int(round(scenes * val_fraction)))
    n_test = max(1, int(round(scenes * test_fraction))) if test_fraction > 0 and scenes >= 3 else 0
    while n_val + n_test > scenes - 1:  # keep at least one training scene
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.default_rng([seed, 17]).permutation(scenes)
    split = ["train"] * scenes
    for rank, i in enumerate(order):
        if rank < n_val:
            split[int(i)] = "val"
        elif rank < n_val + n_test:
            split[int(i)] = "test"
    return split


# ---------------------------------------------------------------- questions
class _Scene:
    """Facts about one scene the templates need: objects, names, references, view points."""

    def __init__(self, spec: SceneSpec) -> None:
        self.objects = list(spec.objects)
        self.floor = rel.floor_objects(self.objects)
        self.landmarks = rel.landmarks(self.objects)
        self.labels = list(dict.fromkeys(o.label for o in self.floor))
        self.multi = [lab for lab in self.labels if rel.count_matching(self.floor, label=lab) >= 2]
        self.colours = list(dict.fromkeys(o.colour for o in self.floor))
        # references: landmarks and floor objects named by their label alone
        self.refs = self.landmarks + [o for o in self.floor if self.name(o) == o.label]

    def name(self, o: SceneObject) -> str | None:
        """How the object is referred to without a relation, or None when that is ambiguous."""
        if o.placement == "wall":
            return o.label
        same = rel.matching(self.floor, label=o.label)
        if len(same) == 1:
            return o.label
        if sum(x.colour == o.colour for x in same) == 1:
            return f"{o.colour} {o.label}"
        return None

    def instances(self, label: str) -> list[SceneObject]:
        return rel.matching(self.floor, label=label)

    def viewpoint(self, at: SceneObject, facing: SceneObject | None = None) -> rel.Viewpoint | None:
        try:
            return rel.Viewpoint.from_object(at, facing)
        except ValueError:
            return None


Item = tuple[str, dict[str, Any]]  # (question type, annotation)


def _meta(qtype: str, relation: str | None, upstream: str, **more: Any) -> dict[str, Any]:
    return {"question_type": qtype, "relation": relation, "upstream_question_type": upstream, **more}


def _qa_items(s: _Scene, rng: np.random.Generator) -> list[tuple[str, str, str, str | None]]:
    """ScanQA (question, answer, question type, relation) of a scene."""
    out: list[tuple[str, str, str, str | None]] = []
    for o in s.floor:
        if s.name(o) == o.label:
            out.append((f"What colour is the {o.label}?", o.colour, "attribute", None))
    for c in s.colours:
        same = rel.matching(s.floor, colour=c)
        if len(same) == 1:
            out.append((f"What is the {c} object?", same[0].label, "attribute", None))
    for lab in s.labels:
        out.append((f"How many {_plural(lab)} are there?", number_word(len(s.instances(lab))), "count", None))
    absent = [c for c in BENCHMARK_COLOURS if c not in s.colours]
    for c in s.colours + absent[:1]:
        out.append((f"How many {c} objects are there?", number_word(rel.count_matching(s.floor, colour=c)), "count", None))
    for lab in s.multi:
        c = s.colours[int(rng.integers(len(s.colours)))]
        out.append((f"How many {c} {_plural(lab)} are there?", number_word(rel.count_matching(s.floor, label=lab, colour=c)),
                    "count", None))
    out.append(("How many round objects are there?", number_word(rel.count_matching(s.floor, shapes=ROUND_SHAPES)), "count", None))
    for ref in s.refs:
        for word, fn, name in (("closest to", rel.closest_to, "closest"), ("farthest from", rel.farthest_from, "farthest")):
            hit = fn(s.floor, ref)
            if hit is not None:
                out.append((f"What is the object {word} the {ref.label}?", hit.label, "relation", name))
            for lab in s.multi:
                if lab != ref.label and (hit := fn(s.instances(lab), ref)) is not None:
                    out.append((f"What colour is the {lab} {word} the {ref.label}?", hit.colour, "relation", name))
        view = s.viewpoint(ref)
        for lab in s.multi if view is not None else []:
            for word, side_fn in (("leftmost", rel.leftmost), ("rightmost", rel.rightmost)):
                if lab != ref.label and (hit := side_fn(s.instances(lab), view)) is not None:
                    out.append((f"What colour is the {word} {lab} seen from the {ref.label}?", hit.colour, "relation", word))
    for sup in s.floor:
        on = rel.objects_on(sup, s.floor)
        if len(on) == 1 and s.name(sup) is not None:
            out.append((f"What is on the {s.name(sup)}?", on[0].label, "relation", "on"))
    for lab in s.multi:
        for word, size_fn in (("largest", rel.largest), ("smallest", rel.smallest)):
            if (hit := size_fn(s.instances(lab))) is not None:
                out.append((f"What colour is the {word} {lab}?", hit.colour, "size", word))
    return out


def _others(objects: Sequence[SceneObject], *exclude: SceneObject) -> list[SceneObject]:
    ids = {o.id for o in exclude}
    return [o for o in objects if o.id not in ids]


def _situations(s: _Scene, rng: np.random.Generator) -> list[tuple[SceneObject, SceneObject]]:
    """(standing at, facing) pairs: door<->window, and one named floor object facing a landmark."""
    pairs = []
    if len(s.landmarks) == 2:
        a, b = s.landmarks
        pairs += [(a, b), (b, a)]
    named = [o for o in s.refs if o.placement == "floor"]
    if named and s.landmarks:
        pairs.append((named[int(rng.integers(len(named)))], s.landmarks[int(rng.integers(len(s.landmarks)))]))
    return pairs


def _sqa_items(s: _Scene, rng: np.random.Generator) -> list[tuple[str, str, str, str, str | None]]:
    """SQA3D (situation, question, answer, question type, relation) of a scene."""
    out: list[tuple[str, str, str, str, str | None]] = []
    for at, facing in _situations(s, rng):
        view = rel.Viewpoint.from_object(at, facing)
        situation = f"I am standing at the {s.name(at)} facing the {s.name(facing)}."
        for t in _others(s.floor, at, facing):
            name = s.name(t)
            if name is None:
                continue
            if (side := rel.side_of(t, view)) is not None:
                out.append((situation, f"Is the {name} on my left or right?", side, "relation", "side"))
            if (fb := rel.front_or_behind(t, view)) is not None:
                out.append((situation, f"Is the {name} in front of me or behind me?", fb, "relation", "front_behind"))
        for lab in s.multi:
            sides = [rel.side_of(t, view) for t in s.instances(lab)]  # at / facing are never repeated labels
            if None in sides:
                continue
            side = ("left", "right")[int(rng.integers(2))]
            out.append((situation, f"How many {_plural(lab)} are on my {side}?", number_word(sides.count(side)), "count", "side"))
            on_side = [t for t, sd in zip(s.instances(lab), sides) if sd == side]
            if len(on_side) == 1:
                out.append((situation, f"What colour is the {lab} on my {side}?", on_side[0].colour, "relation", "side"))
    for k, o in enumerate(s.floor):
        if s.name(o) != o.label:
            continue
        anchors = [a for a in s.refs if a.id != o.id]
        if anchors:
            a = anchors[int(rng.integers(len(anchors)))]
            out.append((f"I am standing next to the {a.label}.", f"What colour is the {o.label}?", o.colour, "attribute", None))
    return out


def _refer_items(s: _Scene) -> list[tuple[str, SceneObject, str, str | None, SceneObject | None]]:
    """ScanRefer (description, target, question type, relation, anchor: the object the relation is to) of a scene."""
    out: list[tuple[str, SceneObject, str, str | None, SceneObject | None]] = []
    for o in s.floor:
        if sum(x.colour == o.colour for x in s.instances(o.label)) == 1:
            out.append((f"the {o.colour} {o.label}.", o, "attribute", None, None))
    for lab in s.multi:
        inst = s.instances(lab)
        for ref in s.refs:
            if ref.label == lab:
                continue
            for word, fn, name in (("closest to", rel.closest_to, "closest"), ("farthest from", rel.farthest_from, "farthest")):
                if (hit := fn(inst, ref)) is not None:
                    out.append((f"the {lab} {word} the {ref.label}.", hit, "relation", name, ref))
            view = s.viewpoint(ref)
            for word, side_fn in (("leftmost", rel.leftmost), ("rightmost", rel.rightmost)):
                if view is not None and (hit := side_fn(inst, view)) is not None:
                    out.append((f"the {word} {lab} seen from the {ref.label}.", hit, "relation", word, ref))
        for word, size_fn in (("largest", rel.largest), ("smallest", rel.smallest)):
            if (hit := size_fn(inst)) is not None:
                out.append((f"the {word} {lab}.", hit, "size", word, None))
    for sup in s.floor:
        on = rel.objects_on(sup, s.floor)
        if len(on) == 1 and s.name(sup) is not None and len(s.instances(on[0].label)) > 1:
            out.append((f"the {on[0].label} on the {s.name(sup)}.", on[0], "relation", "on", sup))
    return out


def _multi_items(s: _Scene, rng: np.random.Generator
                 ) -> list[tuple[str, list[SceneObject], str, str | None, str | None, SceneObject | None]]:
    """Multi3DRefer (description, targets, question type, relation, label named, anchor) of a scene."""
    out: list[tuple[str, list[SceneObject], str, str | None, str | None, SceneObject | None]] = []
    for c in s.colours:
        out.append((f"all the {c} objects.", rel.matching(s.floor, colour=c), "attribute", None, None, None))
    for lab in s.labels:
        out.append((f"all the {_plural(lab)}.", s.instances(lab), "attribute", None, lab, None))
    for lab in s.multi:
        c = s.colours[int(rng.integers(len(s.colours)))]
        out.append((f"all the {c} {_plural(lab)}.", rel.matching(s.floor, label=lab, colour=c), "attribute", None, lab,
                    None))
    for sup in s.floor:
        if sup.label in SUPPORTS and s.name(sup) is not None:
            out.append((f"all the objects on the {s.name(sup)}.", rel.objects_on(sup, s.floor), "relation", "on", None,
                        sup))
    for ref in s.refs:
        r = WITHIN_RADII_M[int(rng.integers(len(WITHIN_RADII_M)))]
        hits = rel.within(s.floor, ref, r)
        if hits is not None:
            unit = "metre" if r == 1 else "metres"
            out.append((f"all the objects within {r:g} {unit} of the {ref.label}.", hits, "relation", "within", None,
                        ref))
    return out


def _caption(s: _Scene, o: SceneObject) -> tuple[str, str, str | None]:
    """Scan2Cap caption of a floor object: (caption, question type, relation)."""
    plain = f"a {o.colour} {o.label}."
    sup = rel.support_of(o, s.floor)
    if sup is not None and s.name(sup) is not None:
        return f"a {o.colour} {o.label} on the {s.name(sup)}.", "relation", "on"
    anchor = rel.next_to(o, s.floor + s.landmarks)
    if anchor is not None and s.name(anchor) is not None:
        return f"a {o.colour} {o.label} next to the {s.name(anchor)}.", "relation", "next_to"
    return plain, "attribute", None


def _m3d_upstream_type(targets: Sequence[SceneObject], label: str | None, floor: Sequence[SceneObject]) -> str:
    """Multi3DRefer's eval type: zero / single / multiple targets, with / without distractors of the named class."""
    if len(targets) > 1:
        return "mt"
    ids = {t.id for t in targets}
    distractors = label is not None and any(o.label == label and o.id not in ids for o in floor)
    return f"{'zt' if not targets else 'st'}_{'w' if distractors else 'wo'}_d"


def _cap(items: list[Item], caps: Mapping[str, int], rng: np.random.Generator) -> list[dict[str, Any]]:
    """At most caps[question type] items of each type, drawn with `rng`, in their original order."""
    keep: list[int] = []
    for qtype in QUESTION_TYPES:
        idx = [i for i, (t, _) in enumerate(items) if t == qtype]
        k = caps.get(qtype, len(idx))
        keep += idx if len(idx) <= k else [idx[int(j)] for j in rng.choice(len(idx), size=k, replace=False)]
    return [items[i][1] for i in sorted(keep)]


def scene_annotations(spec: SceneSpec, scene_id: str, split: str, pred_boxes: np.ndarray | None = None,
                      seed: int = 0, caps: Mapping[str, int] | None = None) -> dict[Task, list[dict[str, Any]]]:
    """Annotations of one scene for every task (upstream field names; see the module docstring).

    Deterministic in (spec, scene_id, split, pred_boxes, seed). `caps` bounds the questions per
    task and question type (default DEFAULT_CAPS). Multi3DRefer's "all the round objects." and a
    zero-target "all the <absent colour> objects." are always included.
    """
    caps = DEFAULT_CAPS if caps is None else caps
    rng = np.random.default_rng([seed, 13])
    s = _Scene(spec)
    video = f"scannet/{scene_id}"
    out: dict[Task, list[dict[str, Any]]] = {}

    def item(task: Task, ident: Any, human: str, answer: str, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        dataset = "scanQA" if task is Task.SCANQA else task.value
        return {"id": ident, "video": video,
                "conversations": [{"value": human, "from": "human"}, {"value": answer, "from": "gpt"}],
                "metadata": {"dataset": dataset, **meta}, **extra}

    qa: list[Item] = [(t, item(Task.SCANQA, "", human_turn(Task.SCANQA, question=q), a, _meta(t, r, "unknow")))
                      for q, a, t, r in _qa_items(s, rng)]
    out[Task.SCANQA] = _cap(qa, caps, rng)
    for k, it in enumerate(out[Task.SCANQA]):
        it["id"] = f"scanqa_{split}-{scene_id}-{k}_0"

    sqa: list[Item] = [(t, item(Task.SQA3D, 0, human_turn(Task.SQA3D, situation=sit, question=q), a,
                                _meta(t, r, sqa3d_question_type(q))))
                       for sit, q, a, t, r in _sqa_items(s, rng)]
    out[Task.SQA3D] = _cap(sqa, caps, rng)

    def refer_type(o: SceneObject) -> str:
        return "unique" if len(s.instances(o.label)) == 1 else "multiple"

    def anchored(anchor: SceneObject | None) -> dict[str, Any]:
        return {} if anchor is None else {"anchor_ids": [anchor.id]}

    refer: list[Item] = [(t, item(Task.SCANREFER, 0, human_turn(Task.SCANREFER, description=d), "<ground>",
                                  _meta(t, r, refer_type(o), ann_id=0, object_id=o.id, **anchored(a)), box=_box(o)))
                         for d, o, t, r, a in _refer_items(s)]
    out[Task.SCANREFER] = _cap(refer, caps, rng)

    multi: list[Item] = [(t, item(Task.MULTI3DREFER, 0, human_turn(Task.MULTI3DREFER, description=d), "<ground>",
                                  _meta(t, r, _m3d_upstream_type(targets, lab, s.floor), ann_id=0,
                                        object_id=[o.id for o in targets], **anchored(a)), box=[_box(o) for o in targets]))
                         for d, targets, t, r, lab, a in _multi_items(s, rng)]
    out[Task.MULTI3DREFER] = _cap(multi, caps, rng)
    absent = [c for c in BENCHMARK_COLOURS if c not in s.colours]
    always = [("all the round objects.", rel.matching(s.floor, shapes=ROUND_SHAPES))]
    if absent:  # a zero-target query in every scene
        always.append((f"all the {absent[int(rng.integers(len(absent)))]} objects.", []))
    for desc, targets in always:
        out[Task.MULTI3DREFER].append(item(
            Task.MULTI3DREFER, 0, human_turn(Task.MULTI3DREFER, description=desc), "<ground>",
            _meta("attribute", None, _m3d_upstream_type(targets, None, s.floor), ann_id=0,
                  object_id=[o.id for o in targets]), box=[_box(o) for o in targets]))

    caps_items: list[Item] = []
    for o in s.floor:
        caption, t, r = _caption(s, o)
        box_input: list[float] | None = _box(o)
        if split != "train" and pred_boxes is not None:
            ious = iou_matrix(np.asarray([_box(o)]), pred_boxes)[0]
            best = int(np.argmax(ious))
            box_input = [float(v) for v in pred_boxes[best]] if ious[best] >= 0.5 else None
        extra: dict[str, Any] = {"box_input": box_input, "gt_box": _box(o)}
        if split != "train":
            plain = f"a {o.colour} {o.label}."
            extra["annotations"] = [caption] if caption == plain else [caption, plain]
        caps_items.append((t, item(Task.SCAN2CAP, 0, human_turn(Task.SCAN2CAP), caption,
                                   _meta(t, r, refer_type(o), ann_id=0, object_id=o.id), **extra)))
    out[Task.SCAN2CAP] = _cap(caps_items, {}, rng)
    return {t: out[t] for t in Task}


# ---------------------------------------------------------------- the benchmark on disk
def make_benchmark(out_dir: str | Path, scenes: int = 8, seed: int = 0, frames_per_scene: int = 24, width: int = 320,
                   height: int = 240, val_fraction: float = 0.25, max_frames: int = 32, progress: bool = False,
                   test_fraction: float = 0.1, caps: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Write the benchmark (see the module docstring); returns benchmark.json's content plus the
    timings `frames_file_s` and `total_s` (not written: the file is deterministic)."""
    splits = assign_splits(scenes, seed, val_fraction, test_fraction)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    t0 = time.perf_counter()
    posed = out / "posed_images"
    gt: dict[str, dict[str, np.ndarray]] = {k: {} for k in SPLITS}
    pred: dict[str, dict[str, np.ndarray]] = {k: {} for k in SPLITS}
    anns: dict[str, dict[Task, list[dict[str, Any]]]] = {k: {t: [] for t in Task} for k in SPLITS}
    scene_ids, scene_seeds = [], {}
    for i, split in enumerate(splits):
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] % 1_000_000)
        scene_id = f"scene{i:04d}_00"
        scene_ids.append(scene_id)
        scene_seeds[scene_id] = scene_seed
        spec = make_benchmark_scene(scene_seed)
        write_synthetic_scene(posed / scene_id, scene_seed, num_frames=frames_per_scene, width=width, height=height, scene=spec)
        gt[split][scene_id] = np.asarray([_box(o) for o in spec.objects])
        pred_boxes = noisy_boxes(spec, scene_seed) if split != "train" else None
        if pred_boxes is not None:
            pred[split][scene_id] = pred_boxes
        for task, items in scene_annotations(spec, scene_id, split, pred_boxes, scene_seed, caps).items():
            anns[split][task].extend(items)
    used = [k for k in SPLITS if k in ("train", "val") or gt[k]]
    meta = out / "metadata"
    for split in used:
        write_box_file(meta / f"scannet_{split}_gt_box.json", gt[split])
        if split != "train":
            write_box_file(meta / f"scannet_{split}_pred_box.json", pred[split])
    t_frames = time.perf_counter()
    prepare_frames(posed, meta / "scannet_select_frames.json", scene_ids, job=FramesJob(str(posed), max_frames=max_frames),
                   progress=progress)
    t_frames = time.perf_counter() - t_frames
    processed = out / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    qtypes: dict[str, dict[str, dict[str, int]]] = {}
    for split in used:
        for task, items in anns[split].items():
            for j, it in enumerate(items):  # ids unique per file, as upstream's running index
                if task is not Task.SCANQA:
                    it["id"] = j
            (processed / ANNOTATION_FILES[task].format(split=split)).write_text(json.dumps(items), encoding="utf-8")
            counts.setdefault(split, {})[task.value] = len(items)
            by_type = qtypes.setdefault(split, {}).setdefault(task.value, {})
            for it in items:
                by_type[it["metadata"]["question_type"]] = by_type.get(it["metadata"]["question_type"], 0) + 1
    yaml_lines = ["datasets:"] + [
        f"  - json_path: processed/{ANNOTATION_FILES[t].format(split='train')}\n    sampling_strategy: \"all\"" for t in Task
    ]
    (out / "multi.yaml").write_text("\n".join(yaml_lines) + "\n", encoding="utf-8")
    info: dict[str, Any] = {
        "generator": "video3dllm_training.synthetic_benchmark",
        "version": GENERATOR_VERSION,
        "scene_generator_version": SCENE_GENERATOR_VERSION,
        "seed": seed,
        "scene_count": scenes,
        "fractions": {"val": val_fraction, "test": test_fraction},
        "scenes": {k: sorted(gt[k]) for k in SPLITS},
        "split_of": dict(zip(scene_ids, splits)),
        "scene_seeds": scene_seeds,
        "frames_per_scene": frames_per_scene,
        "image_size": [width, height],
        "max_frames": max_frames,
        "caps": dict(DEFAULT_CAPS if caps is None else caps),
        "margins": asdict(rel.DEFAULT_MARGINS) | {"on_top_tol_m": rel.ON_TOP_TOL_M},
        "counts": counts,
        "question_types": qtypes,
    }
    (out / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return {**info, "frames_file_s": round(t_frames, 3), "total_s": round(time.perf_counter() - t0, 3)}
