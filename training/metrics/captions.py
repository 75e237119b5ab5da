"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through pycocoevalcap, and Scan2Cap m@kIoU.

The scorers are pycocoevalcap 1.2's own (`Bleu(4)`, `Meteor`, `Rouge`, `Cider`), which are the
files that Scan2Cap, LEO and Video-3D LLM vendor as `capeval` / `caption_eval`:

* BLEU is the corpus-level BLEU of the COCO toolkit ("closest" reference length for the brevity
  penalty), not a mean of sentence BLEUs.
* CIDEr is COCO's CIDEr (not CIDEr-D): document frequencies come from the references of the
  evaluated set itself, so the score depends on the whole set (an n-gram that every reference set
  contains has idf 0), and each sample's score is 10 x the mean over n = 1..4 of the cosine
  similarity, averaged over references.
* ROUGE-L splits on single spaces and uses beta = 1.2; METEOR 1.5 runs in Java (`-l en -norm`).
  SPICE is not offered (it needs Stanford models fetched at run time).

Text is not tokenised here unless asked: pycocoevalcap's BLEU/CIDEr split on whitespace, so the
caller's preprocessing decides what a token is. `ptb_tokenize` wraps the COCO PTB tokenizer
(Java, lower-cases and drops punctuation) for COCO-style evaluation.

Scan2Cap (`scan2cap_metrics`) follows Video-3D LLM (`llava/eval/eval_scan2cap.py` and
`scripts/3d/preprocessing/process_scan2cap.py`), which follows Scan2Cap's m@kIoU:

1. A sample counts as localised when its box (the box the caption is about: Video-3D LLM's
   Mask3D proposal given to the model, Scan2Cap's detected box) has IoU >= k with the ground-truth
   box. Otherwise, or without a box, its caption is replaced by the empty string: Scan2Cap fills
   undetected objects with the placeholder "sos eos", LEO does the same, and Video-3D LLM writes ""
   which becomes "sos  eos" below. The placeholder scores CIDEr exactly 0 because "sos"/"eos"
   occur in every reference (idf 0) and BLEU-4 about 1e-8, but METEOR and ROUGE-L credit the
   matched "sos"/"eos" (ROUGE-L about 0.15 against a 20-word reference). This is the published
   behaviour; the paper formula's hard 0 would be lower by exactly those credits.
2. Both prediction and references become `"sos " + s.replace(".", " . ").replace(",", " , ").lower() + " eos"`.
3. The four scorers run over the whole set; the reported BLEU is BLEU-4 (all four are returned).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Literal

import numpy as np

from video3dllm_training.metrics.boxes import as_boxes, iou_matrix

__all__ = [
    "caption_scores",
    "ptb_tokenize",
    "scan2cap_text",
    "scan2cap_metrics",
]

Tokenize = Literal["none", "ptb"]


def _check_corpus(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(
            f"candidates has {len(candidates)} captions but references has {len(references)} lists; "
            "they must be aligned per sample"
        )
    if len(candidates) == 0:
        raise ValueError("caption scoring needs at least one sample")
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        if not isinstance(cand, str):
            raise ValueError(f"candidates[{i}] must be a string, got {type(cand).__name__}")
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings (got {refs!r})")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] must be a string, got {type(ref).__name__}")


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise with the COCO PTB tokenizer (Java): lower-case, punctuation removed, space-joined."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(sentences) == 0:
        return []
    # The tokenizer works line by line: a newline inside a sentence would shift every later one.
    data = {i: [{"caption": s.replace("\r", " ").replace("\n", " ")}] for i, s in enumerate(sentences)}
    try:
        tokenized = PTBTokenizer().tokenize(data)
    except FileNotFoundError as exc:  # no `java` on PATH
        raise OSError(f"the PTB tokenizer needs Java (a `java` executable on PATH): {exc}") from None
    if len(tokenized) != len(sentences):
        raise RuntimeError(f"PTB tokenizer returned {len(tokenized)} lines for {len(sentences)} sentences")
    return [tokenized[i][0] for i in range(len(sentences))]


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus METEOR from pycocoevalcap's Java scorer; the JVM is stopped before returning."""
    from pycocoevalcap.meteor.meteor import Meteor

    # METEOR's stdin protocol is one line per request: newlines would desynchronise it.
    def flat(s: str) -> str:
        return s.replace("\r", " ").replace("\n", " ")

    gts_flat = {k: [flat(s) for s in v] for k, v in gts.items()}
    res_flat = {k: [flat(s) for s in v] for k, v in res.items()}
    try:
        scorer = Meteor()
    except FileNotFoundError as exc:
        raise OSError(f"METEOR needs Java (a `java` executable on PATH): {exc}") from None
    try:
        score, _ = scorer.compute_score(gts_flat, res_flat)
    finally:
        proc: subprocess.Popen[bytes] = scorer.meteor_p
        with scorer.lock:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            proc.kill()
            proc.wait()
    return float(score)


def caption_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor: bool = True,
    tokenize: Tokenize = "none",
) -> dict[str, float]:
    """Corpus scores of `candidates[i]` against `references[i]` with pycocoevalcap's scorers.

    Returns fractions (papers report x100): "bleu1".."bleu4", "rouge_l", "cider" and, with
    `meteor=True` (starts a JVM, ~1-3 s), "meteor". `tokenize="ptb"` runs the PTB tokenizer on
    candidates and references first (COCO protocol); the default leaves the text as given.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_corpus(candidates, references)
    if tokenize == "ptb":
        flat_refs = [r for refs in references for r in refs]
        tok = ptb_tokenize(list(candidates) + flat_refs)
        candidates, rest = tok[: len(candidates)], tok[len(candidates) :]
        new_refs: list[list[str]] = []
        for refs in references:
            new_refs.append(rest[: len(refs)])
            rest = rest[len(refs) :]
        references = new_refs
    elif tokenize != "none":
        raise ValueError(f"tokenize must be 'none' or 'ptb', got {tokenize!r}")

    res = {i: [c] for i, c in enumerate(candidates)}
    gts = {i: list(r) for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    scores = {f"bleu{n + 1}": float(bleu[n]) for n in range(4)}
    scores["rouge_l"] = float(rouge)
    scores["cider"] = float(cider)
    if meteor:
        scores["meteor"] = _meteor(gts, res)
    return scores


def scan2cap_text(caption: str) -> str:
    """Video-3D LLM's Scan2Cap text form: split '.' and ',' off, lower-case, wrap in sos/eos."""
    return "sos " + caption.replace(".", " . ").replace(",", " , ").lower() + " eos"


