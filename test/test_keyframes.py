"""Greedy max coverage and the online CoverageIndex against a plain set-based reference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from video3dllm_core.frame import PosedFrame
from video3dllm_core.geometry import pack_voxel_indices
from video3dllm_core.ingest import FrameIngestor, IngestedFrame, crop_geometry
from video3dllm_core.keyframes import (
    PRESETS,
    CoverageIndex,
    greedy_max_coverage,
    resolve_strategy,
    uniform_indices,
)


def reference_greedy(sets: Sequence[set[int]], max_frames: int, coverage_ratio: float | None = None) -> tuple[list[int], list[int], int]:
    """Textbook greedy: max marginal gain, ties -> lowest index, stop at gain 0 / budget / ratio."""
    total = len(set().union(*sets)) if sets else 0
    covered: set[int] = set()
    order: list[int] = []
    gains: list[int] = []
    while len(order) < max_frames:
        best, best_gain = -1, 0
        for i, s in enumerate(sets):
            if i in order:
                continue
            gain = len(s - covered)
            if gain > best_gain:
                best, best_gain = i, gain
        if best < 0:
            break
        order.append(best)
        gains.append(best_gain)
        covered |= sets[best]
        if coverage_ratio is not None and len(covered) >= coverage_ratio * total:
            break
    return order, gains, len(covered)


def random_instance(rng: np.random.Generator) -> list[set[int]]:
    n_sets = int(rng.integers(0, 40))
    universe = int(rng.integers(1, 60))
    sets = []
    for _ in range(n_sets):
        size = int(rng.integers(0, universe + 1))
        sets.append({int(v) for v in rng.choice(universe, size=size, replace=False)})
    if sets and rng.random() < 0.5:  # exact duplicates force ties
        for _ in range(int(rng.integers(1, 5))):
            sets.insert(int(rng.integers(0, len(sets) + 1)), set(sets[int(rng.integers(0, len(sets)))]))
    return sets


@pytest.mark.parametrize("key_kind", ["voxel", "scattered"])
def test_greedy_equals_set_reference_on_random_instances_with_ties(key_kind: str) -> None:
    """Voxel keys of a small box take the direct-index path, scattered 63-bit keys the sort path."""
    rng = np.random.default_rng(2024 if key_kind == "voxel" else 7)
    n_with_ties = 0
    for trial in range(300):
        sets = random_instance(rng)
        budget = int(rng.integers(0, 12))
        ratio = [None, 0.5, 0.9, 0.95, 1.0][trial % 5]
        if key_kind == "voxel":  # packed keys of voxels around a random (possibly negative) origin
            origin = rng.integers(-1000, 1000, size=3)
            cells = rng.integers(-10, 10, size=(60, 3)) + origin
            lut = pack_voxel_indices(cells)
        else:
            lut = rng.integers(-(2**62), 2**62, size=60)
        assert len(set(lut.tolist())) == 60 or key_kind == "voxel"
        if len(set(lut.tolist())) < 60:
            continue
        # sorted keys (as IngestedFrame holds them) or shuffled ones (deduplicated per frame)
        order_keys = np.sort if rng.random() < 0.5 else rng.permutation
        arrays = [order_keys(lut[np.array(sorted(s), dtype=np.int64)]) for s in sets]
        if arrays and rng.random() < 0.3:  # repeated keys inside a frame are ignored
            arrays[0] = np.concatenate([arrays[0], arrays[0][:3]])
        res = greedy_max_coverage(arrays, max_frames=budget, coverage_ratio=ratio)
        order, gains, covered = reference_greedy(sets, budget, ratio)
        assert res.order.tolist() == order, (trial, sets, budget, ratio)
        assert res.gains.tolist() == gains
        assert res.covered == covered
        assert res.total == (len(set().union(*sets)) if sets else 0)
        gain_lists = [len(s) for s in sets]
        n_with_ties += len(gain_lists) != len(set(gain_lists))
    assert n_with_ties > 50  # the instances really exercise tie-breaking


def test_greedy_accepts_sets_and_duplicated_keys() -> None:
    sets = [{1, 2, 3}, {3, 4}, {4, 5, 6, 7}]
    with_dups = [np.array([3, 1, 2, 3, 1]), np.array([4, 3, 4]), np.array([7, 6, 5, 4])]
    assert greedy_max_coverage(sets, 3).order.tolist() == reference_greedy(sets, 3)[0] == [2, 0]
    assert greedy_max_coverage(with_dups, 3).order.tolist() == [2, 0]
    assert greedy_max_coverage([], 3).total == 0
    with pytest.raises(ValueError, match="coverage_ratio"):
        greedy_max_coverage(sets, 3, coverage_ratio=1.5)
    with pytest.raises(ValueError, match="max_frames"):
        greedy_max_coverage(sets, -1)
    with pytest.raises(ValueError, match=r"voxel_key_sets\[0\]"):
        greedy_max_coverage([np.array([0.5, 1.5])], 3)


def test_uniform_indices_reproduce_upstream_linspace() -> None:
    np.testing.assert_array_equal(uniform_indices(10, 32, unique=False), np.linspace(0, 9, 32, dtype=int))
    np.testing.assert_array_equal(uniform_indices(10, 32), np.arange(10))
    np.testing.assert_array_equal(uniform_indices(100, 4), [0, 33, 66, 99])
    assert uniform_indices(0, 32).size == 0


# ---------------------------------------------------------------- CoverageIndex


def key_frame(keys: Sequence[int] | set[int], stamp: int, voxel_size: float = 0.1) -> IngestedFrame:
    """A minimal IngestedFrame carrying only coverage keys (1x1 crop)."""
    return IngestedFrame(
        stamp_ns=stamp,
        T_world_cam=np.eye(4),
        K_depth=np.eye(3),
        crop_rgb=np.zeros((1, 1, 3), np.uint8),
        crop_depth_m=np.zeros((1, 1), np.float32),
        patch_world_coords=np.zeros((1, 1, 3), np.float32),
        voxel_keys=np.array(sorted(set(keys)), dtype=np.int64),
        voxel_size_m=voxel_size,
        geometry=crop_geometry((1, 1), 1),
    )


def brute_unique_counts(index: CoverageIndex) -> dict[int, int]:
    sets = {fid: set(index.frame(fid).voxel_keys.tolist()) for fid in index.frame_ids}
    out = {}
    for fid, s in sets.items():
        others = set().union(*(t for g, t in sets.items() if g != fid))
        out[fid] = len(s - others)
    return out


def test_index_unique_counts_stay_exact_through_adds_and_evictions() -> None:
    rng = np.random.default_rng(5)
    index = CoverageIndex(capacity=12)
    ever: set[int] = set()
    for step in range(150):
        base = int(rng.integers(0, 400))
        keys = {int(k) for k in rng.integers(base, base + 60, size=int(rng.integers(0, 40)))}
        ever |= keys
        index.add(key_frame(keys, stamp=int(rng.integers(0, 10**9))))
        assert len(index) == min(step + 1, 12)
        assert index.unique_voxel_counts() == brute_unique_counts(index)
        assert index.voxels_total == len(ever)
    assert index.n_evicted == 150 - 12
    np.testing.assert_array_equal(index.voxel_keys(), sorted(ever))


def test_eviction_keeps_the_frame_that_alone_sees_part_of_the_scene() -> None:
    index = CoverageIndex(capacity=3)
    lonely = index.add(key_frame(range(1000, 1010), stamp=0))  # the only view of a corner, and the oldest
    redundant = [index.add(key_frame(range(0, 100), stamp=s)) for s in (1, 2)]
    assert len(index) == 3
    newest = index.add(key_frame(range(0, 100), stamp=3))
    # three identical views; the oldest of them goes, the lonely (even older) frame stays
    assert lonely in index and index.last_evicted == redundant[0]
    assert set(index.frame_ids) == {lonely, redundant[1], newest}
    a = index.add(key_frame(range(0, 50), stamp=4))
    assert lonely in index and a in index and index.last_evicted == redundant[1]


def test_eviction_drops_a_new_frame_that_adds_nothing_unique() -> None:
    index = CoverageIndex(capacity=2)
    left = index.add(key_frame(range(0, 10), stamp=0))
    right = index.add(key_frame(range(10, 20), stamp=1))
    straddling = index.add(key_frame(list(range(0, 5)) + list(range(10, 15)), stamp=2))
    assert straddling not in index and index.last_evicted == straddling
    assert set(index.frame_ids) == {left, right}
    assert index.unique_voxel_counts() == {left: 10, right: 10}
    assert index.voxels_total == 20


def test_select_mc_equals_reference_on_pool_and_reports_coverage() -> None:
    rng = np.random.default_rng(11)
    index = CoverageIndex(capacity=40)
    for _ in range(60):
        base = int(rng.integers(0, 3000))
        index.add(key_frame({int(k) for k in rng.integers(base, base + 400, size=300)}, stamp=int(rng.integers(0, 10**12))))
    pool = list(index.frame_ids)  # sorted by stamp
    sets = [set(index.frame(f).voxel_keys.tolist()) for f in pool]
    for strategy, budget in [("mc", 8), ("mc", 100), ("mc-ratio90", 32), ("mc-ratio95", 32), ("mc-ratio95", 3)]:
        sel = index.select(strategy, max_frames=budget)
        ratio = PRESETS[strategy][1]
        # the ratio refers to every voxel ever seen, so the reference gets the same denominator
        order, gains, covered = _reference_with_total(sets, budget, ratio, index.voxels_total)
        assert list(sel.pick_order) == [pool[i] for i in order], strategy
        assert list(sel.gains) == gains
        assert sel.voxels_selected == covered == len(set(index.voxel_keys(sel.frame_ids).tolist()))
        assert sel.voxels_total == index.voxels_total
        assert sel.coverage == pytest.approx(covered / index.voxels_total)
        assert list(sel.frame_ids) == sorted(sel.frame_ids, key=pool.index)
        assert [f.stamp_ns for f in sel.frames] == sorted(f.stamp_ns for f in sel.frames)
        if ratio is not None and len(sel) < budget and sel.gains[-1] > 0:
            assert sel.coverage >= ratio
        assert len(sel) <= budget and sel.timing_ms >= 0


def _reference_with_total(sets: list[set[int]], budget: int, ratio: float | None, total: int) -> tuple[list[int], list[int], int]:
    covered: set[int] = set()
    order: list[int] = []
    gains: list[int] = []
    while len(order) < budget:
        best, best_gain = -1, 0
        for i, s in enumerate(sets):
            if i not in order and len(s - covered) > best_gain:
                best, best_gain = i, len(s - covered)
        if best < 0:
            break
        order.append(best)
        gains.append(best_gain)
        covered |= sets[best]
        if ratio is not None and len(covered) >= ratio * total:
            break
    return order, gains, len(covered)


def test_select_uniform_and_strategy_errors() -> None:
    index = CoverageIndex(capacity=100)
    ids = [index.add(key_frame({i, i + 1}, stamp=1000 - i)) for i in range(50)]  # added newest-first
    sel = index.select("uniform", max_frames=5)
    by_stamp = list(reversed(ids))
    assert list(sel.frame_ids) == [by_stamp[i] for i in np.linspace(0, 49, 5, dtype=int)]
    assert sel.voxels_total == 51 and sel.voxels_selected == 10
    assert len(index.select("uniform", max_frames=500)) == 50  # no repeats online
    with pytest.raises(ValueError, match="strategy"):
        index.select("random")
    with pytest.raises(ValueError, match="coverage_ratio"):
        index.select("mc-ratio90", coverage_ratio=0.5)
    assert resolve_strategy("mc", 0.8) == ("mc", 0.8)
    assert index.select("mc", max_frames=0).frame_ids == ()
    empty = CoverageIndex(capacity=4).select("mc-ratio95")
    assert empty.frame_ids == () and empty.coverage == 0.0


def test_index_rejects_mixed_voxel_sizes_and_bad_capacity() -> None:
    index = CoverageIndex(capacity=4)
    index.add(key_frame({1}, 0, voxel_size=0.1))
    with pytest.raises(ValueError, match="voxel_size_m"):
        index.add(key_frame({1}, 1, voxel_size=0.05))
    with pytest.raises(ValueError, match="capacity"):
        CoverageIndex(capacity=0)
    with pytest.raises(TypeError, match="IngestedFrame"):
        index.add(np.zeros(3))  # type: ignore[arg-type]


def test_fixture_frames_end_to_end() -> None:
    """Real ingested frames: selecting every frame covers every voxel ever seen."""
    fixture = Path(os.environ.get("VIDEO3DLLM_PARITY_FIXTURE", Path(__file__).parent / "fixtures" / "reference_parity"))
    with np.load(fixture / "inputs.npz") as f:
        rgb, depth, K = f["rgb"], f["depth"], f["depth_intrinsic"][:3, :3]
        T = f["axis_align_matrix"] @ f["poses"]
    ingestor = FrameIngestor()
    index = CoverageIndex(capacity=16)
    for i in range(rgb.shape[0]):
        index.add(ingestor.ingest(PosedFrame(i, rgb[i], depth[i].astype(np.float32) / np.float32(1000), K, T[i])))
    sel = index.select("mc", max_frames=rgb.shape[0])
    assert sel.coverage == 1.0 and sel.voxels_total > 1000
    res = greedy_max_coverage([index.frame(i).voxel_keys for i in index.frame_ids], rgb.shape[0])
    assert list(sel.pick_order) == [index.frame_ids[i] for i in res.order]
    half = index.select("mc", max_frames=1)
    assert 0 < half.coverage < 1
