"""ScanQA and SQA3D benchmark metrics.

ScanQA (`scanqa_metrics`), as Video-3D LLM's `llava/eval/eval_scanqa.py` computes it:

* "em": the prediction (whitespace-stripped model output, as `model_scanqa.py` stores it) is
  exactly one of the reference answers; no other normalisation.
* "cider", "bleu1".."bleu4", "meteor", "rouge_l": pycocoevalcap on the prediction with trailing
  full stops removed (`rstrip(".")`) against the raw reference answers, no tokenizer.
* "em_leo", "em_refined_leo": LEO's EM and refined EM (`evaluator/scanqa_eval.py`):
  `clean_answer` on prediction and references, then `answer_match` (exact, or space-insensitive
  substring either way round for refined).

Upstream's eval file holds one line per (question, answer) pair, so its EM weighs a question with
k reference answers k times; `weight_by_answers=True` reproduces that number, the default weighs
every question once (ScanQA's definition). The n-gram metrics are per question either way.

SQA3D (`sqa3d_metrics`), as Video-3D LLM's `llava/eval/eval_sqa3d.py`: EM is
`clean_answer(pred) == clean_answer(answer)` (one reference answer per question), overall and per
question type (what / is / how / can / which / others, from `sqa3d_question_type`). LEO's refined
EM is returned as well.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from video3dllm_training.metrics.answers import SQA3D_QUESTION_TYPES, answer_match, clean_answer, sqa3d_question_type
from video3dllm_training.metrics.captions import caption_scores

__all__ = ["scanqa_metrics", "sqa3d_metrics"]


def _check_answers(preds: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
    if len(preds) != len(answers):
        raise ValueError(f"preds has {len(preds)} entries but answers has {len(answers)}; they must be aligned per question")
    if len(preds) == 0:
        raise ValueError("at least one question is needed")
    for i, refs in enumerate(answers):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"answers[{i}] must be a non-empty list of reference answers (got {refs!r})")


def scanqa_metrics(
    preds: Sequence[str],
    answers: Sequence[Sequence[str]],
    meteor: bool = True,
    weight_by_answers: bool = False,
) -> dict[str, float]:
    """ScanQA metrics (see module docstring); fractions in [0, 1], papers report x100."""
    _check_answers(preds, answers)
    preds = [p.strip() for p in preds]
    weights = np.array([len(refs) if weight_by_answers else 1 for refs in answers], dtype=np.float64)
    em = np.array([p in list(refs) for p, refs in zip(preds, answers)], dtype=np.float64)
    leo = [answer_match(clean_answer(p), [clean_answer(r) for r in refs]) for p, refs in zip(preds, answers)]
    scores = caption_scores([p.rstrip(".") for p in preds], [list(r) for r in answers], meteor=meteor)
    scores["em"] = float(np.sum(em * weights) / np.sum(weights))
    scores["em_leo"] = float(np.mean([m[0] for m in leo]))
    scores["em_refined_leo"] = float(np.mean([m[1] for m in leo]))
    return scores


def sqa3d_metrics(
    preds: Sequence[str],
    answers: Sequence[str],
    questions_or_types: Sequence[str],
) -> dict[str, dict[str, float]]:
    """SQA3D EM overall and per question type.

    `questions_or_types[i]` is either the question text (its type is derived with
    `sqa3d_question_type`) or already one of what/is/how/can/which/others. Returns
    `{"em": {"all": .., "what": .., ...}, "em_refined": {...}, "count": {...}}` with only the
    types present; fractions in [0, 1].
    """
    if not (len(preds) == len(answers) == len(questions_or_types)):
        raise ValueError(
            f"preds ({len(preds)}), answers ({len(answers)}) and questions_or_types ({len(questions_or_types)}) "
            "must have one entry per question"
        )
    if len(preds) == 0:
        raise ValueError("at least one question is needed")
    for i, a in enumerate(answers):
        if not isinstance(a, str):
            raise ValueError(f"answers[{i}] must be the single reference answer string, got {type(a).__name__}")
    em: dict[str, list[int]] = defaultdict(list)
    refined: dict[str, list[int]] = defaultdict(list)
    for pred, answer, q in zip(preds, answers, questions_or_types):
        qtype = q if q in SQA3D_QUESTION_TYPES else sqa3d_question_type(q)
        p, a = clean_answer(pred), clean_answer(answer)
        exact = int(p == a)
        ref = answer_match(p, [a])[1]
        for key in ("all", qtype):
            em[key].append(exact)
            refined[key].append(ref)
    order = ["all"] + [t for t in SQA3D_QUESTION_TYPES if t in em]
    return {
        "em": {k: float(np.mean(em[k])) for k in order},
        "em_refined": {k: float(np.mean(refined[k])) for k in order},
        "count": {k: float(len(em[k])) for k in order},
    }
