"""Dataset, collator and task-mixture sampler for the five Video-3D LLM tasks.

One sample = one annotation (`annotations.Annotation`) turned into what the model consumes:

* frames: `SceneStore.frames(scene, strategy, frames_upbound)` (uniform or max-coverage, the
  core ingestor): `crop_rgb` [V,384,384,3] uint8, `world_coords` [V,384,384,3] float32 (scene
  frame, metres), `patch_world_coords` [V,14,14,3];
* ids and labels: `prompts.build_training_ids` (training; upstream's `add_spatial_instruction`
  sentence is inserted as upstream's training script does) or `prompts.build_input_ids`
  (evaluation, exactly the eval scripts' ids);
* grounding (ScanRefer, Multi3DRefer): the scene's candidate boxes [N,6] (ground truth for
  training, detector proposals for validation) and the indices of the target boxes among them
  (empty = the "no object" target);
* Scan2Cap: `coord_xyz`, the centre of `box_input`, added at `<coord>`.

`Collator` pads ids (pad id) and labels (IGNORE_INDEX) to the longest sample with an attention
mask, as upstream's `DataCollatorForSupervisedDataset`; frames stay per-sample lists because
samples differ in frame count. `TaskBatchSampler` draws batches from one task group at a time
(upstream's `group_by_task_length`) or from a weighted task mixture.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from video3dllm_core.model.constants import IGNORE_INDEX
from video3dllm_core.model.prompts import DEFAULT_SYSTEM_MESSAGE, GROUNDING_INSTRUCTION, IMAGE_TOKEN, PromptIds, Task, build_input_ids, build_training_ids, parse_task
from video3dllm_training.data.annotations import Annotation
from video3dllm_training.data.boxes import check_box_indices, grounding_targets
from video3dllm_training.data.scenes import SceneStore

__all__ = [
    "SPATIAL_INSTRUCTION",
    "TASK_GROUPS",
    "DatasetConfig",
    "Sample",
    "Batch",
    "Video3DDataset",
    "Collator",
    "collate",
    "TaskBatchSampler",
    "with_spatial_instruction",
    "grounding_description",
    "description_token_ids",
]

#: The sentence upstream's training script inserts after `<image>` (`--add_spatial_instruction True`
#: in train_multi.sh). The eval scripts do not put it into the ids.
SPATIAL_INSTRUCTION = (
    "The video captures 3D spatial information of a scene. "
    "Please focus on the spatial relationships in the video and answer the following questions."
)

#: Upstream's `task_lengths` grouping: batches hold one group only.
TASK_GROUPS: dict[Task, int] = {
    Task.SCANQA: 0,
    Task.SQA3D: 0,
    Task.SCAN2CAP: 1,
    Task.SCANREFER: 2,
    Task.MULTI3DREFER: 2,
}


def grounding_description(human: str) -> str:
    """The referring expression of a ScanRefer/Multi3DRefer human turn, without `<image>`: the line after
    `GROUNDING_INSTRUCTION` ("<image>{instruction}\\n{description}", Multi3DRefer then adds
    `MULTI3DREFER_NOTE`), or the first non-empty line when the turn has no instruction line."""
    lines = [line.strip() for line in human.replace(IMAGE_TOKEN, "").splitlines() if line.strip()]
    if GROUNDING_INSTRUCTION in lines:
        lines = lines[lines.index(GROUNDING_INSTRUCTION) + 1 :]
    if not lines:
        raise ValueError(f"grounding turn {human!r} has no description (expected a line after {GROUNDING_INSTRUCTION!r})")
    return lines[0]


def description_token_ids(tokenizer: Any, human: str) -> tuple[int, ...]:
    """Distinct token ids of the grounding description, in first-occurrence order (targets of the description
    recall loss, `batch_forward(description_loss_weight=...)`)."""
    ids = tokenizer(grounding_description(human), add_special_tokens=False).input_ids
    return tuple(dict.fromkeys(int(i) for i in ids))


def with_spatial_instruction(human: str) -> str:
    """`<image>\\n{SPATIAL_INSTRUCTION}\\n{human without <image>}`, as upstream's `_get_item`."""
    return f"{IMAGE_TOKEN}\n{SPATIAL_INSTRUCTION}\n{human.replace(IMAGE_TOKEN, '')}"


