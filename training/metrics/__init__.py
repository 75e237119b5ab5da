"""Benchmark metrics of the five Video-3D LLM tasks, defined as the upstream evaluations define them.

* ScanRefer Acc@kIoU and Multi3DRefer F1@kIoU: `boxes` (axis-aligned 3D IoU, Hungarian F1).
* Scan2Cap m@kIoU (CIDEr, BLEU-4, METEOR, ROUGE-L) and generic caption scores: `captions`
  (pycocoevalcap scorers).
* ScanQA (EM, CIDEr, BLEU, METEOR, ROUGE-L) and SQA3D (EM per question type): `qa`, with the
  shared answer normalisation in `answers`.

All scores are fractions in [0, 1]; the papers print them x100. docs/evaluation.md gives every
definition and the upstream file it follows.
"""

from video3dllm_training.metrics.answers import SQA3D_QUESTION_TYPES, answer_match, clean_answer, sqa3d_question_type
from video3dllm_training.metrics.boxes import (
    IOU_EPS,
    as_boxes,
    box3d_iou,
    iou_matrix,
    multi3drefer_f1,
    multi3drefer_query_f1,
    scanrefer_accuracy,
)
from video3dllm_training.metrics.captions import caption_scores, ptb_tokenize, scan2cap_metrics, scan2cap_text
from video3dllm_training.metrics.qa import scanqa_metrics, sqa3d_metrics

__all__ = [
    "IOU_EPS",
    "SQA3D_QUESTION_TYPES",
    "answer_match",
    "as_boxes",
    "box3d_iou",
    "caption_scores",
    "clean_answer",
    "iou_matrix",
    "multi3drefer_f1",
    "multi3drefer_query_f1",
    "ptb_tokenize",
    "scan2cap_metrics",
    "scan2cap_text",
    "scanqa_metrics",
    "scanrefer_accuracy",
    "sqa3d_metrics",
    "sqa3d_question_type",
]
