"""InfoNCE grounding head and the eval scripts' selection rules (upstream convention 11).

The decoder's final hidden state at the ``<ground>`` token goes through ``query``; the object
features with the learned "no object" target appended as row N go through ``obj``; each head is
Linear -> ReLU -> LayerNorm -> Linear and the scores are cosine similarities (no temperature).

``box_size`` (our extension, ``object_feature_type: patch14-pe-size``; absent from upstream checkpoints):
a learned linear map of the candidate box's log size (metres) that ``Video3DLLM.object_features`` adds to
the object feature. A tower trained from scratch on small renders cannot see an object's size in its
patches (docs/benchmarks.md, "What an object's grounding feature carries"); the box knows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Box sides below this (metres) count as this before the log: a flat proposal stays finite.
MIN_BOX_SIDE_M = 0.05

#: Temperature and running-sum threshold of the Multi3DRefer evaluation script.
MULTI3DREFER_TEMPERATURE = 0.07
MULTI3DREFER_THRESHOLD = 0.4


def _head(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.LayerNorm(width), nn.Linear(width, width))


@dataclass(frozen=True)
class GroundingOutput:
    scores: torch.Tensor  # [N+1] cosine similarities; index N is the "no object" target
    obj_feat: torch.Tensor  # [N+1, H] ground_head_obj output before L2 normalisation
    query_feat: torch.Tensor  # [1, H] ground_head_query output before L2 normalisation
    ground_hidden: torch.Tensor  # [1, H] decoder hidden state at the <ground> token


class GroundingHead(nn.Module):
    """``ground_head_obj``, ``ground_head_query`` and ``ground_head_zero_target`` of the checkpoint, and
    ``ground_head_box_size`` when ``box_size_embedding`` (see the module docstring)."""

    def __init__(self, hidden_size: int, box_size_embedding: bool = False) -> None:
        super().__init__()
        self.obj = _head(hidden_size)
        self.query = _head(hidden_size)
        self.zero_target = nn.Parameter(torch.empty(hidden_size))
        self.box_size = nn.Linear(3, hidden_size) if box_size_embedding else None

    def size_embedding(self, size_xyz_m: torch.Tensor) -> torch.Tensor:
        """[N, 3] box sizes (metres) -> [N, H] learned embedding of their logarithm (sides below
        ``MIN_BOX_SIDE_M`` clamped); raises when the head has no ``box_size`` layer."""
        if self.box_size is None:
            raise ValueError("this grounding head has no box size embedding (object_feature_type is not 'patch14-pe-size')")
        log_size = torch.log(torch.clamp(size_xyz_m.to(torch.float32), min=MIN_BOX_SIDE_M))
        return self.box_size(log_size.to(self.box_size.weight.dtype))

    def forward(self, object_features: torch.Tensor, ground_hidden: torch.Tensor) -> GroundingOutput:
        dtype = ground_hidden.dtype
        candidates = torch.cat([object_features.to(dtype), self.zero_target.unsqueeze(0).to(dtype)], dim=0)
        obj_feat = self.obj(candidates)
        query_feat = self.query(ground_hidden)
        scores = (F.normalize(obj_feat) * F.normalize(query_feat)).sum(dim=-1)
        return GroundingOutput(scores=scores, obj_feat=obj_feat, query_feat=query_feat, ground_hidden=ground_hidden)


def select_scanrefer(scores: torch.Tensor) -> tuple[int, bool]:
    """ScanRefer rule: argmax over all N+1 scores; if the "no object" target wins, the eval script's
    box lookup fails and it falls back to the argmax over the N real objects.

    Returns (object index, whether the fallback was taken).
    """
    values = _as_score_vector(scores)
    if values.shape[0] < 2:
        raise ValueError("ScanRefer needs at least one candidate object besides the no-object target")
    best = int(torch.argmax(values))
    if best == values.shape[0] - 1:
        return int(torch.argmax(values[:-1])), True
    return best, False


def select_multi3drefer(scores: torch.Tensor, threshold: float = MULTI3DREFER_THRESHOLD,
                        temperature: float = MULTI3DREFER_TEMPERATURE) -> list[int]:
    """Multi3DRefer rule: nothing if the "no object" target has the top score; otherwise softmax of
    scores / temperature over all N+1, drop the last entry, and take objects in decreasing
    probability until the running sum reaches ``threshold``.
    """
    values = _as_score_vector(scores)
    if int(torch.max(values, dim=0)[1]) == values.shape[0] - 1:
        return []
    probs = torch.softmax(values / temperature, dim=0)[:-1]
    sorted_probs, order = torch.sort(probs, descending=True)
    chosen: list[int] = []
    running = torch.zeros((), dtype=torch.float32)  # float32 running sum, as the script's tensor sum
    for index, p in zip(order.tolist(), sorted_probs):
        running = running + p
        chosen.append(int(index))
        if bool(running >= threshold):
            break
    return chosen


def _as_score_vector(scores: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(scores).detach().to(device="cpu", dtype=torch.float32).flatten()
    if values.numel() == 0:
        raise ValueError("scores are empty (expected N+1 values, the last one the no-object target)")
    return values
