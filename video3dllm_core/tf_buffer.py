"""A TF buffer without ROS: the tf2 transform tree, its time caches and its lookup, in numpy.

The live node, the bag reader and the tests all resolve camera poses the same way a ROS user
expects from tf2: every frame has one parent; a lookup walks from both frames up to their
common ancestor and composes the edges on the way; dynamic edges are interpolated at the
requested stamp (linear translation, spherical-linear rotation), static edges hold at all
times; a stamp outside an edge's history is an *extrapolation* error, never a silent guess.

Differences from tf2, on purpose:
  * `tolerance_ns` lets a caller accept a stamp slightly outside an edge's history (the edge is
    then held at its nearest sample, not extrapolated); the default 0 is tf2's behaviour.
  * Errors are `LookupError` subclasses whose message names both frames, the failing edge, the
    available time range and the fix.
  * A new parent for an existing child frame replaces that frame's history (tf2 keeps both).

Frame names are normalised like tf2 does: a leading "/" is dropped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterable, cast

import numpy as np
from scipy.spatial.transform import Rotation

from video3dllm_core.geometry import invert_rigid, transform_from_translation_quaternion

__all__ = [
    "TfBuffer",
    "TransformError",
    "UnknownFrameError",
    "ConnectivityError",
    "ExtrapolationError",
    "stamp_to_ns",
]

NS_PER_S = 1_000_000_000
DEFAULT_CACHE_DURATION_S = 10.0  # tf2's BufferCore default
_MAX_DEPTH = 1000  # tf2's MAX_GRAPH_DEPTH: guards against loops


class TransformError(LookupError):
    """A transform that cannot be looked up; the message names the frames, the reason and the fix."""


class UnknownFrameError(TransformError):
    """A frame that no transform mentions (typo, wrong world frame, TF not recorded)."""


class ConnectivityError(TransformError):
    """Both frames exist but lie in different trees (a missing link such as map -> odom)."""


class ExtrapolationError(TransformError):
    """The stamp lies outside the history of one edge of the chain (beyond the tolerance).

    Attributes:
        direction: "past" or "future".
        parent, child: the edge whose history does not cover the stamp.
        stamp_ns: requested stamp.
        available_ns: (oldest, newest) stamp held for that edge.
    """

    def __init__(
        self, message: str, *, direction: str, parent: str, child: str, stamp_ns: int, available_ns: tuple[int, int]
    ) -> None:
        super().__init__(message)
        self.direction = direction
        self.parent = parent
        self.child = child
        self.stamp_ns = stamp_ns
        self.available_ns = available_ns


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (fields sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def _fmt_s(stamp_ns: int) -> str:
    return f"{stamp_ns / NS_PER_S:.9f} s"


def _normalise_frame(name: str, what: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string frame id, got {type(name).__name__}")
    name = name.lstrip("/")
    if not name:
        raise ValueError(f"{what} is empty: every transform needs a parent frame_id and a child_frame_id")
    return name


@dataclass
class _Edge:
    """History of the transform parent <- child (T_parent_child), sorted by stamp."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    translations: list[np.ndarray] = field(default_factory=list)
    rotations: list[np.ndarray] = field(default_factory=list)  # unit quaternions xyzw


