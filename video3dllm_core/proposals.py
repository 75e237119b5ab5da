"""Class-agnostic 3D object proposals: the candidate boxes the grounding head chooses from.

Video-3D LLM grounds a phrase by scoring candidate boxes (upstream: Mask3D instance boxes on
ScanNet). On a robot there is no Mask3D, so `propose_boxes` makes candidates geometrically from
the fused keyframe points, in a z-up frame (the scene frame of `video3dllm_core.scene`):

1. **Voxel down-sampling** (`voxel_m`): uniform density and bounded cost. Every input point keeps
   the index of its voxel, so boxes are measured on the full-resolution points afterwards and do
   not shrink by the voxel size.
2. **Structure removal**, at most `max_planes` RANSAC rounds (`geometry.ransac_plane`: seeded,
   refined by least squares to a fixed point of its inlier set, so bitwise repeatable):
   each round fits the largest plane in what is left and classifies it, judging its extent by the
   largest connected piece of its inliers (RANSAC also collects unrelated strips crossing the plane), as
   * *floor*: normal within `plane_angle_tol_deg` of vertical and height within `floor_band_m`
     of the lowest points (their 1st percentile) -> removed;
   * *ceiling*: horizontal, at least `ceiling_min_height_m` above the floor and spanning at least
     `structure_min_span_m` in both horizontal directions -> removed;
   * *wall*: normal within `plane_angle_tol_deg` of horizontal, inliers spanning at least
     `structure_min_span_m` along the plane and `wall_min_height_m` in height, or at least
     `wall_tall_m` tall (a strip of wall seen between objects) -> removed;
   * anything else (a table top, a cabinet front, a sofa back): kept for clustering; its largest
     piece is set aside so the next round can find the next structural plane, while its other
     inliers (slices of other surfaces) stay in the search.
   A structural plane takes every voxel within `structure_band_m` with it (fused walls are thicker
   than the RANSAC inlier distance: pose drift, depth noise, the upstream half-pixel convention).
   Search stops early when the largest plane has fewer than `min_plane_points` points.
3. **Clustering** of the kept voxels with Open3D DBSCAN (`cluster_eps_m`, `dbscan_min_points`).
   `cluster_eps_m` must stay below the gap between neighbouring objects or they merge; objects that
   touch (a cup on a table) come out as one proposal, the known limit of geometric proposals.
4. **Size filters**: at least `min_cluster_voxels` voxels, largest side within
   [`min_extent_m`, `max_extent_m`].
5. **Boxes**: the axis-aligned box of each cluster's input points. Removing the floor also removes
   the bottom `structure_band_m` of every object standing on it, so a box whose bottom lies within
   `floor_snap_m` of the floor is extended down to the floor (`snap_to_floor`).
6. **Nested fragments** (`drop_nested_fragments`): a cluster whose box lies (`nested_inside_fraction`)
   inside a proposal at least 50x its volume (`nested_volume_ratio`) is a piece of that object whose link
   to the rest was not seen (a table leg under its top), not an object, and is dropped.
7. **Floor-extended twins** (`add_floor_extended`): a cluster floating less than
   `floor_extend_max_height_m` above the floor is often an object whose lower part was never seen
   (a chair behind a sofa shows only its top). Such a cluster yields two proposals, its own box and
   the box extended down to the floor (`Proposals.floor_extended` marks the twin); the grounding
   head picks whichever matches. On the synthetic benchmark this raises recall at IoU 0.5
   (docs/scene.md).
8. **Stacked objects** (`split_stacked`): things standing on a table touch it and come out in its
   cluster (a box on a table made one 1.2 m tall "table"). A cluster's highest voxel layer that is a
   *surface* (its cells cover `support_fill_fraction` of the cluster's footprint and, holes of sparse
   depth closed, mostly have all four neighbours: a table top, a bed) is a support when the voxels
   clear above it cover at most `stacked_max_footprint_fraction` of the footprint and rise at least
   `stacked_min_height_m`. The support (cut at its surface) and each connected piece above it (its
   bottom set on the surface) become proposals of their own, marked `Proposals.stacked_part`, with no
   floor twin; the cluster's own box stays, for a thing whose top carries a part of itself (a chair's
   backrest). Cones and balls never qualify: their layers are rings of cells, not surfaces.
9. **Wall panels** (`propose_wall_panels`, needs colours): doors, windows, boards and pictures are
   flush with their wall (a door stands 2 cm proud of it), so step 2 removes them with the wall and
   DBSCAN never sees them - yet "the chair closest to the door" needs the door as a candidate. In
   each wall's removed slab, the voxels whose mean chromaticity lies at least `panel_chroma_distance`
   from the wall's own (the slab's median) are clustered; a piece spanning at least
   `panel_min_side_m` along the wall and in height and filling `panel_min_fill` of that outline
   (sensor noise gives sparse pieces) becomes a proposal marked `Proposals.wall_panel`.
   Its box runs from the wall plane to the piece's face, `panel_margin_m` beyond it so that the
   face's points lie inside, and its bottom snaps to the floor like an object's. A wall without colour contrast (a white door in a white wall, glass
   that returns no depth) gives no panel: geometry alone cannot tell it from the wall.

External boxes (a detector's, or ScanNet's ground-truth instances) go through `external_boxes`,
which validates them and returns the same `Proposals` type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from numpy.typing import ArrayLike

from video3dllm_core.geometry import plane_distances, ransac_plane, voxel_keys
from video3dllm_core.ingest import IngestedFrame, crop_world_coords

__all__ = [
    "ProposalConfig",
    "Proposals",
    "FusedPoints",
    "propose_boxes",
    "external_boxes",
    "fuse_points",
]


@dataclass(frozen=True)
class ProposalConfig:
    """Parameters of `propose_boxes` (metres, degrees; counts are down-sampled voxels).

    The defaults suit room-scale RGB-D scenes (ScanNet-like, or the synthetic ones): 4 cm voxels
    resolve objects 10 cm apart, and planes must be room-sized to count as structure.
    """

    voxel_m: float = 0.04
    """Down-sampling voxel edge."""
    max_planes: int = 10
    """Upper bound on RANSAC rounds (floor + up to 4 walls + ceiling + a few kept surfaces)."""
    plane_distance_m: float = 0.03
    """RANSAC inlier distance."""
    plane_ransac_iterations: int = 300
    """RANSAC iterations per round."""
    min_plane_points: int = 150
    """A plane with fewer inlier voxels ends the structure search."""
    plane_angle_tol_deg: float = 10.0
    """Largest deviation from horizontal/vertical for a floor, ceiling or wall plane."""
    floor_band_m: float = 0.15
    """A horizontal plane this close above the lowest points (1st height percentile) is the floor."""
    ceiling_min_height_m: float = 1.8
    """A large horizontal plane this far above the floor is a ceiling."""
    structure_min_span_m: float = 2.0
    """Smallest horizontal span of a wall (along the plane) or a ceiling (both directions)."""
    wall_min_height_m: float = 1.5
    """Smallest height span of a wall's inliers (a sofa back or a cabinet front is lower/narrower)."""
    wall_tall_m: float = 2.2
    """A vertical plane piece at least this tall is a wall whatever its width (a wall seen through
    a gap between objects); doors are 2.0-2.1 m."""
    structure_band_m: float = 0.06
    """Everything within this distance of a floor/wall/ceiling plane is removed with it."""
    cluster_eps_m: float = 0.09
    """DBSCAN neighbourhood radius; keep it below the smallest gap between objects."""
    dbscan_min_points: int = 4
    """DBSCAN core-point neighbour count."""
    min_cluster_voxels: int = 20
    """Smaller clusters are noise (stray points, far fragments)."""
    min_extent_m: float = 0.10
    """The largest side of a kept box is at least this."""
    max_extent_m: float = 4.0
    """The largest side of a kept box is at most this (left-over structure)."""
    snap_to_floor: bool = True
    """Extend boxes whose bottom is within `floor_snap_m` of the floor down to the floor."""
    floor_snap_m: float = 0.10
    """Distance for `snap_to_floor`: `structure_band_m` plus a voxel covers the removed slab."""
    drop_nested_fragments: bool = True
    """Drop a cluster lying inside a much larger one's box (a table leg whose link to the top was not seen)."""
    nested_inside_fraction: float = 0.9
    """`drop_nested_fragments`: at least this fraction of the small box's volume is inside the large box ..."""
    nested_volume_ratio: float = 0.02
    """... and the small box has at most this fraction of its volume (a bin under a desk, ~5 %, stays)."""
    add_floor_extended: bool = True
    """For a box floating above the floor, add a second box extended down to the floor."""
    floor_extend_max_height_m: float = 1.0
    """Only boxes whose bottom is at most this high get the extended twin (not wall shelves)."""
    split_stacked: bool = True
    """Add a support and what stands on it as proposals of their own (module docstring, step 8)."""
    support_fill_fraction: float = 0.5
    """`split_stacked`: a voxel layer this full (of the cluster's footprint cells) is a supporting surface ..."""
    stacked_max_footprint_fraction: float = 0.6
    """... and the voxels above it, covering at most this fraction of the footprint, stand on it ..."""
    stacked_min_height_m: float = 0.08
    """... when they rise at least this far above its top (not a ripple of the surface itself)."""
    propose_wall_panels: bool = True
    """Propose coloured panels in the removed walls (doors, windows; module docstring, step 9)."""
    panel_chroma_distance: float = 0.06
    """`propose_wall_panels`: a wall voxel whose chromaticity (r, g, b) / (r + g + b) lies this far
    (Euclidean) from the wall's median chromaticity is not wall. Chromaticity, not RGB: light and view
    angle change a wall's brightness by a factor of two or more, its hue hardly (in the synthetic rooms
    the brown door is 0.23 from the wall, the pale blue window 0.12, a wall corner in shadow 0.01)."""
    panel_min_side_m: float = 0.25
    """`propose_wall_panels`: a panel spans at least this along the wall and in height (a picture, not the
    thin strip where an object's side touches the wall)."""
    panel_min_fill: float = 0.5
    """`propose_wall_panels`: a panel's voxels cover at least this fraction of its outline on the wall (its
    along-wall x height rectangle, in voxel cells); sensor noise makes sparse pieces (docs/scene.md)."""
    panel_margin_m: float = 0.01
    """`propose_wall_panels`: the box reaches this far past the panel's face into the room."""
    seed: int = 0
    """Seed of the RANSAC sample generator (round k uses seed + k): proposals are bitwise the same
    on every call and from any thread."""

    def __post_init__(self) -> None:
        for name in (
            "voxel_m",
            "stacked_min_height_m",
            "plane_distance_m",
            "cluster_eps_m",
            "structure_min_span_m",
            "wall_min_height_m",
            "wall_tall_m",
            "structure_band_m",
            "max_extent_m",
            "panel_chroma_distance",
            "panel_min_side_m",
            "panel_margin_m",
        ):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                unit = "a positive chromaticity distance" if name == "panel_chroma_distance" else \
                    "a positive number of metres"
                raise ValueError(f"ProposalConfig.{name} must be {unit}, got {value}")
        for name in ("max_planes", "plane_ransac_iterations", "dbscan_min_points", "min_cluster_voxels", "min_plane_points"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ProposalConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.min_extent_m > self.max_extent_m:
            raise ValueError(
                f"ProposalConfig.min_extent_m ({self.min_extent_m}) exceeds max_extent_m ({self.max_extent_m})"
            )
        for name in ("nested_inside_fraction", "nested_volume_ratio", "support_fill_fraction",
                     "stacked_max_footprint_fraction", "panel_min_fill"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 < value <= 1):
                raise ValueError(f"ProposalConfig.{name} must be a fraction in (0, 1], got {value}")


@dataclass(frozen=True, eq=False)
class Proposals:
    """Axis-aligned candidate boxes in the frame of the input points.

    Attributes:
        centers: [K, 3] box centres (metres).
        sizes: [K, 3] box extents (metres, > 0).
        num_points: [K] input points inside each proposal's cluster (0 for external boxes).
        mean_colors: [K, 3] mean colour of the cluster's points (uint8 RGB), when colours were given.
        floor_extended: [K] bool, True for the floor-extended twin of a floating cluster's box
            (`ProposalConfig.add_floor_extended`); None for external boxes.
        stacked_part: [K] bool, True for a support or a thing standing on it, split out of a cluster
            whose own box is kept too (`ProposalConfig.split_stacked`); None for external boxes.
        wall_panel: [K] bool, True for a coloured panel found in a wall (a door, a window;
            `ProposalConfig.propose_wall_panels`); None for external boxes.
    """

    centers: np.ndarray
    sizes: np.ndarray
    num_points: np.ndarray
    mean_colors: np.ndarray | None = None
    floor_extended: np.ndarray | None = None
    stacked_part: np.ndarray | None = None
    wall_panel: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.centers.shape[0])

    @staticmethod
    def empty() -> Proposals:
        return Proposals(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int64), None, np.zeros(0, dtype=bool),
                         np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))


