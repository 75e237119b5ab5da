"""The training forward pass of Video3DLLM on a padded batch, with the upstream losses.

Per sample: `encode_frames` (SigLIP, projector, pooling, 3D PE), `build_inputs_embeds` (image block
spliced in at -200, Scan2Cap `<coord>` PE), labels shifted by the image block, and for grounding the
candidate box features (`object_features`). The merged sequences are right-padded into one
[B, L, H] batch with an attention mask and run through the decoder once; the LM head is applied
only to the positions that carry a label (a 32-frame prompt is ~6.7k tokens, and full-vocabulary
logits of the 7B model for all of them would take gigabytes). The grounding head reads the hidden
state at `<ground>`, located through the labels as upstream does.

`TrainingModule` wraps the model so that `accelerate`/DDP/DeepSpeed see one `forward(batch)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from video3dllm_core.model.constants import IGNORE_INDEX
from video3dllm_training.data.dataset import Batch
from video3dllm_training.loss import GROUND_TEMPERATURE, description_recall_loss, infonce_loss, lm_loss_sum

__all__ = ["ForwardOutput", "TrainingModule", "batch_forward"]


@dataclass
class ForwardOutput:
    """Loss of one batch and its parts (floats are detached, for logging)."""

    loss: torch.Tensor
    lm_loss: float | None  # mean token cross-entropy of the batch's text samples
    ground_loss: float | None  # mean InfoNCE of the batch's grounding samples
    lm_tokens: int
    ground_samples: int
    description_loss: float | None = None  # mean description recall loss of the grounding samples


def batch_forward(model: nn.Module, batch: Batch, ground_loss_scale: float = 1.0, lm_loss_on_grounding: bool = False,
                  temperature: float = GROUND_TEMPERATURE, description_loss_weight: float = 0.0,
                  landmark_loss_weight: float = 0.0) -> ForwardOutput:
    """Loss = mean LM cross-entropy + ground_loss_scale * mean InfoNCE (see training/loss.py)
    [+ description_loss_weight * mean description recall loss of the grounding samples, ``description_recall_loss``]."""
    m: Any = model  # a Video3DLLM (typed loosely: accelerate may hand over a wrapper's inner module)
    config = m.config
    ground_ids = torch.tensor([int(t) for t in config.ground_token_ids], dtype=torch.long)
    embeds: list[torch.Tensor] = []
    lm_labels: list[torch.Tensor] = []
    grounding: list[tuple[int, int, tuple[torch.Tensor, dict[str, torch.Tensor]], tuple[int, ...], tuple[int, ...] | None]] = []
    # (row, position, (object features, the head's attribute-match inputs), targets, description token ids)
    for i in range(len(batch)):
        n = batch.lengths[i]
        ids = batch.input_ids[i, :n].tolist()
        visual = m.encode_frames(batch.crop_rgb[i], batch.world_coords[i], batch.patch_world_coords[i])
        coord = batch.coord_xyz[i]
        merged = m.build_inputs_embeds(ids, visual, coord_xyz=None if coord is None else coord.tolist())
        labels = batch.labels[i, :n].to(merged.embeds.device)
        start, end = merged.image_start, merged.image_end
        block = torch.full((end - start,), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
        merged_labels = torch.cat([labels[:start], block, labels[start + 1:]])
        if batch.tasks[i].is_grounding:
            hits = torch.nonzero(torch.isin(merged_labels, ground_ids.to(merged_labels.device))).flatten().tolist()
            if len(hits) != 1:
                raise ValueError(f"sample {batch.ids[i]}: expected one <ground> label, found {len(hits)}")
            boxes = batch.boxes[i]
            targets = batch.ground_targets[i]
            if boxes is None or targets is None:
                raise ValueError(f"sample {batch.ids[i]}: a grounding sample needs candidate boxes and targets")
            objects = m.object_features(visual, boxes)
            features = (objects.features, m.ground_inputs(merged, objects))
            described = batch.description_ids[i] if batch.description_ids else None
            if description_loss_weight and not described:
                raise ValueError(f"sample {batch.ids[i]}: the description recall loss needs the description's token ids")
            grounding.append((i, int(hits[0]), features, targets, described))
            if not lm_loss_on_grounding:
                merged_labels = torch.full_like(merged_labels, IGNORE_INDEX)
        embeds.append(merged.embeds)
        lm_labels.append(merged_labels)

    longest = max(e.shape[0] for e in embeds)
    width = embeds[0].shape[1]
    device = embeds[0].device
    inputs = embeds[0].new_zeros((len(embeds), longest, width))
    mask = torch.zeros((len(embeds), longest), dtype=torch.long, device=device)
    labels_pad = torch.full((len(embeds), longest), IGNORE_INDEX, dtype=torch.long, device=device)
    for i, e in enumerate(embeds):
        inputs[i, : e.shape[0]] = e
        mask[i, : e.shape[0]] = 1
        labels_pad[i, : e.shape[0]] = lm_labels[i]
    positions = torch.arange(longest, device=device).unsqueeze(0).expand(len(embeds), -1)
    decoder = m.language_model.get_decoder()
    hidden = decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state

    total = hidden.sum() * 0.0
    lm_value: float | None = None
    shifted = labels_pad[:, 1:]
    rows = shifted != IGNORE_INDEX
    lm_tokens = int(rows.sum())
    if lm_tokens:
        logits = m.logits(hidden[:, :-1][rows])
        loss_sum, count = lm_loss_sum(logits, shifted[rows])
        lm = loss_sum / count
        total = total + lm
        lm_value = float(lm.detach())

    ground_value: float | None = None
    description_value: float | None = None
    if grounding:
        head = m.ground_head
        if head is None:
            raise ValueError("grounding samples need a model with a grounding head (ground_head_type 'infonce')")
        losses = []
        recall = []
        landmark_losses = []
        for row, pos, features, targets, described in grounding:
            out = head(features[0], hidden[row, pos][None], **features[1])
            scores = out.scores
            losses.append(infonce_loss(scores, targets, temperature))
            anchors = batch.anchor_ids[row] if batch.anchor_ids else ()
            if landmark_loss_weight and anchors and out.landmark is not None:
                landmark_losses.append(-torch.log(out.landmark[list(anchors)].sum() + 1e-6))
            if description_loss_weight:
                recall.append(description_recall_loss(m.logits(hidden[row, pos]), described or ()))
        ground = torch.stack(losses).mean()
        if landmark_losses:
            total = total + landmark_loss_weight * torch.stack(landmark_losses).mean()
        total = total + ground_loss_scale * ground
        ground_value = float(ground.detach())
        if recall:
            described_mean = torch.stack(recall).mean()
            total = total + description_loss_weight * described_mean
            description_value = float(described_mean.detach())
    return ForwardOutput(loss=total, lm_loss=lm_value, ground_loss=ground_value, lm_tokens=lm_tokens,
                         ground_samples=len(grounding), description_loss=description_value)


class TrainingModule(nn.Module):
    """`forward(batch) -> ForwardOutput` around a Video3DLLM (what accelerate prepares and wraps)."""

    def __init__(self, model: nn.Module, ground_loss_scale: float = 1.0, lm_loss_on_grounding: bool = False,
                 temperature: float = GROUND_TEMPERATURE, description_loss_weight: float = 0.0,
                 landmark_loss_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.ground_loss_scale = float(ground_loss_scale)
        self.lm_loss_on_grounding = lm_loss_on_grounding
        self.temperature = float(temperature)
        self.description_loss_weight = float(description_loss_weight)
        self.landmark_loss_weight = float(landmark_loss_weight)

    def forward(self, batch: Batch) -> ForwardOutput:
        return batch_forward(self.model, batch, self.ground_loss_scale, self.lm_loss_on_grounding, self.temperature,
                             self.description_loss_weight, self.landmark_loss_weight)
