"""Approximate-time pairing of colour, depth and camera_info messages (no ROS import).

`ApproximateTimeSync` follows the policy of ROS 2 message_filters' Python
`ApproximateTimeSynchronizer` (src/message_filters/__init__.py):

  * one queue per stream, keyed by stamp, holding at most `queue_size` messages; when a queue
    overflows its oldest message is dropped (a message with the stamp of a queued one replaces it);
  * matching is attempted when a message arrives: for every other stream the queued messages
    within `slop` of the new stamp are candidates, ordered by closeness to it; the first
    combination (lexicographically in that order) whose stamps all lie within `slop` of each
    other is emitted and its messages removed from the queues, so each message is used at most
    once and at most one set is emitted per arrival;
  * unmatched messages stay queued until evicted.

One deliberate difference: the spread test is `max - min <= slop` (message_filters uses `<`),
so `slop = 0` gives exact-time synchronisation instead of never matching.

`RgbdSynchronizer` pairs colour with depth through that policy and treats camera_info as
*state*, not as a third synchronised stream, because drivers publish it latched, at a low
rate, or once: every pair takes the most recent camera_info received (whatever its stamp).
Pairs completed before the first camera_info wait for it (at most `queue_size` of them, the
oldest is dropped beyond that); pairs still waiting at the end are dropped as
"no_camera_info". With per-frame camera_info (RealSense) a pair may get the previous frame's
info, which carries the same intrinsics; a resolution change mid-stream is caught downstream by
checking camera_info's width/height against the depth image.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

__all__ = ["ApproximateTimeSync", "RgbdSet", "RgbdSynchronizer"]

T = TypeVar("T")
NS_PER_S = 1_000_000_000


class ApproximateTimeSync(Generic[T]):
    """N-stream approximate-time synchroniser (message_filters' Python policy, see module doc).

    Args:
        num_streams: number of input streams (>= 2).
        slop_s: largest allowed spread of the stamps within one set, in seconds.
        queue_size: messages kept per stream while waiting for partners.
        on_drop: called as on_drop(stream_index, stamp_ns, item) for every message that leaves a
            queue without being matched (overflow, replaced, or `flush`).
    """

    def __init__(
        self,
        num_streams: int,
        slop_s: float,
        queue_size: int = 10,
        on_drop: Callable[[int, int, T], None] | None = None,
    ) -> None:
        if num_streams < 2:
            raise ValueError(f"num_streams must be >= 2 to synchronise anything, got {num_streams}")
        if not slop_s >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slop_ns = int(round(slop_s * NS_PER_S))
        self.queue_size = int(queue_size)
        self.queues: list[dict[int, T]] = [{} for _ in range(num_streams)]
        self.dropped = [0] * num_streams
        self._on_drop = on_drop

    def _drop(self, index: int, stamp: int, item: T) -> None:
        self.dropped[index] += 1
        if self._on_drop is not None:
            self._on_drop(index, stamp, item)

    def add(self, index: int, stamp_ns: int, item: T) -> list[tuple[list[int], list[T]]]:
        """Queue `item` on stream `index`; returns the emitted sets as (stamps, items), 0 or 1 of them."""
        queue = self.queues[index]
        stamp_ns = int(stamp_ns)
        if stamp_ns in queue:
            self._drop(index, stamp_ns, queue[stamp_ns])
        queue[stamp_ns] = item
        while len(queue) > self.queue_size:
            oldest = min(queue)
            self._drop(index, oldest, queue.pop(oldest))
        if stamp_ns not in queue:
            return []
        candidates: list[list[int]] = []
        for j, other in enumerate(self.queues):
            if j == index:
                continue
            near = sorted((s for s in other if abs(s - stamp_ns) <= self.slop_ns), key=lambda s: abs(s - stamp_ns))
            if not near:
                return []
            candidates.append(near)
        for combo in itertools.product(*candidates):
            stamps = list(combo)
            stamps.insert(index, stamp_ns)
            if max(stamps) - min(stamps) <= self.slop_ns:
                items = [q.pop(s) for q, s in zip(self.queues, stamps)]
                return [(stamps, items)]
        return []

    def flush(self) -> int:
        """Drop every queued message (end of stream); returns how many were dropped."""
        n = 0
        for j, queue in enumerate(self.queues):
            for stamp in sorted(queue):
                self._drop(j, stamp, queue[stamp])
                n += 1
            queue.clear()
        return n


@dataclass
class RgbdSet:
    """One synchronised colour + depth pair and the camera_info it uses."""

    stamp_ns: int  # the colour stamp: the frame's time
    color: Any
    depth: Any
    info: Any
    depth_stamp_ns: int


class RgbdSynchronizer:
    """Colour + depth by approximate time, camera_info as latest state (see the module doc).

    `stats` counts dropped colour frames by reason: "unsynced" (no depth within slop before
    the queue dropped it or the stream ended) and "no_camera_info"; `unpaired_depth` counts depth
    images never used.
    """

    def __init__(self, slop_s: float = 0.02, queue_size: int = 10) -> None:
        self.stats: dict[str, int] = {"unsynced": 0, "no_camera_info": 0}
        self.unpaired_depth = 0
        self._sync: ApproximateTimeSync[Any] = ApproximateTimeSync(2, slop_s, queue_size, on_drop=self._on_drop)
        self._info: Any = None
        self._info_stamp_ns: int | None = None
        self._waiting: deque[tuple[int, int, Any, Any]] = deque()
        self._queue_size = queue_size

    def _on_drop(self, index: int, stamp: int, item: Any) -> None:
        if index == 0:
            self.stats["unsynced"] += 1
        else:
            self.unpaired_depth += 1

    @property
    def latest_info(self) -> Any:
        return self._info

    def add_color(self, stamp_ns: int, msg: Any) -> list[RgbdSet]:
        return self._pairs(self._sync.add(0, stamp_ns, msg))

    def add_depth(self, stamp_ns: int, msg: Any) -> list[RgbdSet]:
        return self._pairs(self._sync.add(1, stamp_ns, msg))

    def add_info(self, stamp_ns: int, msg: Any) -> list[RgbdSet]:
        """Record camera_info; releases the pairs that were waiting for the first one."""
        self._info, self._info_stamp_ns = msg, int(stamp_ns)
        out = [RgbdSet(s, c, d, msg, ds) for s, ds, c, d in self._waiting]
        self._waiting.clear()
        return out

    def _pairs(self, matched: list[tuple[list[int], list[Any]]]) -> list[RgbdSet]:
        out = []
        for (color_stamp, depth_stamp), (color, depth) in matched:
            if self._info is None:
                self._waiting.append((color_stamp, depth_stamp, color, depth))
                while len(self._waiting) > self._queue_size:
                    self._waiting.popleft()
                    self.stats["no_camera_info"] += 1
            else:
                out.append(RgbdSet(color_stamp, color, depth, self._info, depth_stamp))
        return out

    def oldest_queued_color_stamp(self) -> int | None:
        """Stamp of the oldest colour image not yet emitted in a set (queued or waiting for camera_info)."""
        stamps = list(self._sync.queues[0]) + [w[0] for w in self._waiting]
        return min(stamps) if stamps else None

    def flush(self) -> None:
        """End of stream: everything still queued or waiting is dropped and counted."""
        self._sync.flush()
        self.stats["no_camera_info"] += len(self._waiting)
        self._waiting.clear()
