"""ScanNet scene annotations: axis-aligned point cloud and ground-truth object boxes.

Reads, from `scans/<scene_id>/`:

    <scene_id>.txt                          meta file; its `axisAlignment = ...` line is the 4x4 A
    <scene_id>_vh_clean_2.ply               mesh; vertices x y z (float) + red green blue (uchar)
    <scene_id>.aggregation.json             segGroups: objectId, label, segments (over-segment ids)
    <scene_id>_vh_clean_2.0.010000.segs.json  segIndices: the over-segment id of every vertex

and reproduces upstream's `extract_scannet_pcd.py` (Video-3D LLM, from M3DRef-CLIP) and
`extract_gt_box.py`:

* points = A @ vertices (homogeneous, float64) stored as float32; colours uint8. Without an
  axisAlignment line (ScanNet's test scenes) A is the identity and `axis_aligned` is False.
* every vertex of every segment of a segGroup gets that group's objectId; groups are applied in
  file order, so a later group overwrites a shared segment (as upstream). No label is filtered:
  walls, floors and ceilings are objects too, as in upstream's box files.
* an object's box is the min/max of its vertices (float32), centre (min + max) / 2 and size
  max - min computed in float64; objects left with no vertex are dropped.

Without the two annotation files (test scenes) the scene has points but no objects.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from video3dllm_core.sources.posed_images import read_scannet_axis_alignment

__all__ = [
    "SegGroup",
    "SceneObject",
    "ScanNetScene",
    "read_mesh_vertices",
    "read_segments",
    "read_aggregation",
    "object_boxes",
    "load_scannet_scene",
]


@dataclass(frozen=True)
class SegGroup:
    """One annotated object of an aggregation file."""

    object_id: int
    label: str
    segments: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A ground-truth object: ScanNet objectId, raw label, axis-aligned box (metres, scene frame)."""

    object_id: int
    label: str
    center: np.ndarray  # (3,) float64
    size: np.ndarray  # (3,) float64, full edge lengths
    num_points: int

    @property
    def box(self) -> np.ndarray:
        """(cx, cy, cz, sx, sy, sz), the box format of the metrics and the model."""
        return np.concatenate([self.center, self.size])


@dataclass(frozen=True, eq=False)
class ScanNetScene:
    """An annotated ScanNet scene in its axis-aligned frame."""

    scene_id: str
    points_xyz: np.ndarray  # (N, 3) float32, axis-aligned
    colors_rgb: np.ndarray  # (N, 3) uint8
    instance_ids: np.ndarray  # (N,) int32, objectId per vertex, -1 = none
    axis_alignment: np.ndarray  # (4, 4) float64, identity when the meta file has none
    axis_aligned: bool
    objects: tuple[SceneObject, ...]

    def boxes(self) -> np.ndarray:
        """(M, 6) array of the objects' (centre, size) boxes, in `objects` order."""
        if not self.objects:
            return np.zeros((0, 6))
        return np.stack([o.box for o in self.objects])

    def object_by_id(self, object_id: int) -> SceneObject:
        """The object with ScanNet objectId `object_id` (ScanRefer's `object_id`)."""
        for o in self.objects:
            if o.object_id == int(object_id):
                return o
        raise KeyError(f"{self.scene_id} has no object with objectId {object_id} (ids: {[o.object_id for o in self.objects]})")


