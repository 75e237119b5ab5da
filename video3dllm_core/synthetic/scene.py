"""Random but reproducible indoor scenes: a room with labelled, coloured, non-overlapping objects.

A `SceneSpec` is pure data (room size, objects with label, colour, shape and axis-aligned box);
`build_meshes` turns it into Open3D triangle meshes for ray casting. The world frame is ScanNet's
axis-aligned one: z up, floor at z = 0, room centred on the origin. Every object box is the exact
axis-aligned bounding box of the object's mesh vertices, so every rendered surface point of an
object lies inside its box (tests rely on this).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SceneObject",
    "SceneSpec",
    "make_scene",
    "build_meshes",
    "SceneMesh",
    "GENERATOR_VERSION",
    "COLOURS",
    "CATALOGUE",
]

GENERATOR_VERSION = "1"

# Named colours for objects (distinct hues; none close to the wall or floor colour).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "orange": (240, 130, 20),
    "purple": (130, 50, 170),
    "cyan": (40, 190, 200),
    "magenta": (210, 40, 160),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "pink": (250, 150, 180),
    "teal": (0, 110, 110),
}
WALL_RGB = (215, 210, 200)
FLOOR_RGB = (150, 135, 115)
DOOR = ("door", "dark brown", (90, 55, 30))
WINDOW = ("window", "light blue", (150, 200, 235))

# label -> (shape, size range). box: (dx, dy, dz) ranges; cylinder/cone: (radius, height);
# sphere: (radius,). All objects stay below 1.25 m so the camera (>= 1.35 m) is never inside one.
CATALOGUE: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    "table": ("box", ((1.0, 1.5), (0.6, 0.9), (0.70, 0.80))),
    "chair": ("box", ((0.42, 0.55), (0.42, 0.55), (0.80, 1.00))),
    "cabinet": ("box", ((0.5, 0.9), (0.4, 0.6), (0.90, 1.20))),
    "bed": ("box", ((1.4, 2.0), (0.9, 1.5), (0.40, 0.60))),
    "sofa": ("box", ((1.5, 2.1), (0.75, 0.95), (0.70, 0.90))),
    "box": ("box", ((0.30, 0.50), (0.30, 0.50), (0.25, 0.45))),
    "lamp": ("cylinder", ((0.10, 0.15), (1.00, 1.20))),
    "trash can": ("cylinder", ((0.15, 0.22), (0.40, 0.60))),
    "stool": ("cylinder", ((0.18, 0.24), (0.45, 0.55))),
    "ball": ("sphere", ((0.15, 0.28),)),
    "plant": ("cone", ((0.20, 0.30), (0.60, 1.00))),
    "traffic cone": ("cone", ((0.15, 0.20), (0.45, 0.70))),
}

WALL_MARGIN = 0.15  # minimum gap between an object and a wall (m)
OBJECT_GAP = 0.10  # minimum gap between two objects' footprints (m)
SHELL = 0.10  # thickness of floor and walls (m)
PANEL = 0.02  # thickness of door/window patches, which sit on the inner wall surface
SPHERE_RESOLUTION = 24
ROUND_RESOLUTION = 48


@dataclass(frozen=True)
class SceneObject:
    """One labelled object with its exact axis-aligned box (world frame, metres)."""

    id: int
    label: str
    colour: str
    rgb: tuple[int, int, int]
    shape: str  # box | cylinder | sphere | cone | panel
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    placement: str = "floor"  # floor | wall
    # Shape parameters the mesh is built from (box: dx, dy, dz; cylinder/cone: r, h; sphere: r).
    params: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "colour": self.colour,
            "rgb": list(self.rgb),
            "shape": self.shape,
            "placement": self.placement,
            "box": {"center": [float(v) for v in self.center], "size": [float(v) for v in self.size]},
        }

    @property
    def box_min(self) -> np.ndarray:
        return np.asarray(self.center) - np.asarray(self.size) / 2

    @property
    def box_max(self) -> np.ndarray:
        return np.asarray(self.center) + np.asarray(self.size) / 2


@dataclass(frozen=True)
class SceneSpec:
    """A room (x, y extent and wall height, centred on the origin, floor z = 0) and its objects."""

    seed: int
    room_size: tuple[float, float, float]
    objects: tuple[SceneObject, ...]
    wall_rgb: tuple[int, int, int] = WALL_RGB
    floor_rgb: tuple[int, int, int] = FLOOR_RGB
    version: str = field(default=GENERATOR_VERSION)

    def to_json(self) -> dict[str, Any]:
        """The objects.json document: room size and every object with its box."""
        return {
            "generator_version": self.version,
            "seed": self.seed,
            "frame": "world: z up, floor at z=0, room centred on the origin, metres",
            "room": {
                "size": [float(v) for v in self.room_size],
                "center": [0.0, 0.0, float(self.room_size[2]) / 2],
            },
            "objects": [o.to_json() for o in self.objects],
        }


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(np.round(rng.uniform(*lo_hi), 3))


def _object_extent(shape: str, params: tuple[float, ...]) -> tuple[float, float, float]:
    """Nominal (dx, dy, dz) of a shape, used for placement (the exact box comes from the mesh)."""
    if shape == "box":
        return params[0], params[1], params[2]
    if shape in ("cylinder", "cone"):
        return 2 * params[0], 2 * params[0], params[1]
    return 2 * params[0], 2 * params[0], 2 * params[0]  # sphere


def _apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """True when two (xmin, ymin, xmax, ymax) footprints are at least OBJECT_GAP apart on x or y."""
    g = OBJECT_GAP
    return a[2] + g <= b[0] or b[2] + g <= a[0] or a[3] + g <= b[1] or b[3] + g <= a[1]


def place_on_floor(rng: np.random.Generator, room_xy: tuple[float, float], extent_xy: tuple[float, float],
                   footprints: list[tuple[float, float, float, float]], tries: int = 200) -> tuple[float, float] | None:
    """Centre (x, y) for an object of footprint extent_xy, WALL_MARGIN from the walls of a room centred
    on the origin and OBJECT_GAP from every footprint already placed (rejection sampling, `tries`
    draws); the new footprint is appended. None when it does not fit (footprints unchanged)."""
    dx, dy = extent_xy
    half_x, half_y = room_xy[0] / 2 - WALL_MARGIN - dx / 2, room_xy[1] / 2 - WALL_MARGIN - dy / 2
    if half_x <= 0 or half_y <= 0:
        return None
    for _ in range(tries):
        cx, cy = float(rng.uniform(-half_x, half_x)), float(rng.uniform(-half_y, half_y))
        fp = (cx - dx / 2, cy - dy / 2, cx + dx / 2, cy + dy / 2)
        if all(_apart(fp, o) for o in footprints):
            footprints.append(fp)
            return cx, cy
    return None


def make_scene(
    seed: int,
    min_objects: int = 5,
    max_objects: int = 10,
    room_x: tuple[float, float] = (4.0, 8.0),
    room_y: tuple[float, float] = (3.0, 7.0),
    wall_height: tuple[float, float] = (2.5, 3.0),
    with_door_and_window: bool = True,
) -> SceneSpec:
    """Draw a room and 5-10 objects (distinct labels, distinct colours) from `seed`.

    Objects stand on the floor, axis-aligned, at least OBJECT_GAP apart and WALL_MARGIN from the
    walls. A door and a window are added as thin coloured patches on two different walls. The
    same seed always gives the same scene.
    """
    if not 1 <= min_objects <= max_objects <= len(CATALOGUE):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(CATALOGUE)}, got {min_objects}, {max_objects}")
    rng = np.random.default_rng(seed)
    lx, ly, lz = _uniform(rng, room_x), _uniform(rng, room_y), _uniform(rng, wall_height)
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    labels = [str(x) for x in rng.permutation(list(CATALOGUE))]
    colours = [str(x) for x in rng.permutation(list(COLOURS))]

    placed: list[SceneObject] = []
    footprints: list[tuple[float, float, float, float]] = []
    for label in labels:
        if len(placed) == n_objects:
            break
        shape, ranges = CATALOGUE[label]
        params = tuple(_uniform(rng, r) for r in ranges)
        dx, dy, dz = _object_extent(shape, params)
        centre = place_on_floor(rng, (lx, ly), (dx, dy), footprints)
        if centre is None:
            continue  # no room left for this one: try the next label
        cx, cy = centre
        colour = colours[len(placed)]
        placed.append(
            SceneObject(
                id=len(placed),
                label=label,
                colour=colour,
                rgb=COLOURS[colour],
                shape=shape,
                center=(cx, cy, dz / 2),
                size=(dx, dy, dz),
                params=params,
            )
        )
    if len(placed) < min_objects:
        raise ValueError(f"seed {seed}: could only place {len(placed)} objects in a {lx}x{ly} m room")

    objects = list(placed)
    if with_door_and_window:
        walls = [str(w) for w in rng.permutation(["x-", "x+", "y-", "y+"])[:2]]
        for (label, colour, rgb), wall in zip((DOOR, WINDOW), walls):
            width, height, bottom = (0.9, 2.05, 0.0) if label == "door" else (1.2, 1.0, 1.0)
            along = lx if wall[0] == "y" else ly
            offset = float(rng.uniform(-(along / 2 - width / 2 - 0.2), along / 2 - width / 2 - 0.2))
            inner = (lx if wall[0] == "x" else ly) / 2
            normal_pos = (inner - PANEL / 2) * (1 if wall[1] == "+" else -1)
            if wall[0] == "x":
                center, size = (normal_pos, offset, bottom + height / 2), (PANEL, width, height)
            else:
                center, size = (offset, normal_pos, bottom + height / 2), (width, PANEL, height)
            objects.append(
                SceneObject(
                    id=len(objects),
                    label=label,
                    colour=colour,
                    rgb=rgb,
                    shape="panel",
                    center=center,
                    size=size,
                    placement="wall",
                    params=size,
                )
            )
    spec = SceneSpec(seed=seed, room_size=(lx, ly, lz), objects=tuple(objects))
    # Replace nominal sizes with the exact mesh boxes (spheres are tessellated inside their radius).
    exact = [_exact_box(o) for o in spec.objects]
    return SceneSpec(seed=seed, room_size=(lx, ly, lz), objects=tuple(exact))


@dataclass
class SceneMesh:
    """A mesh to ray-cast, with its flat colour and the object id it belongs to (-1 = room)."""

    name: str
    mesh: Any  # open3d.geometry.TriangleMesh
    rgb: tuple[int, int, int]
    object_id: int
    textured: bool = False  # floor tiles


def _box_mesh(lo: np.ndarray, hi: np.ndarray) -> Any:
    from video3dllm_core.o3d import o3d

    size = hi - lo
    mesh = o3d.geometry.TriangleMesh.create_box(float(size[0]), float(size[1]), float(size[2]))
    mesh.translate(lo.astype(np.float64))
    return mesh


def _object_mesh(obj: SceneObject) -> Any:
    """Mesh of an object placed at its nominal position (bottom at the box bottom)."""
    from video3dllm_core.o3d import o3d

    c = np.asarray(obj.center, dtype=np.float64)
    if obj.shape in ("box", "panel"):
        s = np.asarray(obj.params, dtype=np.float64)
        return _box_mesh(c - s / 2, c + s / 2)
    if obj.shape == "cylinder":
        mesh = o3d.geometry.TriangleMesh.create_cylinder(obj.params[0], obj.params[1], ROUND_RESOLUTION, 1)
    elif obj.shape == "cone":
        mesh = o3d.geometry.TriangleMesh.create_cone(obj.params[0], obj.params[1], ROUND_RESOLUTION, 1)
    elif obj.shape == "sphere":
        mesh = o3d.geometry.TriangleMesh.create_sphere(obj.params[0], SPHERE_RESOLUTION)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    v = np.asarray(mesh.vertices)
    lo, hi = v.min(axis=0), v.max(axis=0)
    # Centre the footprint on (cx, cy) and stand the mesh on the floor.
    mesh.translate(np.array([c[0] - (lo[0] + hi[0]) / 2, c[1] - (lo[1] + hi[1]) / 2, -lo[2]]))
    return mesh


def _exact_box(obj: SceneObject) -> SceneObject:
    v = np.asarray(_object_mesh(obj).vertices)
    lo, hi = v.min(axis=0), v.max(axis=0)
    center = tuple(float(x) for x in (lo + hi) / 2)
    size = tuple(float(x) for x in hi - lo)
    return SceneObject(
        id=obj.id,
        label=obj.label,
        colour=obj.colour,
        rgb=obj.rgb,
        shape=obj.shape,
        center=center,  # type: ignore[arg-type]
        size=size,  # type: ignore[arg-type]
        placement=obj.placement,
        params=obj.params,
    )


def build_meshes(scene: SceneSpec) -> list[SceneMesh]:
    """Triangle meshes of the floor, the four walls and every object of `scene`."""
    lx, ly, lz = scene.room_size
    hx, hy = lx / 2, ly / 2
    t = SHELL
    shell = {  # name -> (min corner, max corner); walls stand outside the interior
        "floor": ([-hx - t, -hy - t, -t], [hx + t, hy + t, 0.0]),
        "wall x-": ([-hx - t, -hy - t, 0.0], [-hx, hy + t, lz]),
        "wall x+": ([hx, -hy - t, 0.0], [hx + t, hy + t, lz]),
        "wall y-": ([-hx, -hy - t, 0.0], [hx, -hy, lz]),
        "wall y+": ([-hx, hy, 0.0], [hx, hy + t, lz]),
    }
    meshes = [
        SceneMesh(
            name,
            _box_mesh(np.array(lo), np.array(hi)),
            scene.floor_rgb if name == "floor" else scene.wall_rgb,
            -1,
            textured=name == "floor",
        )
        for name, (lo, hi) in shell.items()
    ]
    for obj in scene.objects:
        meshes.append(SceneMesh(f"{obj.id}:{obj.label}", _object_mesh(obj), obj.rgb, obj.id))
    return meshes
