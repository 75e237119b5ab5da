"""Answer normalisation and exact-match rules of the ScanQA / SQA3D evaluations.

`clean_answer` is, rule for rule, the normaliser shared by LEO (embodied-generalist,
`data/data_utils.py`) and Video-3D LLM (`llava/eval/eval_sqa3d.py`, `model_scanqa.py`):
lower-case; trim and squeeze spaces; drop every character outside [a-z0-9 , ' whitespace - :];
fix a list of annotator typos (letf/let -> left, rigth/rght -> right, ...); spell numbers 0-20 and
23 as words ("none" -> "zero"); drop a digit glued to a word ("mat2" -> "mat"); drop the articles
a/an/the before a word; "backwards" -> "backward". Two quirks are kept because the published
numbers depend on them: "tv" becomes upper-case "TV" after lower-casing, and the article rule only
removes an article that is followed by a space and a letter.

`answer_match` is LEO's EM / refined-EM rule (`evaluator/scanqa_eval.py`), including its order
dependence: references are visited in order and the first one that matches exactly *or* as a
space-insensitive substring (either way round) decides, so an earlier substring match returns
(EM 0, refined 1) even if a later reference matches exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "clean_answer",
    "answer_match",
    "sqa3d_question_type",
    "SQA3D_QUESTION_TYPES",
]

SQA3D_QUESTION_TYPES = ("what", "is", "how", "can", "which", "others")

_NUMBER_WORDS = [
    ("0", "zero"), ("none", "zero"), ("1", "one"), ("2", "two"), ("3", "three"), ("4", "four"),
    ("5", "five"), ("6", "six"), ("7", "seven"), ("8", "eight"), ("9", "nine"), ("10", "ten"),
    ("11", "eleven"), ("12", "twelve"), ("13", "thirteen"), ("14", "fourteen"), ("15", "fifteen"),
    ("16", "sixteen"), ("17", "seventeen"), ("18", "eighteen"), ("19", "nineteen"), ("20", "twenty"),
    ("23", "twenty-three"),
]  # fmt: skip

_TYPO_FIXES = [
    (r"\bletf\b", "left"), (r"\blet\b", "left"), (r"\btehre\b", "there"), (r"\brigth\b", "right"),
    (r"\brght\b", "right"), (r"\bbehine\b", "behind"), (r"\btv\b", "TV"), (r"\bchai\b", "chair"),
    (r"\bwasing\b", "washing"), (r"\bwaslked\b", "walked"), (r"\boclock\b", "o'clock"),
    (r"\bo'[ ]+clock\b", "o'clock"),
]  # fmt: skip


def clean_answer(text: str) -> str:
    """Normalise an answer exactly as LEO / Video-3D LLM do before exact matching."""
    data = text.lower()
    data = re.sub(r"[ ]+$", "", data)
    data = re.sub(r"^[ ]+", "", data)
    data = re.sub(r" {2,}", " ", data)
    data = re.sub(r"\.[ ]{2,}", ". ", data)
    data = re.sub(r"[^a-zA-Z0-9,'\s\-:]+", "", data)
    data = re.sub(r"ç", "c", data)  # unreachable after the filter above; kept to mirror upstream
    data = re.sub(r"’", "'", data)  # likewise
    for pattern, repl in _TYPO_FIXES:
        data = re.sub(pattern, repl, data)
    for word, repl in _NUMBER_WORDS:
        data = re.sub(rf"\b{word}\b", repl, data)
    data = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>", data)
    data = re.sub(r"\ba\b ([a-zA-Z]+)", r"\g<1>", data)
    data = re.sub(r"\ban\b ([a-zA-Z]+)", r"\g<1>", data)
    data = re.sub(r"\bthe\b ([a-zA-Z]+)", r"\g<1>", data)
    data = re.sub(r"\bbackwards\b", "backward", data)
    return data


def answer_match(pred: str, refs: Sequence[str]) -> tuple[int, int]:
    """LEO's (EM, refined EM) flags for an already-cleaned prediction against cleaned references."""
    pred_nospace = "".join(pred.split())
    for ref in refs:
        ref_nospace = "".join(ref.split())
        if pred == ref:
            return 1, 1
        if pred_nospace in ref_nospace or ref_nospace in pred_nospace:
            return 0, 1
    return 0, 0


def sqa3d_question_type(question: str) -> str:
    """SQA3D question type by the question's first word(s): what / is / how / can / which / others.

    Same prefix test as SQA3D, LEO and Video-3D LLM (`process_sqa3d.py`): case-insensitive
    prefix match after stripping leading spaces, so "Isn't ..." counts as "is" and "Whatever"
    as "what".
    """
    q = question.lstrip().lower()
    for qtype in SQA3D_QUESTION_TYPES[:-1]:
        if q.startswith(qtype):
            return qtype
    return "others"