def scan2cap_metrics(
    pred_captions: Sequence[str],
    ref_captions: Sequence[Sequence[str]],
    pred_boxes: Sequence[object | None],
    gt_boxes: Sequence[object],
    iou_threshold: float = 0.5,
    meteor: bool = True,
) -> dict[str, float]:
    """Scan2Cap caption metrics m@kIoU (see module docstring), k = `iou_threshold`.

    `pred_boxes[i]` is the box the caption was produced for (None when no proposal matched);
    `gt_boxes[i]` the annotated object's box, both (cx, cy, cz, sx, sy, sz). Returns the caption
    scores of `caption_scores` plus "localised": the fraction of samples with IoU >= k.
    """
    n = len(pred_captions)
    for name, seq in (("ref_captions", ref_captions), ("pred_boxes", pred_boxes), ("gt_boxes", gt_boxes)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but pred_captions has {n}; they must be aligned per sample")
    _check_corpus(pred_captions, ref_captions)
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    localised = np.zeros(n, dtype=bool)
    for i, (box, gt) in enumerate(zip(pred_boxes, gt_boxes)):
        gt_arr = as_boxes(gt, f"gt_boxes[{i}]")
        if len(gt_arr) != 1:
            raise ValueError(f"gt_boxes[{i}] must be one box of 6 numbers")
        if box is None:
            continue
        box_arr = as_boxes(box, f"pred_boxes[{i}]")
        if len(box_arr) == 0:
            continue
        if len(box_arr) != 1:
            raise ValueError(f"pred_boxes[{i}] must be one box of 6 numbers or None")
        localised[i] = bool(iou_matrix(box_arr, gt_arr)[0, 0] >= iou_threshold)
    candidates = [scan2cap_text(c if ok else "") for c, ok in zip(pred_captions, localised)]
    references = [[scan2cap_text(r) for r in refs] for refs in ref_captions]
    scores = caption_scores(candidates, references, meteor=meteor)
    scores["localised"] = float(localised.mean())
    return scores