class TfBuffer:
    """Transform tree with bounded per-edge history, resolving any chain of frames.

    Args:
        cache_duration_s: history kept per dynamic edge, measured back from that edge's newest
            sample (tf2 default 10 s). Older samples are discarded; samples older than the
            window on arrival are ignored (tf2's TF_OLD_DATA).
        tolerance_s: default extrapolation tolerance of `lookup`; within it a stamp outside an
            edge's history uses the nearest sample. 0 reproduces tf2.
    """

    def __init__(self, cache_duration_s: float = DEFAULT_CACHE_DURATION_S, tolerance_s: float = 0.0) -> None:
        if not cache_duration_s > 0:
            raise ValueError(f"cache_duration_s must be > 0 seconds, got {cache_duration_s}")
        if tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0 seconds, got {tolerance_s}")
        self.cache_duration_ns = int(round(cache_duration_s * NS_PER_S))
        self.tolerance_ns = int(round(tolerance_s * NS_PER_S))
        self._edges: dict[str, _Edge] = {}  # child frame -> edge to its parent
        self.ignored_old = 0  # samples older than the cache window on arrival
        self.ignored_repeated = 0  # samples whose stamp was already held (tf2's TF_REPEATED_DATA)

    # ------------------------------------------------------------------ filling
    def set_transform(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation: Iterable[float],
        quaternion_xyzw: Iterable[float],
        static: bool = False,
    ) -> None:
        """Add T_parent_child at `stamp_ns` (ignored for static transforms, which hold at all times).

        Raises ValueError for empty or identical frame ids, non-finite values, a quaternion far
        from unit length (tf2 rejects |q| off by more than 0.01; smaller errors are normalised)
        or a parent that would close a loop.
        """
        parent = _normalise_frame(parent, "parent frame_id")
        child = _normalise_frame(child, "child_frame_id")
        if parent == child:
            raise ValueError(f"transform with parent == child == '{child}': a frame cannot be its own parent")
        t = np.asarray(list(translation), dtype=np.float64)
        q = np.asarray(list(quaternion_xyzw), dtype=np.float64)
        if t.shape != (3,) or q.shape != (4,):
            raise ValueError(f"transform {parent} -> {child}: translation needs 3 values and rotation 4 (x, y, z, w)")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
            raise ValueError(f"transform {parent} -> {child} has NaN/inf values; fix the publisher of this transform")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > 0.01:
            raise ValueError(
                f"transform {parent} -> {child} has a non-unit quaternion (|q| = {norm:.4f}); "
                "publish a normalised rotation (x, y, z, w)"
            )
        q = q / norm
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            self._check_no_loop(parent, child)
            edge = _Edge(parent=parent, static=static)
            self._edges[child] = edge
        if static:
            edge.stamps, edge.translations, edge.rotations = [int(stamp_ns)], [t], [q]
            return
        stamp_ns = int(stamp_ns)
        if edge.stamps and stamp_ns < edge.stamps[-1] - self.cache_duration_ns:
            self.ignored_old += 1
            return
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            self.ignored_repeated += 1
            return
        edge.stamps.insert(i, stamp_ns)
        edge.translations.insert(i, t)
        edge.rotations.insert(i, q)
        cutoff = edge.stamps[-1] - self.cache_duration_ns
        if edge.stamps[0] < cutoff:
            k = bisect.bisect_left(edge.stamps, cutoff)
            del edge.stamps[:k], edge.translations[:k], edge.rotations[:k]

    def add_tf_message(self, msg: Any, static: bool = False) -> int:
        """Add every transform of a tf2_msgs/TFMessage (any object with ROS field names).

        Returns the number of transforms added. Use static=True for /tf_static.
        """
        n = 0
        for ts in msg.transforms:
            tr = ts.transform.translation
            rot = ts.transform.rotation
            self.set_transform(
                ts.header.frame_id,
                ts.child_frame_id,
                stamp_to_ns(ts.header.stamp),
                (tr.x, tr.y, tr.z),
                (rot.x, rot.y, rot.z, rot.w),
                static=static,
            )
            n += 1
        return n

    def _check_no_loop(self, parent: str, child: str) -> None:
        frame: str | None = parent
        for _ in range(_MAX_DEPTH):
            if frame is None:
                return
            if frame == child:
                raise ValueError(
                    f"transform {parent} -> {child} would close a loop in the TF tree "
                    f"('{child}' is already an ancestor of '{parent}'); every frame must have exactly one parent"
                )
            edge = self._edges.get(frame)
            frame = edge.parent if edge else None

    # ------------------------------------------------------------------ queries
    def frames(self) -> list[str]:
        """All frame ids mentioned as parent or child, sorted."""
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return sorted(names)

    def has_frame(self, frame: str) -> bool:
        frame = frame.lstrip("/")
        return frame in self._edges or any(e.parent == frame for e in self._edges.values())

    def parent_of(self, frame: str) -> str | None:
        edge = self._edges.get(frame.lstrip("/"))
        return edge.parent if edge else None

    def time_range(self, child: str) -> tuple[int, int] | None:
        """(oldest, newest) stamp of the edge to `child`'s parent; None for static edges or roots."""
        edge = self._edges.get(child.lstrip("/"))
        if edge is None or edge.static:
            return None
        return edge.stamps[0], edge.stamps[-1]

    def describe(self) -> str:
        """One line per edge: parent -> child, static or the time range held (like tf2's allFramesAsString)."""
        lines = []
        for child in sorted(self._edges):
            e = self._edges[child]
            span = "static" if e.static else f"{len(e.stamps)} samples, {_fmt_s(e.stamps[0])} .. {_fmt_s(e.stamps[-1])}"
            lines.append(f"{e.parent} -> {child}: {span}")
        return "\n".join(lines)

    def _ancestors(self, frame: str) -> list[str]:
        chain = [frame]
        for _ in range(_MAX_DEPTH):
            edge = self._edges.get(chain[-1])
            if edge is None:
                return chain
            chain.append(edge.parent)
        raise TransformError(f"TF tree deeper than {_MAX_DEPTH} frames above '{frame}': a loop in the published transforms")

    def _path(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Frames from source up to the common ancestor, and from target up to it (both inclusive)."""
        for frame, role in ((target, "target"), (source, "source")):
            if not self.has_frame(frame):
                known = self.frames()
                shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
                raise UnknownFrameError(
                    f"cannot transform '{source}' -> '{target}': {role} frame '{frame}' does not exist in the TF tree "
                    f"(known frames: {shown or 'none'}); check the frame name or that /tf and /tf_static were recorded"
                )
        up_source = self._ancestors(source)
        up_target = self._ancestors(target)
        common = set(up_target)
        for i, frame in enumerate(up_source):
            if frame in common:
                return up_source[: i + 1], up_target[: up_target.index(frame) + 1]
        raise ConnectivityError(
            f"cannot transform '{source}' -> '{target}': the frames are not connected: '{source}' belongs to the tree "
            f"rooted at '{up_source[-1]}', '{target}' to the tree rooted at '{up_target[-1]}'; a transform linking "
            "the two trees is missing (e.g. map -> odom from localisation)"
        )

    def _edge_at(
        self, child: str, stamp_ns: int, tolerance_ns: int, source: str, target: str
    ) -> tuple[np.ndarray, np.ndarray]:
        edge = self._edges[child]
        if edge.static:
            return edge.translations[0], edge.rotations[0]
        stamps = edge.stamps
        first, last = stamps[0], stamps[-1]
        if stamp_ns < first or stamp_ns > last:
            direction = "past" if stamp_ns < first else "future"
            delta = first - stamp_ns if direction == "past" else stamp_ns - last
            if delta > tolerance_ns:
                where = "before the oldest" if direction == "past" else "after the newest"
                hint = (
                    "the data has been dropped from the cache or was never recorded (start the bag later or "
                    "raise the cache duration)"
                    if direction == "past"
                    else "the transform has not arrived yet (wait for it or look up an earlier stamp)"
                )
                raise ExtrapolationError(
                    f"cannot transform '{source}' -> '{target}' at {_fmt_s(stamp_ns)}: extrapolation into the "
                    f"{direction}: transform '{edge.parent}' -> '{child}' is only known from {_fmt_s(first)} to "
                    f"{_fmt_s(last)} ({len(stamps)} samples); the stamp is {delta / NS_PER_S:.6f} s {where} sample "
                    f"(tolerance {tolerance_ns / NS_PER_S:.6f} s): {hint}",
                    direction=direction,
                    parent=edge.parent,
                    child=child,
                    stamp_ns=stamp_ns,
                    available_ns=(first, last),
                )
            i = 0 if direction == "past" else len(stamps) - 1
            return edge.translations[i], edge.rotations[i]
        i = bisect.bisect_left(stamps, stamp_ns)
        if stamps[i] == stamp_ns:
            return edge.translations[i], edge.rotations[i]
        t0, t1 = stamps[i - 1], stamps[i]
        alpha = (stamp_ns - t0) / (t1 - t0)
        trans = (1.0 - alpha) * edge.translations[i - 1] + alpha * edge.translations[i]
        r0 = Rotation.from_quat(edge.rotations[i - 1])
        r1 = Rotation.from_quat(edge.rotations[i])
        # slerp along the shortest arc: r0 * exp(alpha * log(r0^-1 r1))
        rot = r0 * Rotation.from_rotvec(alpha * (r0.inv() * r1).as_rotvec())
        return trans, rot.as_quat()

    def latest_common_stamp(self, target_frame: str, source_frame: str) -> int:
        """Newest stamp at which every dynamic edge between the frames is known (tf2's lookup at time 0)."""
        target = _normalise_frame(target_frame, "target_frame")
        source = _normalise_frame(source_frame, "source_frame")
        if target == source:
            return 0
        up_s, up_t = self._path(target, source)
        latest = [self._edges[f].stamps[-1] for f in up_s[:-1] + up_t[:-1] if not self._edges[f].static]
        return min(latest) if latest else 0

    def lookup(
        self, target_frame: str, source_frame: str, stamp_ns: int | None = None, tolerance_ns: int | None = None
    ) -> np.ndarray:
        """T_target_source (4x4 float64) at `stamp_ns`: maps points in source_frame into target_frame.

        `stamp_ns=None` uses the latest common stamp of the chain (tf2's Time(0)). `tolerance_ns`
        overrides the buffer's default extrapolation tolerance. Raises UnknownFrameError,
        ConnectivityError or ExtrapolationError (all LookupError) with a message naming the frames.
        """
        target = _normalise_frame(target_frame, "target_frame")
        source = _normalise_frame(source_frame, "source_frame")
        if target == source:
            return np.eye(4)
        tol = self.tolerance_ns if tolerance_ns is None else int(tolerance_ns)
        up_s, up_t = self._path(target, source)
        if stamp_ns is None:
            latest = [self._edges[f].stamps[-1] for f in up_s[:-1] + up_t[:-1] if not self._edges[f].static]
            stamp_ns = min(latest) if latest else 0
        stamp_ns = int(stamp_ns)

        def to_ancestor(chain: list[str]) -> np.ndarray:
            T = np.eye(4)
            for child in chain[:-1]:  # child -> parent, composed from the top: T_anc_child
                t, q = self._edge_at(child, stamp_ns, tol, source, target)
                T = transform_from_translation_quaternion(cast(Any, t), cast(Any, q)) @ T
            return T

        T_common_source = to_ancestor(up_s)
        T_common_target = to_ancestor(up_t)
        return invert_rigid(T_common_target) @ T_common_source

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int | None = None,
                      tolerance_ns: int | None = None) -> bool:
        """True when `lookup` would succeed."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns, tolerance_ns)
        except TransformError:
            return False
        return True
