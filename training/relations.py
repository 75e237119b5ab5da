"""Exact 3D relations between the objects of a synthetic scene, with ambiguity rejection.

Used by the synthetic benchmark (`video3dllm_training.synthetic_benchmark`) to compute the answers
of relation questions from the objects.json geometry. Every relation either returns its exact
answer or None when a human could reasonably disagree (a runner-up within the margin, two
definitions of "close" that disagree, ...); the generator only asks questions whose relation
returned an answer.

Conventions (the world frame of objects.json: z up, floor at z = 0, metres; boxes axis-aligned):

* Objects are `video3dllm_core.synthetic.SceneObject`s (`objects_from_json` reads objects.json).
  "Floor objects" (`placement == "floor"`, also those stacked on another object) are the things
  questions ask about; the door and the window (`placement == "wall"`) are landmarks only.
* Horizontal geometry only: an object is its box centre projected on the floor (`xy`) and its
  footprint (the box's x/y extent). `centre_distance` is the distance between projected centres,
  `footprint_gap` the shortest distance between the two footprints (0 when they overlap).
* closest / farthest: by centre distance; unambiguous when the runner-up is at least
  `Margins.distance_m` farther (closer) AND the same object is also strictly the nearest
  (farthest) by footprint gap, so that "close" read as centre or as edge distance agrees.
* A viewpoint (`Viewpoint`) is a floor position and a unit facing direction. "Seen from object R"
  means: standing at R's projected centre, facing the room centre (the origin of objects.json's
  world frame, `room.center`); "standing at A facing B" faces B's projected centre. In viewer
  coordinates `forward` is the offset along the facing direction, `right` the offset along
  facing x z_up (so `left = -right`), and the bearing is atan2(left, forward) in degrees
  (positive = to the left, 0 = straight ahead).
* leftmost / rightmost seen from a viewpoint: the candidate with the largest (smallest) bearing,
  i.e. the leftmost in the viewer's visual field. Unambiguous when every candidate is at least
  `min_forward_m` in front of the viewer, the runner-up's bearing differs by at least
  `bearing_deg`, and the same object is also the extreme by lateral offset with at least
  `lateral_m` to the runner-up.
* left / right of a viewer (situated): the sign of `right`; unambiguous when |right| >=
  `lateral_m` and the bearing is at least `side_angle_deg` away from straight ahead and straight
  behind. In front / behind: the sign of `forward`, with |forward| >= `lateral_m` and the bearing
  at least `side_angle_deg` away from +-90 degrees.
* on top of: A's bottom is within `ON_TOP_TOL_M` of B's top and A's centre lies over B's
  footprint. next to: the unique nearest object by footprint gap, at most `next_to_gap_m` away,
  with the runner-up at least `distance_m` farther (objects stacked on / under the target do not
  count).
* within a radius of a reference: inside when the centre distance <= r - `within_m`, outside when
  the footprint gap >= r + `within_m` (so centre and edge readings agree); anything between is
  ambiguous and the whole query is rejected.
* largest / smallest: by box volume; unambiguous when the runner-up differs by the factor
  `volume_ratio`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from video3dllm_core.synthetic import SceneObject

__all__ = [
    "Margins",
    "DEFAULT_MARGINS",
    "ON_TOP_TOL_M",
    "Viewpoint",
    "objects_from_json",
    "load_scene_objects",
    "floor_objects",
    "landmarks",
    "matching",
    "count_matching",
    "centre_distance",
    "footprint_gap",
    "volume",
    "closest_to",
    "farthest_from",
    "leftmost",
    "rightmost",
    "side_of",
    "front_or_behind",
    "on_top_of",
    "support_of",
    "objects_on",
    "next_to",
    "within",
    "largest",
    "smallest",
]

ON_TOP_TOL_M = 0.02  # vertical tolerance of "A rests on B" (m)


@dataclass(frozen=True)
class Margins:
    """How decisive a relation must be before it is asked about (see the module docstring)."""

    distance_m: float = 0.3  # closest / farthest / next-to: runner-up at least this much farther
    lateral_m: float = 0.3  # leftmost / rightmost runner-up; situated left/right/front/behind offset
    bearing_deg: float = 10.0  # leftmost / rightmost: runner-up bearing difference
    side_angle_deg: float = 15.0  # situated: angle away from the dividing line
    min_forward_m: float = 0.3  # leftmost / rightmost: every candidate at least this far in front
    next_to_gap_m: float = 0.5  # next to: largest footprint gap
    within_m: float = 0.2  # within r: distance from the boundary
    volume_ratio: float = 1.5  # largest / smallest: volume factor to the runner-up


DEFAULT_MARGINS = Margins()


# ---------------------------------------------------------------- objects and basic geometry
def objects_from_json(doc: dict[str, Any]) -> list[SceneObject]:
    """SceneObjects of an objects.json document (`SceneSpec.to_json()`), ordered by id."""
    out = []
    for i, o in enumerate(doc.get("objects", [])):
        try:
            out.append(SceneObject(
                id=int(o["id"]), label=str(o["label"]), colour=str(o["colour"]), rgb=tuple(o.get("rgb", (0, 0, 0))),  # type: ignore[arg-type]
               
                shape=str(o["shape"]), center=tuple(float(v) for v in o["box"]["center"]),  # type: ignore[arg-type]
                size=tuple(float(v) for v in o["box"]["size"]),  # type: ignore[arg-type]
                placement=str(o.get("placement", "floor")),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"objects.json: objects[{i}] needs id, label, colour, shape and box.center/size ({exc!r})") from None
    return sorted(out, key=lambda o: o.id)


def load_scene_objects(posed_images: str | Path, scene_id: str, n_boxes: int) -> list[SceneObject]:
    """The objects of `<posed_images>/<scene_id>/objects.json`, checked to match the scene's `n_boxes` boxes of
    a benchmark box file (same order: box k is object k)."""
    objects = objects_from_json(json.loads((Path(posed_images) / scene_id / "objects.json").read_text()))
    if len(objects) != n_boxes:
        raise ValueError(f"{scene_id}: {n_boxes} boxes in the box file, {len(objects)} objects in objects.json "
                         "(box file and scenes from different benchmarks? run make-benchmark again)")
    return objects


def floor_objects(objects: Iterable[SceneObject]) -> list[SceneObject]:
    """The objects questions are about (placement "floor", including stacked ones)."""
    return [o for o in objects if o.placement == "floor"]


def landmarks(objects: Iterable[SceneObject]) -> list[SceneObject]:
    """Wall objects (door, window): references only."""
    return [o for o in objects if o.placement == "wall"]


def matching(objects: Iterable[SceneObject], label: str | None = None, colour: str | None = None,
             shapes: Sequence[str] | None = None) -> list[SceneObject]:
    """Floor objects with the given label, colour and shape (None = any)."""
    return [o for o in floor_objects(objects)
            if (label is None or o.label == label) and (colour is None or o.colour == colour)
            and (shapes is None or o.shape in shapes)]


def count_matching(objects: Iterable[SceneObject], label: str | None = None, colour: str | None = None,
                   shapes: Sequence[str] | None = None) -> int:
    """How many floor objects have the given label / colour / shape."""
    return len(matching(objects, label, colour, shapes))


def _xy(o: SceneObject) -> np.ndarray:
    return np.asarray(o.center[:2], dtype=np.float64)


def _footprint(o: SceneObject) -> tuple[float, float, float, float]:
    (cx, cy, _), (dx, dy, _) = o.center, o.size
    return cx - dx / 2, cy - dy / 2, cx + dx / 2, cy + dy / 2


def centre_distance(a: SceneObject, b: SceneObject) -> float:
    """Distance between the box centres projected on the floor (m)."""
    return float(np.linalg.norm(_xy(a) - _xy(b)))


def footprint_gap(a: SceneObject, b: SceneObject) -> float:
    """Shortest floor distance between the two footprints (m); 0 when they overlap or touch."""
    ax0, ay0, ax1, ay1 = _footprint(a)
    bx0, by0, bx1, by1 = _footprint(b)
    dx = max(0.0, bx0 - ax1, ax0 - bx1)
    dy = max(0.0, by0 - ay1, ay0 - by1)
    return math.hypot(dx, dy)


def volume(o: SceneObject) -> float:
    """Box volume (m^3)."""
    return float(np.prod(o.size))


def _extreme(values: Sequence[float], margin: float, largest: bool) -> int | None:
    """Index of the unique extreme value, None when the runner-up is within `margin` (or no values)."""
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64) * (1.0 if largest else -1.0)
    order = np.argsort(-v, kind="stable")
    if len(v) > 1 and v[order[0]] - v[order[1]] < margin:
        return None
    return int(order[0])


def _others(candidates: Iterable[SceneObject], *exclude: SceneObject) -> list[SceneObject]:
    ids = {o.id for o in exclude}
    return [c for c in candidates if c.id not in ids]


# ---------------------------------------------------------------- distance relations
def _by_distance(candidates: Iterable[SceneObject], reference: SceneObject, margins: Margins, farthest: bool) -> SceneObject | None:
    cands = _others(candidates, reference)
    dist = [centre_distance(c, reference) for c in cands]
    i = _extreme(dist, margins.distance_m, largest=farthest)
    if i is None:
        return None
    gaps = [footprint_gap(c, reference) for c in cands]
    rest = gaps[:i] + gaps[i + 1:]
    if rest and ((not farthest and gaps[i] >= min(rest)) or (farthest and gaps[i] <= max(rest))):
        return None  # centre and edge distance disagree
    return cands[i]


def closest_to(candidates: Iterable[SceneObject], reference: SceneObject, margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The candidate (reference itself excluded) closest to `reference`, or None when ambiguous."""
    return _by_distance(candidates, reference, margins, farthest=False)


