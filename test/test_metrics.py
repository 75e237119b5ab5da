"""Benchmark metrics against hand-computed values and independent computations."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

from video3dllm_training.metrics import (
    answer_match,
    box3d_iou,
    caption_scores,
    clean_answer,
    iou_matrix,
    multi3drefer_f1,
    multi3drefer_query_f1,
    ptb_tokenize,
    scan2cap_metrics,
    scan2cap_text,
    scanqa_metrics,
    scanrefer_accuracy,
    sqa3d_metrics,
    sqa3d_question_type,
)


def slab(x0: float, x1: float) -> list[float]:
    """A box spanning [x0, x1] in x and the unit cube's [-0.5, 0.5] in y and z: its IoU with
    another slab is the 1D interval IoU, easy to compute by hand."""
    return [(x0 + x1) / 2, 0.0, 0.0, x1 - x0, 1.0, 1.0]


def interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


# ---------------------------------------------------------------- IoU


def test_box3d_iou_hand_values() -> None:
    unit = [0, 0, 0, 1, 1, 1]
    assert box3d_iou(unit, [0.5, 0, 0, 1, 1, 1]) == pytest.approx(0.5 / 1.5, abs=1e-7)  # half overlap
    assert box3d_iou([0, 0, 0, 2, 2, 2], unit) == pytest.approx(1 / 8, abs=1e-7)  # nested
    assert box3d_iou(unit, [0.5, 0.5, 0.5, 1, 1, 1]) == pytest.approx(0.125 / 1.875, abs=1e-7)  # corner overlap
    assert box3d_iou(unit, [1.0, 0, 0, 1, 1, 1]) == 0.0  # touching faces
    assert box3d_iou(unit, [5, 5, 5, 1, 1, 1]) == 0.0
    assert box3d_iou(unit, unit) == pytest.approx(1.0, abs=1e-7)
    assert box3d_iou([0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]) == 0.0  # upstream's +1e-8: 0, not NaN


def test_iou_matrix_matches_independent_interval_products() -> None:
    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(-1, 1, (5, 3)), rng.uniform(0.2, 2, (5, 3))]
    b = np.c_[rng.uniform(-1, 1, (4, 3)), rng.uniform(0.2, 2, (4, 3))]
    m = iou_matrix(a, b)
    assert m.shape == (5, 4)
    for i, j in itertools.product(range(5), range(4)):
        inter, va, vb = 1.0, 1.0, 1.0
        for d in range(3):
            lo_a, hi_a = a[i, d] - a[i, d + 3] / 2, a[i, d] + a[i, d + 3] / 2
            lo_b, hi_b = b[j, d] - b[j, d + 3] / 2, b[j, d] + b[j, d + 3] / 2
            inter *= max(0.0, min(hi_a, hi_b) - max(lo_a, lo_b))
            va *= hi_a - lo_a
            vb *= hi_b - lo_b
        assert m[i, j] == pytest.approx(inter / (va + vb - inter), abs=1e-7)
    np.testing.assert_allclose(iou_matrix(b, a), m.T)


def test_box_validation_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"pred_boxes\[1\] has a negative size"):
        scanrefer_accuracy([[0, 0, 0, 1, 1, 1], [0, 0, 0, -1, 1, 1]], [[0, 0, 0, 1, 1, 1]] * 2)
    with pytest.raises(ValueError, match="6 numbers"):
        box3d_iou([0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        box3d_iou([0, 0, np.nan, 1, 1, 1], [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="aligned per query"):
        scanrefer_accuracy([[0, 0, 0, 1, 1, 1]], [[0, 0, 0, 1, 1, 1]] * 2)


# ---------------------------------------------------------------- ScanRefer


def test_scanrefer_accuracy_per_type() -> None:
    gt = [slab(0, 1)] * 4
    pred = [
        slab(0, 1),  # IoU 1
        slab(0.5, 1.5),  # IoU 1/3: counts at 0.25 only
        slab(0.0, 0.2),  # IoU 0.2: counts nowhere
        slab(0.25, 1.0),  # IoU 0.75: counts at both
    ]
    res = scanrefer_accuracy(pred, gt, question_types=["unique", "multiple", "multiple", "unique"])
    assert res["all"] == {"acc@0.25": 0.75, "acc@0.5": 0.5, "count": 4.0}
    assert res["unique"] == {"acc@0.25": 1.0, "acc@0.5": 1.0, "count": 2.0}
    assert res["multiple"] == {"acc@0.25": 0.5, "acc@0.5": 0.0, "count": 2.0}


def test_scanrefer_exact_threshold_iou_falls_just_below_like_upstream() -> None:
    # Geometric IoU exactly 0.5; upstream's 1e-8 in the denominator puts it just below 0.5.
    res = scanrefer_accuracy([slab(0, 1)], [slab(0, 2)])
    assert res["all"]["acc@0.5"] == 0.0
    assert res["all"]["acc@0.25"] == 1.0


# ---------------------------------------------------------------- Multi3DRefer


def test_multi3drefer_zero_target_rules() -> None:
    assert multi3drefer_query_f1([], []) == {0.25: 1.0, 0.5: 1.0}
    assert multi3drefer_query_f1([slab(0, 1)], []) == {0.25: 0.0, 0.5: 0.0}
    assert multi3drefer_query_f1([], [slab(0, 1)]) == {0.25: 0.0, 0.5: 0.0}


def test_multi3drefer_counts() -> None:
    gts = [slab(0, 1), slab(5, 6)]
    # two exact matches plus one spurious box: TP 2, F1 = 2*2 / (3 + 2)
    assert multi3drefer_query_f1([slab(0, 1), slab(5, 6), slab(10, 11)], gts) == {0.25: 0.8, 0.5: 0.8}
    # one box at IoU 1/3 (TP only at 0.25) and one exact: F1@0.25 = 2*2/4, F1@0.5 = 2*1/4
    assert multi3drefer_query_f1([slab(0.5, 1.5), slab(5, 6)], gts) == {0.25: 1.0, 0.5: 0.5}


def test_multi3drefer_uses_one_to_one_optimal_matching() -> None:
    # Unit-length intervals: IoU = (1 - d) / (1 + d) for a shift d. Greedy (best pair first) takes
    # p0-g0 (0.82) and leaves p1-g1 (0.33); the optimal assignment p0-g1 + p1-g0 (0.67 + 0.67) has
    # the larger IoU sum and both pairs above 0.5.
    g0, g1 = (0.0, 1.0), (0.3, 1.3)
    p0, p1 = (0.1, 1.1), (-0.2, 0.8)
    assert interval_iou(p0, g0) > interval_iou(p0, g1) > 0.5 and interval_iou(p1, g0) > 0.5 > interval_iou(p1, g1)
    assert interval_iou(p0, g1) + interval_iou(p1, g0) > interval_iou(p0, g0) + interval_iou(p1, g1)
    f1 = multi3drefer_query_f1([slab(*p0), slab(*p1)], [slab(*g0), slab(*g1)])
    assert f1[0.5] == 1.0


def test_multi3drefer_matches_brute_force_assignment() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        n_pred, n_gt = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        preds = [(x, x + w) for x, w in zip(rng.uniform(0, 2, n_pred), rng.uniform(0.5, 1.5, n_pred))]
        gts = [(x, x + w) for x, w in zip(rng.uniform(0, 2, n_gt), rng.uniform(0.5, 1.5, n_gt))]
        # independent: try every one-to-one assignment, keep the one with the largest IoU sum
        best: list[float] = []
        for perm in itertools.permutations(range(max(n_pred, n_gt)), n_pred):
            ious = [interval_iou(preds[i], gts[j]) if j < n_gt else 0.0 for i, j in enumerate(perm)]
            if not best or sum(ious) > sum(best):
                best = ious
        got = multi3drefer_query_f1([slab(*p) for p in preds], [slab(*g) for g in gts])
        for k in (0.25, 0.5):
            assert got[k] == pytest.approx(2 * sum(i >= k for i in best) / (n_pred + n_gt))


def test_multi3drefer_f1_means_per_type() -> None:
    preds = [[], [slab(0, 1)], [slab(0.5, 1.5), slab(5, 6)]]
    gts = [[], [], [slab(0, 1), slab(5, 6)]]
    res = multi3drefer_f1(preds, gts, question_types=["zt_w_d", "zt_wo_d", "mt"])
    assert res["all"]["f1@0.25"] == pytest.approx((1 + 0 + 1.0) / 3)
    assert res["all"]["f1@0.5"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert res["zt_w_d"]["f1@0.5"] == 1.0 and res["zt_wo_d"]["f1@0.5"] == 0.0 and res["mt"]["f1@0.5"] == 0.5
    assert res["mt"]["count"] == 1.0
    with pytest.raises(ValueError, match=r"query 1: pred_boxes must be boxes of 6 numbers"):
        multi3drefer_f1([[], [[0, 0, 1]]], [[], []])


# ---------------------------------------------------------------- answer normalisation and EM


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("The Brown Chair.", "brown chair"),
        ("  lots   of  space ", "lots of space"),
        ("2 chairs", "two chairs"),
        ("None", "zero"),
        ("tv stand", "TV stand"),  # upstream quirk: upper-case after lower-casing
        ("on the rigth", "on right"),
        ("mat2", "mat"),
        ("Backwards!", "backward"),
        ("3 oclock", "three o'clock"),
        ("a", "a"),  # an article is only dropped before a word
        ("an apple", "apple"),
        ("café", "caf"),  # non-ASCII letters are dropped by the character filter
    ],
)
def test_clean_answer(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


def test_answer_match_keeps_leo_order_dependence() -> None:
    assert answer_match("chair", ["chair"]) == (1, 1)
    assert answer_match("red", ["blue"]) == (0, 0)
    assert answer_match("tv stand", ["tvstand"]) == (0, 1)  # space-insensitive containment
    assert answer_match("brown chair", ["chair"]) == (0, 1)  # reference inside prediction
    # the first reference decides: a substring hit returns before the later exact match
    assert answer_match("chair", ["brown chair", "chair"]) == (0, 1)


@pytest.mark.parametrize(
    ("question", "qtype"),
    [
        ("What is on the table?", "what"),
        ("  is there a door", "is"),
        ("Isn't the lamp on?", "is"),
        ("How many chairs?", "how"),
        ("Can I sit?", "can"),
        ("Which way should I go?", "which"),
        ("Where is the bed?", "others"),
        ("Whatever is left?", "what"),  # prefix rule, as upstream
    ],
)
def test_sqa3d_question_type(question: str, qtype: str) -> None:
    assert sqa3d_question_type(question) == qtype


def test_sqa3d_metrics_per_type() -> None:
    preds = ["Two", "left", "yes", "the table", "No"]
    answers = ["2", "right", "yes", "table", "no"]
    questions = ["How many chairs?", "Which way?", "Is it on?", "What is there?", "Is it off?"]
    res = sqa3d_metrics(preds, answers, questions)
    assert res["em"] == {"all": 0.8, "what": 1.0, "is": 1.0, "how": 1.0, "which": 0.0}
    assert res["count"]["is"] == 2.0
    assert list(res["em"]) == ["all", "what", "is", "how", "which"]  # SQA3D's order, only present types
    # types given directly give the same result
    assert sqa3d_metrics(preds, answers, ["how", "which", "is", "what", "is"]) == res
    with pytest.raises(ValueError, match="single reference answer"):
        sqa3d_metrics(["a"], [["a"]], ["what"])  # type: ignore[list-item]


def test_scanqa_em_variants() -> None:
    preds = ["Brown chair", "tv", "chair", "table"]
    answers = [["brown chair"], ["TV"], ["brown chair", "chair"], ["desk"]]
    res = scanqa_metrics(preds, answers, meteor=False)
    assert res["em"] == 0.25  # Video-3D LLM: raw string membership, only "chair" matches
    assert res["em_leo"] == 0.5  # after clean_answer: "brown chair" and "TV" match, "chair" hits a substring first
    assert res["em_refined_leo"] == 0.75
    weighted = scanqa_metrics(preds, answers, meteor=False, weight_by_answers=True)
    assert weighted["em"] == pytest.approx(2 / 5)  # the 2-answer question counts twice: (0+0+2+0)/5
    assert {"cider", "bleu1", "bleu4", "rouge_l"} <= set(res) and "meteor" not in res


def test_scanqa_ngram_metrics_strip_trailing_full_stop() -> None:
    res = scanqa_metrics(["brown chair.", "white table..."], [["brown chair"], ["white table"]], meteor=False)
    assert res["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert res["rouge_l"] == pytest.approx(1.0)
    assert res["em"] == 0.0  # EM compares the unstripped prediction, as upstream


# ---------------------------------------------------------------- caption scores


def test_bleu1_and_rouge_l_hand_values() -> None:
    # hypothesis "a b c d" vs reference "a b e d f": 3 of 4 unigrams match; hypothesis shorter than
    # the reference (4 < 5) -> brevity penalty exp(1 - 5/4)
    res = caption_scores(["a b c d"], [["a b e d f"]], meteor=False)
    assert res["bleu1"] == pytest.approx(0.75 * math.exp(1 - 5 / 4), rel=1e-6)
    p, r = 3 / 4, 3 / 5  # LCS "a b d"
    assert res["rouge_l"] == pytest.approx((1 + 1.2**2) * p * r / (r + 1.2**2 * p))


def test_cider_of_identical_captions_is_ten() -> None:
    cands = ["red wooden chair near window", "large white table in kitchen"]
    res = caption_scores(cands, [[c] for c in cands], meteor=False)
    assert res["cider"] == pytest.approx(10.0)
    disjoint = caption_scores(["blue sofa by door", "small lamp on desk"], [[c] for c in cands], meteor=False)
    assert disjoint["cider"] == 0.0


def test_caption_input_validation() -> None:
    with pytest.raises(ValueError, match="aligned per sample"):
        caption_scores(["a"], [["a"], ["b"]], meteor=False)
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        caption_scores(["a"], [[]], meteor=False)
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        caption_scores(["a"], ["a"], meteor=False)
    with pytest.raises(ValueError, match="tokenize"):
        caption_scores(["a"], [["a"]], meteor=False, tokenize="spacy")  # type: ignore[arg-type]


def test_scan2cap_text_form() -> None:
    assert scan2cap_text("The chair, near the desk.") == "sos the chair ,  near the desk .  eos"
    assert scan2cap_text("") == "sos  eos"


def test_scan2cap_scores_only_localised_captions() -> None:
    refs = [["A red wooden chair near the window."], ["A large white table in the kitchen."]]
    preds = [r[0] for r in refs]  # both captions perfect
    gts = [slab(0, 1), slab(5, 6)]
    both = scan2cap_metrics(preds, refs, [slab(0, 1), slab(5, 6)], gts, iou_threshold=0.5, meteor=False)
    assert both["cider"] == pytest.approx(10.0)
    assert both["localised"] == 1.0
    # second box at IoU 1/3: its caption is replaced by the "sos eos" placeholder, whose CIDEr is 0
    one = scan2cap_metrics(preds, refs, [slab(0, 1), slab(5.5, 6.5)], gts, iou_threshold=0.5, meteor=False)
    assert one["cider"] == pytest.approx(5.0)
    assert one["localised"] == 0.5
    assert one["bleu4"] < both["bleu4"]
    # the same box passes at k = 0.25; no box at all never passes
    assert scan2cap_metrics(preds, refs, [slab(0, 1), slab(5.5, 6.5)], gts, 0.25, meteor=False)["cider"] == pytest.approx(10.0)
    assert scan2cap_metrics(preds, refs, [slab(0, 1), None], gts, 0.25, meteor=False) == one
    with pytest.raises(ValueError, match="pred_boxes has 1 entries"):
        scan2cap_metrics(preds, refs, [None], gts, meteor=False)


def test_ptb_tokenizer_lowercases_and_drops_punctuation() -> None:
    assert ptb_tokenize(["A man's hat, here!", "Second\nline.", ""]) == ["a man 's hat here", "second line", ""]
    res = caption_scores(["The chair!"], [["the chair"]], meteor=False, tokenize="ptb")
    assert res["bleu1"] == pytest.approx(1.0, abs=1e-6)


def _java_children() -> list[int]:
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        kids = [int(p) for p in f.read().split()]
    alive = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if b"meteor" in f.read():
                    alive.append(k)
        except FileNotFoundError:
            pass
    return alive


@pytest.mark.slow
def test_meteor_runs_and_stops_its_jvm() -> None:
    """METEOR (Java): one JVM start, ~10 s on a busy 2-core machine."""
    preds = ["brown chair", "white table\nby the wall"]  # a newline must not desynchronise the JVM
    answers = [["brown chair"], ["white table by the wall"]]
    res = scanqa_metrics(preds, answers, meteor=True)
    assert 0.5 < res["meteor"] <= 1.0
    assert _java_children() == []