@dataclass(frozen=True)
class DatasetConfig:
    """How samples are built.

    Attributes:
        frame_strategy: uniform | mc | mc-ratio90 | mc-ratio95 (upstream `frame_sampling_strategy`).
        frames_upbound: frame budget (upstream `frames_upbound`, 32).
        training: training ids + labels (True) or the eval scripts' ids (False).
        spatial_instruction: insert SPATIAL_INSTRUCTION (training only; upstream's recipe).
        boxes_are_gt: candidates are the scene's ground-truth boxes (targets = object ids) or
            detector proposals (targets = best-IoU proposals >= target_iou).
        target_iou: IoU a proposal needs to count as a target (detector candidates only).
        system: system message.
        newline_after_image: eval ids with upstream eval's "\n" after the image placeholder (True) or without it,
            as in training (False; ``build_input_ids``).
    """

    frame_strategy: str = "uniform"
    frames_upbound: int = 32
    training: bool = True
    spatial_instruction: bool = True
    boxes_are_gt: bool = True
    target_iou: float = 0.5
    system: str = DEFAULT_SYSTEM_MESSAGE
    newline_after_image: bool = True


@dataclass
class Sample:
    """One model-ready sample (tensors on the CPU)."""

    id: str
    task: Task
    scene_id: str
    input_ids: torch.Tensor  # [T] long, one IMAGE_TOKEN_INDEX
    labels: torch.Tensor | None  # [T] long (IGNORE_INDEX where masked) or None (eval prompts of text tasks)
    crop_rgb: torch.Tensor  # [V, S, S, 3] uint8
    world_coords: torch.Tensor  # [V, S, S, 3] float32
    patch_world_coords: torch.Tensor  # [V, g, g, 3] float32
    boxes: torch.Tensor | None = None  # [N, 6] float32 candidate boxes (grounding)
    ground_targets: tuple[int, ...] | None = None  # target indices among boxes; () = no object
    coord_xyz: torch.Tensor | None = None  # [3] float32 (Scan2Cap)
    description_ids: tuple[int, ...] | None = None  # distinct token ids of a grounding description (training)
    anchor_ids: tuple[int, ...] = ()  # indices among boxes of a relation's reference object (metadata.anchor_ids; training)
    frame_names: tuple[str, ...] = ()
    prompt: PromptIds | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.crop_rgb.shape[0])