def farthest_from(candidates: Iterable[SceneObject], reference: SceneObject, margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The candidate (reference itself excluded) farthest from `reference`, or None when ambiguous."""
    return _by_distance(candidates, reference, margins, farthest=True)


def within(objects: Iterable[SceneObject], reference: SceneObject, radius_m: float,
           margins: Margins = DEFAULT_MARGINS) -> list[SceneObject] | None:
    """The objects (reference excluded) within `radius_m` of `reference`; None when any is borderline."""
    inside = []
    for o in _others(objects, reference):
        if centre_distance(o, reference) <= radius_m - margins.within_m:
            inside.append(o)
        elif footprint_gap(o, reference) < radius_m + margins.within_m:
            return None
    return inside


# ---------------------------------------------------------------- viewpoints
@dataclass(frozen=True)
class Viewpoint:
    """A viewer on the floor: position (x, y) and unit facing direction (x, y), world frame."""

    position: tuple[float, float]
    forward: tuple[float, float]

    MIN_FACING_DISTANCE_M: ClassVar[float] = 0.5

    @classmethod
    def facing(cls, position_xy: Sequence[float], target_xy: Sequence[float]) -> Viewpoint:
        """Standing at `position_xy`, facing `target_xy`."""
        p, t = np.asarray(position_xy[:2], dtype=np.float64), np.asarray(target_xy[:2], dtype=np.float64)
        d = t - p
        n = float(np.linalg.norm(d))
        if n < cls.MIN_FACING_DISTANCE_M:
            raise ValueError(f"viewpoint: the facing target is {n:.2f} m from the position; "
                             f"it must be at least {cls.MIN_FACING_DISTANCE_M} m away to define a direction")
        return cls((float(p[0]), float(p[1])), (float(d[0] / n), float(d[1] / n)))

    @classmethod
    def from_object(cls, obj: SceneObject, facing: SceneObject | None = None,
                    room_centre_xy: Sequence[float] = (0.0, 0.0)) -> Viewpoint:
        """Standing at `obj`'s centre, facing `facing`'s centre (default: the room centre)."""
        target = room_centre_xy if facing is None else facing.center[:2]
        return cls.facing(obj.center[:2], target)

    @property
    def right(self) -> tuple[float, float]:
        """Unit vector to the viewer's right: forward x z_up."""
        return self.forward[1], -self.forward[0]

    def local(self, point_xy: Sequence[float]) -> tuple[float, float]:
        """(forward, right) offsets of a floor point in viewer coordinates (m)."""
        d = np.asarray(point_xy[:2], dtype=np.float64) - np.asarray(self.position)
        return float(d @ np.asarray(self.forward)), float(d @ np.asarray(self.right))

    def bearing_deg(self, point_xy: Sequence[float]) -> float:
        """Angle of a point from straight ahead, degrees in (-180, 180], positive to the left."""
        f, r = self.local(point_xy)
        return math.degrees(math.atan2(-r, f))


def _lateral_extreme(candidates: Iterable[SceneObject], view: Viewpoint, margins: Margins, left: bool) -> SceneObject | None:
    cands = list(candidates)
    if not cands:
        return None
    local = [view.local(c.center[:2]) for c in cands]
    if any(f < margins.min_forward_m for f, _ in local):
        return None  # something beside or behind the viewer: "leftmost" is not well defined
    sign = 1.0 if left else -1.0
    i = _extreme([sign * view.bearing_deg(c.center[:2]) for c in cands], margins.bearing_deg, largest=True)
    j = _extreme([-sign * r for _, r in local], margins.lateral_m, largest=True)
    return cands[i] if i is not None and i == j else None


def leftmost(candidates: Iterable[SceneObject], view: Viewpoint, margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The leftmost candidate in the viewer's field of view, or None when ambiguous."""
    return _lateral_extreme(candidates, view, margins, left=True)


def rightmost(candidates: Iterable[SceneObject], view: Viewpoint, margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The rightmost candidate in the viewer's field of view, or None when ambiguous."""
    return _lateral_extreme(candidates, view, margins, left=False)


def side_of(obj: SceneObject, view: Viewpoint, margins: Margins = DEFAULT_MARGINS) -> str | None:
    """"left" / "right" of the viewer, or None when `obj` is too close to straight ahead or behind."""
    _, r = view.local(obj.center[:2])
    b = abs(view.bearing_deg(obj.center[:2]))
    if abs(r) < margins.lateral_m or not margins.side_angle_deg <= b <= 180.0 - margins.side_angle_deg:
        return None
    return "right" if r > 0 else "left"


def front_or_behind(obj: SceneObject, view: Viewpoint, margins: Margins = DEFAULT_MARGINS) -> str | None:
    """"in front" / "behind" the viewer, or None when `obj` is too close to the viewer's side line."""
    f, _ = view.local(obj.center[:2])
    b = abs(view.bearing_deg(obj.center[:2]))
    if abs(f) < margins.lateral_m or abs(b - 90.0) < margins.side_angle_deg:
        return None
    return "in front" if f > 0 else "behind"


# ---------------------------------------------------------------- support and adjacency
def on_top_of(a: SceneObject, b: SceneObject, tol_m: float = ON_TOP_TOL_M) -> bool:
    """True when `a` rests on `b`: a's bottom at b's top (within tol_m), a's centre over b's footprint."""
    if a.id == b.id:
        return False
    a_bottom = a.center[2] - a.size[2] / 2
    b_top = b.center[2] + b.size[2] / 2
    x0, y0, x1, y1 = _footprint(b)
    return abs(a_bottom - b_top) <= tol_m and x0 <= a.center[0] <= x1 and y0 <= a.center[1] <= y1


def support_of(obj: SceneObject, objects: Iterable[SceneObject]) -> SceneObject | None:
    """The object `obj` rests on, or None (floor)."""
    under = [o for o in objects if on_top_of(obj, o)]
    return under[0] if len(under) == 1 else None


def objects_on(support: SceneObject, objects: Iterable[SceneObject]) -> list[SceneObject]:
    """Every object resting on `support` (possibly none)."""
    return [o for o in objects if on_top_of(o, support)]


def next_to(target: SceneObject, objects: Iterable[SceneObject], margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The one object `target` is next to (see the module docstring), or None."""
    pool = [o for o in _others(objects, target) if not on_top_of(o, target) and not on_top_of(target, o)]
    gaps = [footprint_gap(target, o) for o in pool]
    i = _extreme(gaps, margins.distance_m, largest=False)
    if i is None or gaps[i] > margins.next_to_gap_m:
        return None
    return pool[i]


# ---------------------------------------------------------------- size
def _by_volume(candidates: Iterable[SceneObject], margins: Margins, key: Callable[[float], float]) -> SceneObject | None:
    cands = list(candidates)
    i = _extreme([key(math.log(volume(c))) for c in cands], math.log(margins.volume_ratio), largest=True)
    return None if i is None else cands[i]


def largest(candidates: Iterable[SceneObject], margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The candidate with the largest box volume, or None when the runner-up is within the ratio."""
    return _by_volume(candidates, margins, lambda v: v)


def smallest(candidates: Iterable[SceneObject], margins: Margins = DEFAULT_MARGINS) -> SceneObject | None:
    """The candidate with the smallest box volume, or None when the runner-up is within the ratio."""
    return _by_volume(candidates, margins, lambda v: -v)
