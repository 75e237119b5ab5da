"""Training losses as upstream computes them (LaVi-Lab/Video-3D-LLM, `llava_qwen.py`).

* Language modelling: transformers' causal-LM cross-entropy, i.e. logits at position t predict
  the label at t + 1, averaged over every non-ignored label of the batch.
* Grounding (`ground_head_type='infonce'`): scores s = cosine(query, object) for the N candidate
  boxes plus the learned "no object" target (index N); with temperature T = 0.07,

      loss = -log( sum_{i in targets} exp(s_i / T) / sum_{j <= N} exp(s_j / T) )

  A Multi3DRefer sample without targets uses the "no object" index (upstream appends -1, the last
  score). Several targets share one numerator (upstream sums their exponentials).

Upstream computes the two losses on different batches: its sampler groups batches by task, and a
grounding batch goes through `predict_box`, which returns the InfoNCE loss only (no language loss
on `<ground>`), while text batches return the LM loss only; `ground_loss_scale` (default 1) is
stored in the config but not applied (its use is commented out). Here a batch may mix both
(weighted task mixtures), so the total is lm_loss + ground_loss_scale * mean InfoNCE, which for
single-task batches and scale 1 equals upstream's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from video3dllm_core.model.constants import IGNORE_INDEX

__all__ = ["GROUND_TEMPERATURE", "description_recall_loss", "infonce_loss", "lm_loss_sum"]

GROUND_TEMPERATURE = 0.07


def infonce_loss(scores: torch.Tensor, targets: Sequence[int], temperature: float = GROUND_TEMPERATURE) -> torch.Tensor:
    """InfoNCE over [N+1] cosine scores (last = "no object"); `targets` empty -> the no-object target."""
    if scores.ndim != 1 or scores.shape[0] < 1:
        raise ValueError(f"scores must be a vector [N+1], got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    idx = list(targets) if len(targets) else [n - 1]
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise ValueError(f"grounding targets {bad} outside the {n - 1} candidates (+ no-object target)")
    logits = scores.float() / temperature
    return torch.logsumexp(logits, dim=0) - torch.logsumexp(logits[idx], dim=0)


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of tokens) for logits [K, V] and their labels [K].

    The caller picks the rows: hidden state of position t with the label of position t + 1.
    """
    valid = labels != IGNORE_INDEX
    count = int(valid.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits[valid].float(), labels[valid], reduction="sum"), count


def description_recall_loss(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Mean cross-entropy of the LM-head logits [V] at ``<ground>`` against each of the description's tokens.

    Not an upstream loss: an auxiliary for decoders trained from scratch (the embedded default model). The
    InfoNCE gradient alone barely reaches the attention of a fresh decoder, whose ``<ground>`` state is then
    the same for every description; asking the state to recall every word of the description (a dense
    signal) teaches the decoder to gather the description there, which the grounding head then reads.
    Minimised by a uniform distribution over the description's tokens.
    """
    if logits.ndim != 1:
        raise ValueError(f"logits must be one vocabulary vector [V], got shape {tuple(logits.shape)}")
    if not len(token_ids):
        raise ValueError("the description has no tokens")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=logits.device)
    if int(ids.min()) < 0 or int(ids.max()) >= logits.shape[0]:
        raise ValueError(f"description token ids outside the vocabulary of {logits.shape[0]}")
    values = logits.float()
    return torch.logsumexp(values, dim=0) - values[ids].mean()