@dataclass
class Batch:
    """Padded ids/labels/mask plus the per-sample visual inputs."""

    ids: list[str]
    tasks: list[Task]
    input_ids: torch.Tensor  # [B, T] long, right-padded with pad_token_id
    labels: torch.Tensor  # [B, T] long, IGNORE_INDEX on padding
    attention_mask: torch.Tensor  # [B, T] bool
    lengths: list[int]
    crop_rgb: list[torch.Tensor]
    world_coords: list[torch.Tensor]
    patch_world_coords: list[torch.Tensor]
    boxes: list[torch.Tensor | None]
    ground_targets: list[tuple[int, ...] | None]
    coord_xyz: list[torch.Tensor | None]
    description_ids: list[tuple[int, ...] | None] = field(default_factory=list)
    anchor_ids: list[tuple[int, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class Video3DDataset(Dataset[Sample]):
    """Annotations -> model-ready samples (see the module docstring)."""

    def __init__(self, annotations: Sequence[Annotation], scenes: SceneStore, tokenizer: object,
                 boxes: Mapping[str, np.ndarray] | None = None, config: DatasetConfig | None = None) -> None:
        self.annotations = list(annotations)
        self.scenes = scenes
        self.tokenizer = tokenizer
        self.boxes = dict(boxes or {})
        self.config = config or DatasetConfig()
        if any(a.task.is_grounding for a in self.annotations) and not self.boxes:
            raise ValueError("grounding annotations need candidate boxes (--boxes: scannet_{split}_{gt,pred}_box.json)")

    def __len__(self) -> int:
        return len(self.annotations)

    @property
    def tasks(self) -> list[Task]:
        return [a.task for a in self.annotations]

    def prompt(self, ann: Annotation) -> PromptIds:
        cfg = self.config
        if cfg.training:
            human = with_spatial_instruction(ann.human) if cfg.spatial_instruction else ann.human
            return build_training_ids(self.tokenizer, ann.task, human, None if ann.task.is_grounding else ann.answer,  # type: ignore[arg-type]
                                      system=cfg.system)
        return build_input_ids(self.tokenizer, ann.task, ann.human, system=cfg.system,  # type: ignore[arg-type]
                               newline_after_image=cfg.newline_after_image)

    def candidate_boxes(self, ann: Annotation) -> np.ndarray:
        if ann.scene_id not in self.boxes:
            raise ValueError(f"annotation {ann.id}: scene {ann.scene_id} has no entry in the box file")
        return self.boxes[ann.scene_id]

    def __getitem__(self, index: int) -> Sample:
        ann = self.annotations[index]
        where = f"annotation {ann.id} ({ann.task.value}, {ann.scene_id})"
        cfg = self.config
        frames = self.scenes.frames(ann.scene_id, cfg.frame_strategy, cfg.frames_upbound)
        prompt = self.prompt(ann)
        sample = Sample(
            id=ann.id,
            task=ann.task,
            scene_id=ann.scene_id,
            input_ids=torch.tensor(prompt.input_ids, dtype=torch.long),
            labels=None if prompt.labels is None else torch.tensor(prompt.labels, dtype=torch.long),
            crop_rgb=torch.from_numpy(np.stack([f.crop_rgb for f in frames])),
            world_coords=torch.from_numpy(np.stack([f.world_coords for f in frames])),
            patch_world_coords=torch.from_numpy(np.stack([f.patch_world_coords for f in frames])),
            frame_names=tuple(str(f.name) for f in frames),
            prompt=prompt,
        )
        if ann.task.is_grounding:
            candidates = self.candidate_boxes(ann)
            sample.boxes = torch.as_tensor(candidates, dtype=torch.float32).reshape(-1, 6)
            if cfg.training:
                sample.ground_targets = grounding_targets(ann.object_ids, candidates, ann.boxes, cfg.boxes_are_gt, where,
                                                          cfg.target_iou)
                sample.description_ids = description_token_ids(self.tokenizer, ann.human)
                if ann.anchor_ids and cfg.boxes_are_gt:
                    check_box_indices(ann.anchor_ids, len(candidates), where, "metadata.anchor_ids")
                    sample.anchor_ids = ann.anchor_ids
        if ann.task is Task.SCAN2CAP:
            if ann.box_input is None:
                if cfg.training:
                    raise ValueError(f"{where}: scan2cap training sample without 'box_input'")
            else:
                sample.coord_xyz = torch.tensor(ann.box_input[:3], dtype=torch.float32)
        return sample


@dataclass(frozen=True)
class Collator:
    """Pads a list of samples into a `Batch` (upstream pads with the tokenizer's pad id, 0 if unset)."""

    pad_token_id: int = 0

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        lengths = [int(s.input_ids.shape[0]) for s in samples]
        longest = max(lengths)
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.bool)
        for i, s in enumerate(samples):
            n = lengths[i]
            input_ids[i, :n] = s.input_ids
            if s.labels is not None:
                labels[i, :n] = s.labels
            mask[i, :n] = True
        return Batch(
            ids=[s.id for s in samples],
            tasks=[s.task for s in samples],
            input_ids=input_ids,
            labels=labels,
            attention_mask=mask,
            lengths=lengths,
            crop_rgb=[s.crop_rgb for s in samples],
            world_coords=[s.world_coords for s in samples],
            patch_world_coords=[s.patch_world_coords for s in samples],
            boxes=[s.boxes for s in samples],
            ground_targets=[s.ground_targets for s in samples],
            coord_xyz=[s.coord_xyz for s in samples],
            description_ids=[s.description_ids for s in samples],
            anchor_ids=[s.anchor_ids for s in samples],
        )


collate = Collator()


class TaskBatchSampler(Sampler[list[int]]):
    """Deterministic batches of dataset indices, one epoch at a time.

    * no weights, `group_by_task=True` (upstream `group_by_task_length`): each task group
      (QA, captioning, grounding) is shuffled and cut into batches; the batches of all groups are
      shuffled together. Incomplete batches are dropped.
    * no weights, `group_by_task=False`: one shuffle over everything.
    * `weights` (task -> weight; tasks not named weigh 1.0, 0 excludes a task): each batch picks
      a task with probability proportional to its weight and takes the next samples of that task's
      own shuffled cycle (mixed batches when `group_by_task=False`). An epoch is then
      len(dataset) // batch_size batches.

    Seeds: `seed` and the epoch number (`set_position`). `skip_batches` starts the epoch later (resume).
    """

    def __init__(self, tasks: Sequence[Task | str], batch_size: int, weights: Mapping[Task | str, float] | None = None,
                 seed: int = 0, group_by_task: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tasks = [parse_task(t) for t in tasks]
        if not self.tasks:
            raise ValueError("the dataset is empty: no samples to draw batches from")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.group_by_task = group_by_task
        self.weights: dict[Task, float] | None = None
        if weights:
            parsed = {parse_task(k): float(v) for k, v in weights.items()}
            bad = {k.value: v for k, v in parsed.items() if not v >= 0}
            if bad:
                raise ValueError(f"task weights must be >= 0, got {bad}")
            present = sorted(set(self.tasks), key=lambda t: t.value)
            self.weights = {t: parsed.get(t, 1.0) for t in present}
            if sum(self.weights.values()) <= 0:
                raise ValueError("task weights of the tasks present in the data are all 0")
        self.epoch = 0
        self.skip_batches = 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        """Start at `epoch`, skipping its first `skip_batches` batches. (Not named set_epoch: accelerate
        calls set_epoch(iteration count) on batch samplers it wraps, which would undo the skip.)"""
        self.epoch = int(epoch)
        self.skip_batches = int(skip_batches)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch (before skipping)."""
        rng = self._rng()
        if self.weights is not None:
            return self._weighted(rng)
        index = np.arange(len(self.tasks))
        if not self.group_by_task:
            order = rng.permutation(index)
            n = len(order) // self.batch_size
            return [order[i * self.batch_size:(i + 1) * self.batch_size].tolist() for i in range(n)]
        batches: list[list[int]] = []
        for group in sorted(set(TASK_GROUPS[t] for t in self.tasks)):
            members = np.array([i for i, t in enumerate(self.tasks) if TASK_GROUPS[t] == group])
            order = members[rng.permutation(len(members))]
            n = len(order) // self.batch_size
            batches.extend(order[i * self.batch_size:(i + 1) * self.batch_size].tolist() for i in range(n))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _weighted(self, rng: np.random.Generator) -> list[list[int]]:
        assert self.weights is not None
        names = [t for t, w in self.weights.items() if w > 0]
        probs = np.array([self.weights[t] for t in names], dtype=np.float64)
        probs /= probs.sum()
        pools = {t: np.array([i for i, s in enumerate(self.tasks) if s is t]) for t in names}
        cursors = {t: len(pools[t]) for t in names}  # force a shuffle on first use
        orders: dict[Task, np.ndarray] = {}

        def take(task: Task) -> int:
            if cursors[task] >= len(pools[task]):
                orders[task] = pools[task][rng.permutation(len(pools[task]))]
                cursors[task] = 0
            cursors[task] += 1
            return int(orders[task][cursors[task] - 1])

        batches = []
        for _ in range(len(self.tasks) // self.batch_size):
            if self.group_by_task:
                task = names[int(rng.choice(len(names), p=probs))]
                batches.append([take(task) for _ in range(self.batch_size)])
            else:
                batches.append([take(names[int(rng.choice(len(names), p=probs))]) for _ in range(self.batch_size)])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.skip_batches:]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip_batches)

    def batches_per_epoch(self) -> int:
        if self.weights is not None or not self.group_by_task:
            return len(self.tasks) // self.batch_size
        counts: dict[int, int] = {}
        for t in self.tasks:
            counts[TASK_GROUPS[t]] = counts.get(TASK_GROUPS[t], 0) + 1
        return sum(c // self.batch_size for c in counts.values())
