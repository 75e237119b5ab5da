"""InfoNCE grounding head and the eval scripts' selection rules (upstream convention 11).

The decoder's final hidden state at the ``<ground>`` token goes through ``query``; the object
features with the learned "no object" target appended as row N go through ``obj``; each head is
Linear -> ReLU -> LayerNorm -> Linear and the scores are cosine similarities (no temperature).

``box_size`` (our extension, ``object_feature_type: patch14-pe-size``; absent from upstream checkpoints):
a learned linear map of the candidate box's log size (metres) that ``Video3DLLM.object_features`` adds to
the object feature. A tower trained from scratch on small renders cannot see an object's size in its
patches (docs/benchmarks.md, "What an object's grounding feature carries"); the box knows it.

``match`` (our extension, ``ground_attribute_match: true``; absent from upstream checkpoints): a bilinear score
``(A LN(t)) . (B LN(o_i))`` added to each real candidate's cosine (the "no object" target gets 0), where ``t`` is
the mean input embedding of the user's text after the image (the words of the description, before the
decoder) and ``o_i`` the mean vision-tower feature of the patches selected for candidate i (before the
projector and before any position embedding). The small model's object feature carries the colour in a
part 3-10 % the size of its position and size parts, and its query hardly moves with the colour word
(docs/training.md, "The attribute match"); the match compares the two where each still has it. ``B`` starts
at zero, so adding the match leaves a trained model's scores unchanged until it is trained (a box with no
selected patch has a zero tower mean and gets 0); there is no bound (a tanh-bounded form learned less).
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


#: Width of the attribute match's bilinear space (``GroundingHead.match``).
ATTRIBUTE_MATCH_WIDTH = 64


def _head(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.LayerNorm(width), nn.Linear(width, width))


@dataclass(frozen=True)
class GroundingOutput:
    scores: torch.Tensor  # [N+1] cosine similarities; index N is the "no object" target
    obj_feat: torch.Tensor  # [N+1, H] ground_head_obj output before L2 normalisation
    query_feat: torch.Tensor  # [1, H] ground_head_query output before L2 normalisation
    ground_hidden: torch.Tensor  # [1, H] decoder hidden state at the <ground> token
    match: torch.Tensor | None = None  # [N] attribute match added to the real candidates' scores (None without)


class AttributeMatch(nn.Module):
    """``ground_head_match_text`` / ``ground_head_match_obj``: the bilinear attribute match (module docstring)."""

    def __init__(self, text_width: int, tower_width: int, width: int = ATTRIBUTE_MATCH_WIDTH) -> None:
        super().__init__()
        self.text = nn.Linear(text_width, width, bias=False)
        self.obj = nn.Linear(tower_width, width, bias=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``text`` like a fresh ``nn.Linear`` (uniform, bound 1/sqrt(fan_in)), ``obj`` zero: a new match adds 0."""
        with torch.no_grad():
            bound = 1.0 / float(self.text.in_features) ** 0.5
            values = torch.rand(self.text.weight.shape, generator=generator) * 2 * bound - bound
            self.text.weight.copy_(values.to(self.text.weight))
            self.obj.weight.zero_()

    def forward(self, text_mean: torch.Tensor, tower_mean: torch.Tensor) -> torch.Tensor:
        """[H] mean text embedding, [N, mm_hidden] mean tower features -> [N] match scores."""
        if text_mean.ndim != 1 or tower_mean.ndim != 2:
            raise ValueError(f"attribute match needs text_mean [H] and tower_mean [N, W], got {tuple(text_mean.shape)} "
                             f"and {tuple(tower_mean.shape)}")
        t = self.text(F.layer_norm(text_mean.float(), text_mean.shape[-1:]).to(self.text.weight.dtype))
        o = self.obj(F.layer_norm(tower_mean.float(), tower_mean.shape[-1:]).to(self.obj.weight.dtype))
        return o @ t


class GroundingHead(nn.Module):
    """``ground_head_obj``, ``ground_head_query`` and ``ground_head_zero_target`` of the checkpoint,
    ``ground_head_box_size`` when ``box_size_embedding`` and ``ground_head_match_*`` when ``match_tower_width``
    is given (see the module docstring)."""

    def __init__(self, hidden_size: int, box_size_embedding: bool = False, match_tower_width: int | None = None) -> None:
        super().__init__()
        self.obj = _head(hidden_size)
        self.query = _head(hidden_size)
        self.zero_target = nn.Parameter(torch.empty(hidden_size))
        self.box_size = nn.Linear(3, hidden_size) if box_size_embedding else None
        self.match = AttributeMatch(hidden_size, match_tower_width) if match_tower_width else None

    def size_embedding(self, size_xyz_m: torch.Tensor) -> torch.Tensor:
        """[N, 3] box sizes (metres) -> [N, H] learned embedding of their logarithm (sides below
        ``MIN_BOX_SIDE_M`` clamped); raises when the head has no ``box_size`` layer."""
        if self.box_size is None:
            raise ValueError("this grounding head has no box size embedding (object_feature_type is not 'patch14-pe-size')")
        log_size = torch.log(torch.clamp(size_xyz_m.to(torch.float32), min=MIN_BOX_SIDE_M))
        return self.box_size(log_size.to(self.box_size.weight.dtype))

    def forward(self, object_features: torch.Tensor, ground_hidden: torch.Tensor, text_mean: torch.Tensor | None = None,
                tower_mean: torch.Tensor | None = None) -> GroundingOutput:
        """Scores [N+1] of N candidates and the "no object" target; ``text_mean`` [H] and ``tower_mean``
        [N, mm_hidden] are required with the attribute match and refused without it."""
        dtype = ground_hidden.dtype
        candidates = torch.cat([object_features.to(dtype), self.zero_target.unsqueeze(0).to(dtype)], dim=0)
        obj_feat = self.obj(candidates)
        query_feat = self.query(ground_hidden)
        scores = (F.normalize(obj_feat) * F.normalize(query_feat)).sum(dim=-1)
        match = None
        if self.match is not None:
            if text_mean is None or tower_mean is None:
                raise ValueError("this grounding head has the attribute match (ground_attribute_match): pass text_mean "
                                 "and tower_mean (Video3DLLM.ground does)")
            if tower_mean.shape[0] != object_features.shape[0]:
                raise ValueError(f"tower_mean has {tower_mean.shape[0]} rows for {object_features.shape[0]} candidates")
            match = self.match(text_mean, tower_mean).to(scores.dtype)
            scores = scores + torch.cat([match, match.new_zeros(1)])
        elif text_mean is not None or tower_mean is not None:
            raise ValueError("text_mean / tower_mean given, but this grounding head has no attribute match")
        return GroundingOutput(scores=scores, obj_feat=obj_feat, query_feat=query_feat, ground_hidden=ground_hidden,
                               match=match)


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