def read_mesh_vertices(ply_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and colours (N, 3) uint8 of a ScanNet PLY mesh (plyfile)."""
    from plyfile import PlyData, PlyParseError

    ply_path = Path(ply_path)
    try:
        ply = PlyData.read(str(ply_path))
    except (PlyParseError, ValueError, EOFError, struct.error) as exc:
        raise ValueError(f"{ply_path.name}: not a readable PLY file ({exc})") from None
    if "vertex" not in ply:
        raise ValueError(f"{ply_path.name}: has no 'vertex' element")
    vertex = ply["vertex"].data
    names = vertex.dtype.names or ()
    missing = [f for f in ("x", "y", "z", "red", "green", "blue") if f not in names]
    if missing:
        raise ValueError(f"{ply_path.name}: vertex element lacks {', '.join(missing)} (has {', '.join(names)})")
    xyz = np.stack([vertex[c] for c in "xyz"], axis=1).astype(np.float64)
    rgb_raw = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=1)
    if rgb_raw.dtype != np.uint8:
        raise ValueError(f"{ply_path.name}: vertex colours must be uchar (0-255), got {rgb_raw.dtype}")
    if not np.all(np.isfinite(xyz)):
        raise ValueError(f"{ply_path.name}: vertex coordinates hold NaN/inf")
    return xyz, rgb_raw.astype(np.uint8)


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc})") from None


def read_segments(segs_path: str | Path) -> np.ndarray:
    """The `segIndices` array (over-segment id per mesh vertex) of a `*.segs.json` file, int64."""
    segs_path = Path(segs_path)
    data = _load_json(segs_path)
    if not isinstance(data, dict) or not isinstance(data.get("segIndices"), list):
        raise ValueError(f"{segs_path.name}: expected a JSON object with a 'segIndices' list (one segment id per vertex)")
    try:
        seg = np.asarray(data["segIndices"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{segs_path.name}: 'segIndices' must hold integers") from None
    if seg.ndim != 1:
        raise ValueError(f"{segs_path.name}: 'segIndices' must be a flat list of integers")
    return seg


def read_aggregation(agg_path: str | Path) -> list[SegGroup]:
    """The segGroups of a `*.aggregation.json` file, in file order."""
    agg_path = Path(agg_path)
    data = _load_json(agg_path)
    if not isinstance(data, dict) or not isinstance(data.get("segGroups"), list):
        raise ValueError(f"{agg_path.name}: expected a JSON object with a 'segGroups' list")
    groups: list[SegGroup] = []
    for i, g in enumerate(data["segGroups"]):
        if not isinstance(g, dict):
            raise ValueError(f"{agg_path.name}: segGroups[{i}] is not an object")
        for key in ("objectId", "label", "segments"):
            if key not in g:
                raise ValueError(f"{agg_path.name}: segGroups[{i}] has no '{key}' field")
        obj_id, label, segments = g["objectId"], g["label"], g["segments"]
        if not isinstance(obj_id, int) or isinstance(obj_id, bool) or obj_id < 0:
            raise ValueError(f"{agg_path.name}: segGroups[{i}].objectId must be a non-negative integer, got {obj_id!r}")
        if not isinstance(label, str):
            raise ValueError(f"{agg_path.name}: segGroups[{i}].label must be a string, got {label!r}")
        if not isinstance(segments, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in segments):
            raise ValueError(f"{agg_path.name}: segGroups[{i}].segments must be a list of integer segment ids")
        groups.append(SegGroup(object_id=obj_id, label=label, segments=tuple(segments)))
    ids = [g.object_id for g in groups]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{agg_path.name}: objectId {dup} appears in several segGroups")
    return groups


def _instance_ids(groups: list[SegGroup], seg_indices: np.ndarray, agg_name: str) -> np.ndarray:
    """objectId per vertex (-1 = none), later groups overwriting earlier ones as upstream does."""
    instance = np.full(len(seg_indices), -1, dtype=np.int32)
    present = set(np.unique(seg_indices).tolist())
    for g in groups:
        missing = [s for s in g.segments if s not in present]
        if missing:
            raise ValueError(
                f"{agg_name}: object {g.object_id} ({g.label}) lists segment(s) {missing[:5]} that no vertex "
                "has in the segs.json file; the annotation and segmentation files do not belong together"
            )
        instance[np.isin(seg_indices, np.asarray(g.segments, dtype=np.int64))] = g.object_id
    return instance


def object_boxes(points_xyz: np.ndarray, instance_ids: np.ndarray, labels: dict[int, str]) -> tuple[SceneObject, ...]:
    """Axis-aligned boxes of every instance id present (ascending id), upstream's float32 min/max."""
    pts = np.asarray(points_xyz, dtype=np.float32)
    objects: list[SceneObject] = []
    for obj_id in np.unique(instance_ids):
        if obj_id < 0:
            continue
        mask = instance_ids == obj_id
        lo = pts[mask].min(axis=0).astype(np.float64)
        hi = pts[mask].max(axis=0).astype(np.float64)
        objects.append(
            SceneObject(
                object_id=int(obj_id),
                label=labels.get(int(obj_id), ""),
                center=(lo + hi) / 2,
                size=hi - lo,
                num_points=int(mask.sum()),
            )
        )
    return tuple(objects)


def load_scannet_scene(scene_dir: str | Path, scene_id: str | None = None) -> ScanNetScene:
    """Load `scans/<scene_id>/` into an axis-aligned point cloud with ground-truth boxes.

    `scene_id` defaults to the directory name. The meta .txt and the PLY are required; the
    aggregation and segs files must be both present (train/val) or both absent (test).
    """
    scene_dir = Path(scene_dir)
    sid = scene_id or scene_dir.name
    meta = scene_dir / f"{sid}.txt"
    ply = scene_dir / f"{sid}_vh_clean_2.ply"
    agg = scene_dir / f"{sid}.aggregation.json"
    segs = scene_dir / f"{sid}_vh_clean_2.0.010000.segs.json"
    for required in (meta, ply):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: a ScanNet scene needs {meta.name} and {ply.name}")
    A = read_scannet_axis_alignment(meta)
    axis_aligned = A is not None
    A = np.eye(4) if A is None else A
    xyz, rgb = read_mesh_vertices(ply)
    points = ((np.c_[xyz, np.ones(len(xyz))] @ A.T)[:, :3]).astype(np.float32)

    if agg.is_file() != segs.is_file():
        present, absent = (agg, segs) if agg.is_file() else (segs, agg)
        raise FileNotFoundError(f"{absent} is missing while {present.name} exists: object annotations need both files")
    instance_ids = np.full(len(points), -1, dtype=np.int32)
    objects: tuple[SceneObject, ...] = ()
    if agg.is_file():
        seg_indices = read_segments(segs)
        if len(seg_indices) != len(points):
            raise ValueError(
                f"{segs.name}: has {len(seg_indices)} segIndices but {ply.name} has {len(points)} vertices; "
                "the segmentation must list one segment id per mesh vertex"
            )
        groups = read_aggregation(agg)
        instance_ids = _instance_ids(groups, seg_indices, agg.name)
        objects = object_boxes(points, instance_ids, {g.object_id: g.label for g in groups})
    return ScanNetScene(
        scene_id=sid,
        points_xyz=points,
        colors_rgb=rgb,
        instance_ids=instance_ids,
        axis_alignment=A,
        axis_aligned=axis_aligned,
        objects=objects,
    )
