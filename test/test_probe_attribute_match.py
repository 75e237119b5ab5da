"""benchmarks/probe_attribute_match.py: description kinds, the eval rules on cached scores, and a fitted match
that learns to pick the object whose appearance matches the description's colour word."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _bench_support import load_benchmark_script

COLOURS = 5


@pytest.fixture(scope="module")
def probe():
    return load_benchmark_script("probe_attribute_match")


def test_description_kinds(probe) -> None:
    assert probe.description_kind("scanrefer", "relation", "The chair closest to the door.") == "ref-relation"
    assert probe.description_kind("multi3drefer", "attribute", "All the pink objects.") == "multi-colour"
    assert probe.description_kind("multi3drefer", "attribute", "All the pink chairs.") == "multi-colour + label"
    assert probe.description_kind("multi3drefer", "attribute", "All the round objects.") == "multi-shape"


def _rows(probe, count: int, seed: int) -> list:
    """Rooms of 4 objects with distinct colours: the text mean is the one-hot of the described colour, the
    tower mean the one-hot of each object's colour plus noise; the cosines are noise that favours a wrong
    object. ScanRefer rows name one object; Multi3DRefer rows a colour nobody has half of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        colours = rng.permutation(COLOURS)[:4]
        tower = np.eye(COLOURS, dtype=np.float32)[colours] + rng.normal(scale=0.1, size=(4, COLOURS)).astype(np.float32)
        cosine = rng.normal(scale=0.05, size=5).astype(np.float32)
        if k % 2:
            target = int(rng.integers(4))
            cosine[(target + 1) % 4] += 0.3
            text = np.eye(COLOURS, dtype=np.float32)[colours[target]]
            rows.append(probe.Row("scanrefer", "ref-attribute", cosine, text, tower, (target,)))
        else:
            absent = next(c for c in range(COLOURS) if c not in colours)
            named = absent if k % 4 == 0 else int(colours[0])
            cosine[4] = 0.3  # "no object" leads before the match learns anything
            text = np.eye(COLOURS, dtype=np.float32)[named]
            rows.append(probe.Row("multi3drefer", "multi-colour", cosine, text, tower, () if named == absent else (0,)))
    return rows


def test_evaluate_applies_the_eval_rules(probe) -> None:
    rows = _rows(probe, 40, seed=1)
    res = probe.evaluate(rows, None)
    assert res["scanrefer"] == (0.0, 20)  # the cosines always favour the wrong object
    # "no object" always wins: right exactly for the descriptions of an absent colour
    assert res["multi-colour: answered nothing"] == (100.0, 20)
    assert res["multi3drefer"][0] == pytest.approx(100 * sum(not r.targets for r in rows if r.task == "multi3drefer") / 20)
    assert probe.set_f1([1, 2], (2, 3)) == pytest.approx(0.5) and probe.set_f1([], ()) == 1.0 and probe.set_f1([], (1,)) == 0.0


def test_a_fitted_unbounded_match_reads_the_colour(probe) -> None:
    train, val = _rows(probe, 200, seed=2), _rows(probe, 60, seed=3)
    match = probe.fit(train, "unbounded", lr=3e-2, epochs=4)
    res, before = probe.evaluate(val, match), probe.evaluate(val, None)
    assert before["scanrefer"][0] == 0.0 and res["scanrefer"][0] > 90.0
    assert res["multi3drefer"][0] > before["multi3drefer"][0] + 15  # present colours found, absent ones still nothing
    assert res["multi-colour: answered nothing"][0] < 75.0
    fresh = probe.new_match("unbounded", COLOURS, COLOURS, seed=0)
    assert float(fresh.obj.weight.detach().abs().max()) == 0.0  # starts at zero, as --attribute-match
    torch.testing.assert_close(probe.scores_with(val[0], fresh), torch.from_numpy(val[0].cosine))
    with pytest.raises(ValueError, match="unknown form"):
        probe.new_match("cubic", COLOURS, COLOURS, seed=0)
