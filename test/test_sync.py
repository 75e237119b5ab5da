"""Approximate-time synchronisation: jitter, drops, out-of-slop pairs, bounded queues, camera_info."""

from __future__ import annotations

import numpy as np
import pytest

from video3dllm_core.sync import ApproximateTimeSync, RgbdSynchronizer

MS = 1_000_000
PERIOD = 33 * MS  # ~30 Hz


def stream(n: int, jitter_ms: float, seed: int, offset_ms: float = 0.0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(i * PERIOD + offset_ms * MS + rng.uniform(-jitter_ms, jitter_ms) * MS) for i in range(n)]


def deliver(events: list[tuple[int, str, int, int]], seed: int) -> list[tuple[int, str, int, int]]:
    """Arrival order: stamp plus a random transport delay (0..15 ms), as a bag records them."""
    rng = np.random.default_rng(seed)
    return sorted(events, key=lambda e: e[0] + rng.uniform(0, 15) * MS)


def run_rgbd(sync: RgbdSynchronizer, colour: list[int], depth: list[int], info: list[int], seed: int = 0):
    events = [(s, "c", i, s) for i, s in enumerate(colour)]
    events += [(s, "d", i, s) for i, s in enumerate(depth)]
    events += [(s, "i", i, s) for i, s in enumerate(info)]
    out = []
    for stamp, kind, idx, _ in deliver(events, seed):
        msg = (kind, idx)
        if kind == "c":
            out += sync.add_color(stamp, msg)
        elif kind == "d":
            out += sync.add_depth(stamp, msg)
        else:
            out += sync.add_info(stamp, msg)
    sync.flush()
    return out


def test_jittered_streams_pair_every_frame_with_its_own_depth() -> None:
    colour, depth = stream(60, 4, 1), stream(60, 4, 2)
    sync = RgbdSynchronizer(slop_s=0.02)
    sets = run_rgbd(sync, colour, depth, info=[colour[0] - MS])
    assert [s.color[1] for s in sets] == list(range(60))
    assert [s.depth[1] for s in sets] == list(range(60))
    assert all(s.stamp_ns == colour[s.color[1]] and s.depth_stamp_ns == depth[s.depth[1]] for s in sets)
    assert all(abs(s.stamp_ns - s.depth_stamp_ns) <= 20 * MS for s in sets)
    assert sync.stats == {"unsynced": 0, "no_camera_info": 0} and sync.unpaired_depth == 0


def test_dropped_depth_messages_leave_those_colour_frames_unsynced() -> None:
    colour, depth = stream(40, 3, 3), stream(40, 3, 4)
    missing = {5, 6, 17, 39}
    sync = RgbdSynchronizer(slop_s=0.02)
    sets = run_rgbd(sync, colour, [d for i, d in enumerate(depth) if i not in missing], info=[0])
    paired = [s.color[1] for s in sets]
    assert paired == [i for i in range(40) if i not in missing]
    assert all(s.depth == ("d", [i for i in range(40) if i not in missing].index(s.color[1])) for s in sets)
    assert sync.stats["unsynced"] == len(missing)


def test_out_of_slop_pairs_are_never_matched() -> None:
    colour = stream(10, 0, 5)
    depth = [s + 16 * MS for s in colour]  # 16 ms after its colour, 17 ms before the next: both > 10 ms slop
    sync = RgbdSynchronizer(slop_s=0.01)
    assert run_rgbd(sync, colour, depth, info=[0]) == []
    assert sync.stats["unsynced"] == 10 and sync.unpaired_depth == 10
    sync = RgbdSynchronizer(slop_s=0.02)  # a wider slop pairs each colour with the closer depth
    sets = run_rgbd(sync, colour, depth, info=[0])
    assert [(s.color[1], s.depth[1]) for s in sets] == [(k, k) for k in range(10)]