@dataclass(frozen=True, eq=False)
class FusedPoints:
    """World points fused from ingested frames: [M, 3] float32 and their [M, 3] uint8 colours."""

    points: np.ndarray
    colors: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


# ---------------------------------------------------------------------------------------- input
def _check_points(points: np.ndarray, colors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.issubdtype(pts.dtype, np.number):
        raise ValueError(f"points must be a numeric [N, 3] array (x, y, z metres, z up), got shape {pts.shape}")
    pts = pts.astype(np.float64, copy=False)
    cols = None
    if colors is not None:
        cols = np.asarray(colors)
        if cols.shape != pts.shape:
            raise ValueError(f"colors must be [N, 3] like points {pts.shape}, got shape {cols.shape}")
        if cols.dtype != np.uint8:
            raise ValueError(f"colors must be uint8 RGB (0..255), got {cols.dtype}; scale float colours by 255")
    finite = np.all(np.isfinite(pts), axis=1)
    if not finite.all():
        pts = pts[finite]
        cols = cols[finite] if cols is not None else None
    return pts, cols


def _voxel_groups(points: np.ndarray, voxel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centroid per occupied voxel [V, 3] and each point's voxel index [N].

    Sort-based grouping of the packed voxel keys (geometry.voxel_keys); unlike Open3D's
    voxel_down_sample this keeps the point -> voxel trace cheaply, so boxes can be measured on the
    full-resolution points.
    """
    flat = voxel_keys(points, voxel_m)
    order = np.argsort(flat, kind="stable")
    sorted_flat = flat[order]
    starts = np.empty(len(flat), dtype=bool)
    starts[0] = True
    np.not_equal(sorted_flat[1:], sorted_flat[:-1], out=starts[1:])
    group_sorted = np.cumsum(starts) - 1
    voxel_of_point = np.empty(len(flat), dtype=np.int64)
    voxel_of_point[order] = group_sorted
    n_vox = int(group_sorted[-1]) + 1
    return _group_means(points, voxel_of_point, n_vox), voxel_of_point


def _group_means(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """[n, C] float64 mean of the [N, C] values of each group 0..n-1 (group: [N]; zeros for an empty group)."""
    counts = np.maximum(np.bincount(group, minlength=n), 1)
    sums = np.stack([np.bincount(group, weights=values[:, a].astype(np.float64), minlength=n)
                     for a in range(values.shape[1])], axis=1)
    return sums / counts[:, None]


# --------------------------------------------------------------------------------- structure
def _largest_component(points: np.ndarray, eps_m: float) -> np.ndarray:
    """Indices of the largest connected piece of `points` (neighbours within eps_m), by Open3D DBSCAN."""
    from video3dllm_core.o3d import o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    labels = np.asarray(pcd.cluster_dbscan(eps_m, 1, False), dtype=np.int64)
    if len(labels) == 0 or labels.max() < 0:
        return np.arange(len(points))
    return np.flatnonzero(labels == np.argmax(np.bincount(labels[labels >= 0])))


@dataclass(frozen=True)
class _Wall:
    """A wall plane found by `_structural_mask`: unit normal n and offset d (n . p + d = 0), and the
    indices of the voxels removed with it."""

    normal: np.ndarray
    offset: float
    voxels: np.ndarray


def _structural_mask(vox: np.ndarray, cfg: ProposalConfig) -> tuple[np.ndarray, float, list[_Wall]]:
    """Boolean [V]: voxels on floor / wall / ceiling planes; the floor height used; the walls."""
    z_low = float(np.percentile(vox[:, 2], 1.0))
    floor_z = z_low
    structural = np.zeros(len(vox), dtype=bool)
    walls: list[_Wall] = []
    candidates = np.arange(len(vox))  # voxels still searched for planes
    cos_tol = np.cos(np.radians(cfg.plane_angle_tol_deg))
    sin_tol = np.sin(np.radians(cfg.plane_angle_tol_deg))
    for round_index in range(cfg.max_planes):
        if len(candidates) < max(cfg.min_plane_points, 3):
            break
        cand_pts = vox[candidates]
        normal, offset, inlier_mask = ransac_plane(cand_pts, cfg.plane_distance_m, cfg.plane_ransac_iterations,
                                                   cfg.seed + round_index)
        inliers = np.flatnonzero(inlier_mask)
        if len(inliers) < cfg.min_plane_points:
            break
        # Judge the plane by its largest connected piece: RANSAC inliers also collect unrelated
        # strips that happen to cross the plane (a wall's edge, a chair's side), whose union can
        # look wall-sized.
        piece = inliers[_largest_component(cand_pts[inliers], cfg.cluster_eps_m)]
        pts = vox[candidates[piece]]
        nz = abs(normal[2])
        is_structure = is_wall = False
        if nz >= cos_tol:  # horizontal plane
            height = float(np.median(pts[:, 2]))
            spans = np.ptp(pts[:, :2], axis=0)
            if height <= z_low + cfg.floor_band_m:
                is_structure, floor_z = True, height
            elif height >= floor_z + cfg.ceiling_min_height_m and bool(np.all(spans >= cfg.structure_min_span_m)):
                is_structure = True
        elif nz <= sin_tol:  # vertical plane
            along = np.cross(normal, [0.0, 0.0, 1.0])
            along /= max(float(np.linalg.norm(along)), 1e-12)
            span = float(np.ptp(pts @ along))
            height_span = float(np.ptp(pts[:, 2]))
            if (span >= cfg.structure_min_span_m and height_span >= cfg.wall_min_height_m) or height_span >= cfg.wall_tall_m:
                is_structure = is_wall = True
        if is_structure:
            # Remove the whole slab around the plane, not only the RANSAC inliers: pose drift,
            # depth noise and the half-pixel back-projection offset make fused walls thicker than
            # the inlier distance, and their left-over sheets would become proposals.
            band = plane_distances(cand_pts, normal, offset) <= max(cfg.structure_band_m, cfg.plane_distance_m)
            band[inliers] = True
            structural[candidates[band]] = True
            if is_wall:
                norm = float(np.linalg.norm(normal))
                walls.append(_Wall(np.asarray(normal, dtype=np.float64) / norm, float(offset) / norm, candidates[band]))
            candidates = candidates[~band]
        else:
            # Set aside only the surface itself (a table top): the plane's other inliers are
            # slices of other surfaces (a wall strip crossing the table's height) and must stay
            # whole for the next rounds.
            candidates = np.delete(candidates, piece)
    return structural, floor_z, walls


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] chromaticity (r, g, b) / (r + g + b) of [N, 3] RGB (0-255): the colour without its brightness."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / np.maximum(rgb.sum(axis=1, keepdims=True), 1.0)


@dataclass(frozen=True)
class _Panel:
    """A coloured piece of a wall: its voxels, its wall and the wall's own (median) chromaticity."""

    voxels: np.ndarray
    wall: _Wall
    wall_chroma: np.ndarray


def _wall_panels(vox: np.ndarray, vox_colors: np.ndarray, walls: list[_Wall], cfg: ProposalConfig) -> list[_Panel]:
    """Coloured pieces of the removed walls (module docstring, step 9)."""
    from video3dllm_core.o3d import o3d

    panels: list[_Panel] = []
    for wall in walls:
        chroma = _chroma(vox_colors[wall.voxels])
        wall_chroma = np.median(chroma, axis=0)
        off = wall.voxels[np.linalg.norm(chroma - wall_chroma, axis=1) >= cfg.panel_chroma_distance]
        if len(off) < cfg.min_cluster_voxels:
            continue
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(vox[off]))
        labels = np.asarray(pcd.cluster_dbscan(cfg.cluster_eps_m, cfg.dbscan_min_points, False), dtype=np.int64)
        along = np.cross(wall.normal, [0.0, 0.0, 1.0])
        along /= max(float(np.linalg.norm(along)), 1e-12)
        for label in range(int(labels.max()) + 1 if len(labels) else 0):
            piece = off[labels == label]
            width, height = float(np.ptp(vox[piece] @ along)), float(np.ptp(vox[piece, 2]))
            if not (len(piece) >= cfg.min_cluster_voxels and min(width, height) >= cfg.panel_min_side_m
                    and max(width, height) <= cfg.max_extent_m):
                continue
            # A panel fills its outline on the wall; colour noise (dark corners, a noisy sensor) gives
            # scattered voxels that DBSCAN chains into large sparse pieces.
            cells = np.floor(np.stack([vox[piece] @ along, vox[piece, 2]], axis=1) / cfg.voxel_m).astype(np.int64)
            outline = float(np.prod(np.ptp(cells, axis=0) + 1))
            if len(np.unique(cells, axis=0)) >= cfg.panel_min_fill * outline:
                panels.append(_Panel(piece, wall, wall_chroma))
    return panels


def _panel_boxes(points: np.ndarray, colors: np.ndarray, point_panel: np.ndarray, panels: list[_Panel],
                 room_center: np.ndarray, floor_z: float,
                 cfg: ProposalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes lo, hi [P, 3], point counts [P] and mean colours [P, 3] uint8 of the panels (point_panel: each
    point's panel, -1 none), measured on the points of their voxels that have the panel's colour themselves
    (a voxel on the panel's edge also holds wall points).

    Each panel is first a box in its wall's own axes: along the wall and in height the extent of those
    points (the bottom snapped to the floor like an object's); across, from the wall plane to the face (the
    98th percentile of the points' distance from the plane: the 2 % flying pixels of depth edges stay out)
    plus `panel_margin_m`, or back to a recessed panel's 2nd percentile. The axis-aligned box around that
    box's corners is the proposal: for a wall along x or y the two are the same; for an oblique wall the
    proposal covers the panel like any object's box covers a turned object."""
    n = len(panels)
    lo, hi, counts, mean_colors = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n, dtype=np.int64), np.zeros((n, 3))
    for k, panel in enumerate(panels):
        mine = point_panel == k
        p, c = points[mine], colors[mine]
        own = np.linalg.norm(_chroma(c) - panel.wall_chroma, axis=1) >= cfg.panel_chroma_distance
        if int(own.sum()) >= 3:
            p, c = p[own], c[own]
        normal, offset = panel.wall.normal, panel.wall.offset
        horizontal = float(np.linalg.norm(normal[:2]))
        across = np.array([normal[0], normal[1], 0.0]) / horizontal  # walls are vertical within plane_angle_tol_deg
        along = np.array([-across[1], across[0], 0.0])
        toward_room = 1.0 if float(normal @ room_center) + offset >= 0 else -1.0
        plane = -(offset + normal[2] * float(np.mean(p[:, 2]))) / horizontal  # the wall's `across` coordinate
        depth = toward_room * (p @ across - plane)  # distance from the wall plane into the room
        front = max(float(np.percentile(depth, 98)), 0.0) + cfg.panel_margin_m
        back = min(float(np.percentile(depth, 2)), 0.0)
        u = p @ along
        z_lo, z_hi = float(p[:, 2].min()), float(p[:, 2].max())
        if cfg.snap_to_floor and z_lo <= floor_z + cfg.floor_snap_m:
            z_lo = min(z_lo, floor_z)
        corners = np.array([a * along + (plane + toward_room * t) * across
                            for a in (float(u.min()), float(u.max())) for t in (back, front)])
        lo[k] = [*corners[:, :2].min(axis=0), z_lo]
        hi[k] = [*corners[:, :2].max(axis=0), z_hi]
        counts[k] = len(p)
        mean_colors[k] = c.astype(np.float64).mean(axis=0)
    return lo, hi, counts, np.round(mean_colors).astype(np.uint8)


# ------------------------------------------------------------------------------- proposals
def propose_boxes(
    points: np.ndarray,
    colors: np.ndarray | None = None,
    config: ProposalConfig | None = None,
) -> Proposals:
    """Class-agnostic axis-aligned object proposals from a z-up point cloud (see module docstring).

    Args:
        points: [N, 3] points (metres) in a z-up frame, normally the scene frame; non-finite rows
            are ignored.
        colors: optional [N, 3] uint8 RGB per point; gives each proposal's mean colour.
        config: parameters; `ProposalConfig()` by default.

    Returns:
        Proposals sorted by decreasing point count (ties by centre), in the input frame.
    """
    from video3dllm_core.o3d import o3d

    cfg = config or ProposalConfig()
    pts, cols = _check_points(points, colors)
    if len(pts) < 3:
        return Proposals.empty()
    vox, voxel_of_point = _voxel_groups(pts, cfg.voxel_m)
    structural, floor_z, walls = _structural_mask(vox, cfg)
    kept = np.flatnonzero(~structural)
    labels_kept = np.zeros(0, dtype=np.int64)
    if len(kept):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(vox[kept]))
        labels_kept = np.asarray(pcd.cluster_dbscan(cfg.cluster_eps_m, cfg.dbscan_min_points, False), dtype=np.int64)
    voxel_label = np.full(len(vox), -1, dtype=np.int64)
    voxel_label[kept] = labels_kept
    n_clusters = int(labels_kept.max()) + 1 if len(labels_kept) else 0
    voxels_per_cluster = np.bincount(labels_kept[labels_kept >= 0], minlength=n_clusters)

    lo, hi, num_points, cluster_colors = _measure_labelled(voxel_label, voxel_of_point, pts, cols, n_clusters)

    sizes = hi - lo
    largest = sizes.max(axis=1)
    keep = (
        (voxels_per_cluster >= cfg.min_cluster_voxels)
        & (largest >= cfg.min_extent_m)
        & (largest <= cfg.max_extent_m)
    )
    if cfg.snap_to_floor:
        snap = lo[:, 2] <= floor_z + cfg.floor_snap_m
        lo[snap, 2] = np.minimum(lo[snap, 2], floor_z)
    if cfg.drop_nested_fragments:
        keep &= ~_nested_fragments(lo, hi, keep, cfg.nested_inside_fraction, cfg.nested_volume_ratio, cfg.voxel_m)
    idx = np.flatnonzero(keep)
    lo_k, hi_k = lo[idx], hi[idx]
    counts = num_points[idx]
    mean_colors = cluster_colors[idx] if cluster_colors is not None else None
    extended = np.zeros(len(idx), dtype=bool)
    # Split-out supports and what stands on them (step 8): measured now, appended after the twins.
    parts = _stacked_parts(vox, voxel_label, idx, cfg) if cfg.split_stacked else []
    if cfg.add_floor_extended:
        # Objects seen only from above (a chair behind a sofa, a stool under a table edge) give a
        # floating top slab; add the hypothesis that the unseen part reaches down to the floor.
        bottom = lo_k[:, 2] - floor_z
        floating = np.flatnonzero((bottom > cfg.floor_snap_m) & (bottom <= cfg.floor_extend_max_height_m))
        lo_x = lo_k[floating].copy()
        lo_x[:, 2] = floor_z
        lo_k = np.concatenate([lo_k, lo_x])
        hi_k = np.concatenate([hi_k, hi_k[floating]])
        counts = np.concatenate([counts, counts[floating]])
        if mean_colors is not None:
            mean_colors = np.concatenate([mean_colors, mean_colors[floating]])
        extended = np.concatenate([extended, np.ones(len(floating), dtype=bool)])
    stacked = np.zeros(len(lo_k), dtype=bool)
    if parts:
        voxel_part = np.full(len(vox), -1, dtype=np.int64)
        for k, (voxels, _, _) in enumerate(parts):
            voxel_part[voxels] = k
        lo_p, hi_p, n_p, part_colors = _measure_labelled(voxel_part, voxel_of_point, pts, cols, len(parts))
        bottoms, tops = np.array([b for _, b, _ in parts]), np.array([t for _, _, t in parts])
        rests = np.isfinite(bottoms)  # stands on a support: its bottom is the support's top
        lo_p[rests, 2] = np.minimum(lo_p[rests, 2], bottoms[rests])
        capped = np.isfinite(tops)  # a support: its top is its surface (the sides of what stands on it end there)
        hi_p[capped, 2] = np.minimum(hi_p[capped, 2], tops[capped])
        if cfg.snap_to_floor:
            snap = ~rests & (lo_p[:, 2] <= floor_z + cfg.floor_snap_m)
            lo_p[snap, 2] = np.minimum(lo_p[snap, 2], floor_z)
        lo_k, hi_k = np.concatenate([lo_k, lo_p]), np.concatenate([hi_k, hi_p])
        counts = np.concatenate([counts, n_p])
        if mean_colors is not None and part_colors is not None:
            mean_colors = np.concatenate([mean_colors, part_colors])
        extended = np.concatenate([extended, np.zeros(len(parts), dtype=bool)])
        stacked = np.concatenate([stacked, np.ones(len(parts), dtype=bool)])
    is_panel = np.zeros(len(lo_k), dtype=bool)
    panels = _wall_panels(vox, _group_means(cols, voxel_of_point, len(vox)), walls, cfg) \
        if cfg.propose_wall_panels and cols is not None else []
    if panels:
        assert cols is not None and mean_colors is not None
        voxel_panel = np.full(len(vox), -1, dtype=np.int64)
        for k, panel in enumerate(panels):
            voxel_panel[panel.voxels] = k
        lo_w, hi_w, n_w, panel_colors = _panel_boxes(pts, cols, voxel_panel[voxel_of_point], panels,
                                                     np.median(vox, axis=0), floor_z, cfg)
        lo_k, hi_k = np.concatenate([lo_k, lo_w]), np.concatenate([hi_k, hi_w])
        counts = np.concatenate([counts, n_w])
        mean_colors = np.concatenate([mean_colors, panel_colors])
        extended = np.concatenate([extended, np.zeros(len(panels), dtype=bool)])
        stacked = np.concatenate([stacked, np.zeros(len(panels), dtype=bool)])
        is_panel = np.concatenate([is_panel, np.ones(len(panels), dtype=bool)])
    if len(lo_k) == 0:
        return Proposals.empty()
    centers = (lo_k + hi_k) / 2.0
    # A degenerate side (a single-voxel-thick cluster seen edge-on) still gets a positive size; a panel
    # keeps its thin side (wall plane to face, plus the margin).
    out_sizes = np.where(is_panel[:, None], hi_k - lo_k, np.maximum(hi_k - lo_k, cfg.voxel_m))
    order = np.lexsort((is_panel, stacked, extended, centers[:, 2], centers[:, 1], centers[:, 0], -counts))
    return Proposals(
        centers=centers[order],
        sizes=out_sizes[order],
        num_points=counts[order],
        mean_colors=mean_colors[order] if mean_colors is not None else None,
        floor_extended=extended[order],
        stacked_part=stacked[order],
        wall_panel=is_panel[order],
    )


def _measure_labelled(voxel_label: np.ndarray, voxel_of_point: np.ndarray, points: np.ndarray,
                      colors: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per label 0..n-1 of the voxels (-1: none), measured on the full-resolution points of its voxels:
    box corners lo, hi [n, 3], point counts [n] (int64) and mean colours [n, 3] uint8 (None without colours)."""
    point_label = voxel_label[voxel_of_point]
    on = point_label >= 0
    lab = point_label[on]
    lo = np.full((n, 3), np.inf)
    hi = np.full((n, 3), -np.inf)
    np.minimum.at(lo, lab, points[on])
    np.maximum.at(hi, lab, points[on])
    counts = np.bincount(lab, minlength=n).astype(np.int64)
    mean_colors = None
    if colors is not None:
        mean_colors = np.round(_group_means(colors[on], lab, n)).astype(np.uint8)
    return lo, hi, counts, mean_colors


def _stacked_parts(vox: np.ndarray, voxel_label: np.ndarray, clusters: np.ndarray,
                   cfg: ProposalConfig) -> list[tuple[np.ndarray, float, float]]:
    """Supports and the things standing on them, split out of the `clusters` that hold both (module
    docstring, step 8), as (voxel indices, bottom height, top height): a thing's bottom rests on the
    support's surface, a support's top is its surface; NaN where the part's own points decide.

    Layers and footprint cells are the voxel grid's own. What stands on the support is judged by
    height above its surface, not by layer: a flat top straddling a layer boundary leaves a ripple
    of surface voxels one layer up."""
    from scipy import ndimage

    from video3dllm_core.o3d import o3d

    keys = np.floor(vox / cfg.voxel_m).astype(np.int64)
    cell = (keys[:, 0] << 32) ^ (keys[:, 1] & 0xFFFFFFFF)  # one int64 per (x, y) column of the grid

    def is_surface(voxels: np.ndarray, footprint: int, origin: np.ndarray, shape: tuple[int, int]) -> bool:
        """A filled layer: its cells cover `support_fill_fraction` of the footprint, and closed (dilated and
        eroded by one cell: the holes of sparse depth filled), at least half of them have all four
        neighbours - a table top does; a slanted side (a cone, a ball) seen as a ring of cells does not."""
        image = np.zeros(shape, dtype=bool)
        ij = keys[voxels, :2] - origin
        image[ij[:, 0], ij[:, 1]] = True
        if int(image.sum()) < cfg.support_fill_fraction * footprint:
            return False
        closed = ndimage.binary_closing(image, structure=np.ones((3, 3), dtype=bool))
        inner = ndimage.binary_erosion(closed, structure=ndimage.generate_binary_structure(2, 1))
        return int(inner.sum()) >= 0.5 * int(closed.sum())

    parts: list[tuple[np.ndarray, float, float]] = []
    for c in clusters.tolist():
        members = np.flatnonzero(voxel_label == c)
        footprint = len(np.unique(cell[members]))
        layer = keys[members, 2]
        origin = keys[members, :2].min(axis=0) - 2  # a margin of two cells: closing sees past the edge
        nx, ny = (int(v) for v in keys[members, :2].max(axis=0) - origin + 3)
        shape = (nx, ny)
        filled = [z for z in np.unique(layer) if is_surface(members[layer == z], footprint, origin, shape)]
        if not filled:
            continue
        top = max(filled)
        top_z = float(np.median(vox[members[layer == top], 2]))
        high = vox[members, 2] > top_z + cfg.voxel_m  # a voxel clear of the surface
        above = members[high]
        if len(above) < cfg.min_cluster_voxels or len(np.unique(cell[above])) > cfg.stacked_max_footprint_fraction * footprint:
            continue
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(vox[above]))
        labels = np.asarray(pcd.cluster_dbscan(cfg.cluster_eps_m, cfg.dbscan_min_points, False), dtype=np.int64)
        pieces = []
        for label in range(int(labels.max()) + 1 if len(labels) else 0):
            piece = above[labels == label]
            lo, hi = vox[piece].min(axis=0), vox[piece].max(axis=0)
            lo[2] = top_z
            if (len(piece) >= cfg.min_cluster_voxels and hi[2] - top_z >= cfg.stacked_min_height_m
                    and cfg.min_extent_m <= float(np.max(hi - lo)) <= cfg.max_extent_m):
                pieces.append((piece, top_z, float("nan")))
        if pieces:
            parts.append((members[~high], float("nan"), top_z + cfg.voxel_m / 2))
            parts.extend(pieces)
    return parts


def _nested_fragments(lo: np.ndarray, hi: np.ndarray, candidate: np.ndarray, inside_fraction: float,
                      volume_ratio: float, min_side_m: float) -> np.ndarray:
    """[K] bool: box k (a candidate) has >= `inside_fraction` of its volume inside another candidate's box
    whose volume is at least 1 / `volume_ratio` times its own - a fragment of that object, not an object.
    Sides are at least `min_side_m` (as in the returned boxes), so a flat cluster has a volume."""
    hi = np.maximum(hi, lo + min_side_m)
    volume = (hi - lo).prod(axis=1)
    overlap = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0.0, None).prod(axis=2)
    pair = candidate[:, None] & candidate[None] & ~np.eye(len(lo), dtype=bool)
    inside = overlap >= inside_fraction * volume[:, None]
    small = volume[:, None] <= volume_ratio * volume[None]
    return np.asarray((pair & inside & small).any(axis=1))


def external_boxes(centers: ArrayLike, sizes: ArrayLike) -> Proposals:
    """Validate caller-given axis-aligned boxes ([K, 3] or one [3] centre and size) and wrap them
    as `Proposals` (num_points 0), e.g. a detector's boxes or ScanNet's instance boxes.

    Raises ValueError naming the first bad box: non-finite centre or size, or a size that is not
    strictly positive.
    """
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(sizes, dtype=np.float64)
    if c.ndim == 1 and c.shape == (3,):
        c = c[None]
    if s.ndim == 1 and s.shape == (3,):
        s = s[None]
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"box centers must be a [K, 3] array (center_xyz, metres), got shape {c.shape}")
    if s.shape != c.shape:
        raise ValueError(f"box sizes must be [K, 3] like the centers {c.shape}, got shape {s.shape}")
    for k in range(len(c)):
        if not np.all(np.isfinite(c[k])):
            raise ValueError(f"box {k}: center_xyz must be finite, got {c[k].tolist()}")
        if not np.all(np.isfinite(s[k])) or np.any(s[k] <= 0):
            raise ValueError(f"box {k}: size_xyz must be finite and > 0 on every axis, got {s[k].tolist()}")
    return Proposals(c.copy(), s.copy(), np.zeros(len(c), dtype=np.int64))


# ------------------------------------------------------------------------------------ fusion
def _strided_frame(frame: Any, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(world [h, w, 3], rgb [h, w, 3], depth [h, w] or None, camera centre) on every stride-th pixel.

    For an `IngestedFrame` only the kept pixels are back-projected (`ingest.crop_world_coords` on
    the strided depth samples, the same per-pixel arithmetic as `world_coords`, ~stride^2 cheaper).
    """
    if isinstance(frame, IngestedFrame):
        rows, cols = frame.geometry.rows[::stride], frame.geometry.cols[::stride]
        depth = frame.crop_depth_m[::stride, ::stride]
        world = crop_world_coords(depth, rows, cols, frame.K_depth, frame.T_world_cam)
        return world, frame.crop_rgb[::stride, ::stride], depth, frame.T_world_cam[:3, 3]
    world_full = np.asarray(frame.world_coords)
    rgb_full = np.asarray(frame.crop_rgb)
    if world_full.ndim != 3 or world_full.shape[2] != 3:
        raise ValueError(f"world_coords must be [H, W, 3], got shape {world_full.shape}")
    if rgb_full.shape != world_full.shape or rgb_full.dtype != np.uint8:
        raise ValueError(f"crop_rgb must be uint8 shaped like world_coords {world_full.shape}, got {rgb_full.shape} {rgb_full.dtype}")
    depth_full = getattr(frame, "crop_depth_m", None)
    depth_s: np.ndarray | None = None
    if depth_full is not None:
        depth_full = np.asarray(depth_full)
        if depth_full.shape != world_full.shape[:2]:
            raise ValueError(f"crop_depth_m has shape {depth_full.shape}, expected {world_full.shape[:2]} like world_coords")
        depth_s = depth_full[::stride, ::stride]
    cam = np.asarray(frame.T_world_cam, dtype=np.float64)[:3, 3]
    return world_full[::stride, ::stride], rgb_full[::stride, ::stride], depth_s, cam


def fuse_points(frames: Iterable[Any], stride: int = 4, max_depth_m: float | None = None) -> FusedPoints:
    """Fuse ingested frames' per-pixel world coordinates into one coloured point cloud.

    Args:
        frames: `IngestedFrame`s, or anything with `world_coords` [S, S, 3] (world frame),
            `crop_rgb` [S, S, 3] uint8, `T_world_cam`, and optionally `crop_depth_m` [S, S].
        stride: keep every `stride`-th crop pixel in both directions (4 on a 384x384 crop: up to
            9,216 points per frame, ~2 cm apart at 2 m, finer than the proposal voxel).
        max_depth_m: drop pixels farther than this (noisy far depth); None keeps every valid pixel.

    Invalid depth is dropped. In the ingest convention (kept for parity with the upstream code)
    invalid depth is stored as 0 in `crop_depth_m` and back-projects to the camera centre, so it
    is recognised by that depth; frames without `crop_depth_m` drop points at the camera centre.
    Non-finite coordinates are dropped too.
    """
    if int(stride) != stride or int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if max_depth_m is not None and not max_depth_m > 0:
        raise ValueError(f"max_depth_m must be positive or None, got {max_depth_m}")
    stride = int(stride)
    pts_list: list[np.ndarray] = []
    col_list: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        try:
            world, rgb, depth, cam = _strided_frame(frame, stride)
        except ValueError as exc:
            raise ValueError(f"frame {i}: {exc}") from None
        valid = np.all(np.isfinite(world), axis=-1)
        if depth is not None:
            valid &= depth > 0
            if max_depth_m is not None:
                valid &= depth <= max_depth_m
        else:
            valid &= ~np.all(np.abs(world.astype(np.float64) - cam) <= 1e-4, axis=-1)
        pts_list.append(world[valid].astype(np.float32, copy=False))
        col_list.append(rgb[valid])
    if not pts_list:
        return FusedPoints(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    return FusedPoints(np.concatenate(pts_list), np.concatenate(col_list))
