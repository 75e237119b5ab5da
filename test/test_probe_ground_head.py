"""benchmarks/probe_ground_head.py: colour words, and heads trained alone on cached descriptions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from _bench_support import load_benchmark_script

COLOURS = ["red", "blue", "light blue", "green"]
LABELS = ["chair", "box", "lamp"]
WIDTH = 16


@pytest.fixture(scope="module")
def probe():
    return load_benchmark_script("probe_ground_head")


def test_colour_word_is_the_first_colour_named_and_the_longest_at_that_place(probe) -> None:
    assert probe.colour_word("The light blue box.", COLOURS) == "light blue"
    assert probe.colour_word("The red chair next to the blue box.", COLOURS) == "red"
    assert probe.colour_word("The box closest to the window.", COLOURS) is None
    assert probe.colour_word("The reddish box.", COLOURS) is None  # whole words only


def _rows(probe, count: int, seed: int, appearance_scale: float) -> list:
    """Rooms of 4 objects of distinct colours; the query is the one-hot of the target's colour; the
    appearance carries the colour at ``appearance_scale`` on top of a constant, the position part is
    noise 20x larger (as the centre embedding is next to a small model's appearance)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        colour_ids = rng.permutation(len(COLOURS)).tolist()
        colours = [COLOURS[c] for c in colour_ids]
        labels = [LABELS[int(rng.integers(len(LABELS)))] for _ in colours]
        appearance = np.full((4, WIDTH), 3.0, dtype=np.float32)
        for i, c in enumerate(colour_ids):
            appearance[i, c] += appearance_scale
        target = int(rng.integers(4))
        query = np.zeros(WIDTH, dtype=np.float32)
        query[colour_ids[target]] = 1.0
        rows.append(probe.Description(
            scene_id=f"scene{seed}_{k}", question_type="attribute", text=f"The {colours[target]} {labels[target]}.",
            targets=[target],
            ground_state=query, text_state=query, appearance=appearance,
            position=rng.normal(scale=1.0, size=(4, WIDTH)).astype(np.float32), seen=np.ones(4, dtype=bool),
            colours=colours, labels=labels, own_scores=np.zeros(5, dtype=np.float32)))
    return rows


@pytest.mark.parametrize(("kind", "low", "high"), [("oracle colour + label", 90.0, 100.0),
                                                   ("concat, appearance standardised", 90.0, 100.0),
                                                   ("sum", 0.0, 40.0)])  # chance is 25 %
def test_only_a_standardised_appearance_lets_a_head_match_the_colour_word(probe, kind: str, low: float, high: float) -> None:
    train, val = _rows(probe, 300, 0, 0.05), _rows(probe, 100, 1, 0.05)
    scores = probe.head_scores(probe.train_head(kind, train, epochs=15, seed=0), val)
    # the script's accuracy, and an independent count of it
    assert probe.accuracy(scores, val) == pytest.approx(100.0 * np.mean([int(np.argmax(s[:4])) == r.targets[0] for s, r in zip(scores, val)]))
    assert low <= probe.accuracy(scores, val) <= high


def test_the_oracle_input_says_when_colours_and_labels_do_not_fit(probe) -> None:
    rows = _rows(probe, 3, 0, 0.05)
    for r in rows:
        r.position = r.position[:, :8]  # width 8: 4 dims for the one-hots, 4 colours + 3 labels do not fit
        r.appearance, r.ground_state = r.appearance[:, :8], r.ground_state[:8]
    head = probe.ProbeHead("oracle colour + label", rows)
    with pytest.raises(ValueError, match="4 colours \\+ 3 labels do not fit in 4 dims"):
        head.object_input(rows[0])
    with pytest.raises(ValueError, match="expected one of"):
        probe.ProbeHead("oracle", rows)


def test_unknown_head_inputs_are_refused_before_any_model_is_loaded(probe, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--inputs") as raised:
        probe.main(["--benchmark", str(tmp_path), "--model", str(tmp_path / "missing"), "--inputs", "sum;colour"])
    assert "colour" in str(raised.value)


def test_the_standardisation_counts_each_rooms_objects_once_however_many_descriptions(probe) -> None:
    one, other = _rows(probe, 2, 0, 0.05)
    other.appearance = other.appearance + 10.0
    other.seen = np.array([True, True, False, True])
    # three descriptions of the first room, one of the second
    rows = [one, dataclasses.replace(one, text="again"), dataclasses.replace(one, text="and again"), other]
    head = probe.ProbeHead("sum, appearance standardised", rows)
    seen = np.concatenate([one.appearance, other.appearance[other.seen]])
    np.testing.assert_allclose(head.mean.numpy(), seen.mean(0), rtol=1e-6)
    np.testing.assert_allclose(head.std.numpy(), seen.std(0) + 1e-6, rtol=1e-5)