def test_closest_candidate_wins_and_each_message_is_used_once() -> None:
    sync: ApproximateTimeSync[str] = ApproximateTimeSync(2, slop_s=0.005)
    assert sync.add(1, 100 * MS, "d100") == []
    assert sync.add(1, 108 * MS, "d108") == []
    assert sync.add(0, 106 * MS, "c106") == [([106 * MS, 108 * MS], ["c106", "d108"])]
    assert sync.add(0, 107 * MS, "c107") == []  # d108 is used up; d100 is 7 ms away (> 5 ms slop)
    assert sync.queues[1] == {100 * MS: "d100"}
    assert sync.add(0, 99 * MS, "c99") == [([99 * MS, 100 * MS], ["c99", "d100"])]
    assert sync.queues == [{107 * MS: "c107"}, {}]


def test_three_streams_need_a_set_within_slop() -> None:
    sync: ApproximateTimeSync[str] = ApproximateTimeSync(3, slop_s=0.01)
    sync.add(0, 0, "a0")
    sync.add(1, 9 * MS, "b9")
    # c at -5 ms is within 10 ms of b? no: spread 14 ms > slop, no set
    assert sync.add(2, -5 * MS, "c-5") == []
    assert sync.add(2, 4 * MS, "c4") == [([0, 9 * MS, 4 * MS], ["a0", "b9", "c4"])]


def test_exact_time_with_zero_slop() -> None:
    sync: ApproximateTimeSync[int] = ApproximateTimeSync(2, slop_s=0.0)
    assert sync.add(0, 5, 1) == []
    assert sync.add(1, 6, 2) == []
    assert sync.add(1, 5, 3) == [([5, 5], [1, 3])]


def test_queue_is_bounded_and_drops_the_oldest() -> None:
    dropped: list[tuple[int, int, str]] = []
    sync: ApproximateTimeSync[str] = ApproximateTimeSync(2, slop_s=0.01, queue_size=3,
                                                         on_drop=lambda i, s, x: dropped.append((i, s, x)))
    for k in range(5):
        sync.add(0, k * PERIOD, f"c{k}")
    assert sorted(sync.queues[0]) == [2 * PERIOD, 3 * PERIOD, 4 * PERIOD]
    assert dropped == [(0, 0, "c0"), (0, PERIOD, "c1")] and sync.dropped == [2, 0]
    assert sync.flush() == 3 and sync.dropped == [5, 0]
    with pytest.raises(ValueError, match="slop must be >= 0"):
        ApproximateTimeSync(2, slop_s=-1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(2, slop_s=0.1, queue_size=0)


def test_camera_info_latched_once_is_reused_for_every_frame() -> None:
    colour, depth = stream(20, 2, 6), stream(20, 2, 7)
    sync = RgbdSynchronizer(slop_s=0.02)
    sets = run_rgbd(sync, colour, depth, info=[-10**9])  # one message, long before the images
    assert len(sets) == 20 and all(s.info == ("i", 0) for s in sets)


def test_pairs_wait_for_a_late_first_camera_info_and_follow_updates() -> None:
    sync = RgbdSynchronizer(slop_s=0.02, queue_size=4)
    out = []
    for k in range(3):
        out += sync.add_color(k * PERIOD, ("c", k))
        out += sync.add_depth(k * PERIOD + MS, ("d", k))
    assert out == []  # complete pairs, but no intrinsics yet
    released = sync.add_info(3 * PERIOD, "info-A")
    assert [(s.color, s.info) for s in released] == [(("c", k), "info-A") for k in range(3)]
    sync.add_info(4 * PERIOD, "info-B")
    out = sync.add_color(5 * PERIOD, ("c", 5)) + sync.add_depth(5 * PERIOD, ("d", 5))
    assert [s.info for s in out] == ["info-B"]


def test_without_camera_info_frames_are_dropped_and_counted() -> None:
    sync = RgbdSynchronizer(slop_s=0.02, queue_size=4)
    sets = run_rgbd(sync, stream(10, 1, 8), stream(10, 1, 9), info=[])
    assert sets == [] and sync.stats == {"unsynced": 0, "no_camera_info": 10}
