"""Five-task training/evaluation data in the upstream Video-3D LLM formats.

* `annotations`: the `*_llava_style.json` annotation lists (ScanRefer, Multi3DRefer, Scan2Cap,
  ScanQA, SQA3D) and the upstream data YAML mixtures.
* `boxes`: the per-scene candidate box files (`scannet_{split}_{gt,pred}_box.json`) and grounding
  targets.
* `frames_file`: the maximum-coverage frame-sampling file (`scannet_select_frames.json`), computed
  with the core keyframe code.
* `scenes`: `SceneStore`, frames of a scene (uniform / max-coverage) through the core ingestor.
* `dataset`: `Video3DDataset` (sample -> ids, labels, crops, world coordinates, boxes, targets),
  `collate`, and `TaskBatchSampler` (task mixture with weights).
"""

from video3dllm_training.data.annotations import Annotation, load_annotations, load_data_mixture, task_of
from video3dllm_training.data.boxes import load_box_file, match_targets, write_box_file
from video3dllm_training.data.dataset import (
    SPATIAL_INSTRUCTION,
    Batch,
    DatasetConfig,
    Sample,
    TaskBatchSampler,
    Video3DDataset,
    collate,
)
from video3dllm_training.data.frames_file import (
    FrameSelection,
    load_frames_file,
    mc_frame_stems,
    select_scene_frames,
    write_frames_file,
)
from video3dllm_training.data.scenes import SceneInfo, SceneStore, load_embodiedscan_infos

__all__ = [
    "Annotation",
    "Batch",
    "DatasetConfig",
    "FrameSelection",
    "SPATIAL_INSTRUCTION",
    "Sample",
    "SceneInfo",
    "SceneStore",
    "TaskBatchSampler",
    "Video3DDataset",
    "collate",
    "load_annotations",
    "load_box_file",
    "load_data_mixture",
    "load_embodiedscan_infos",
    "load_frames_file",
    "match_targets",
    "mc_frame_stems",
    "select_scene_frames",
    "task_of",
    "write_box_file",
    "write_frames_file",
]
