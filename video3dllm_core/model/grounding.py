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

``relation`` (our extension, ``ground_relation_match: true``; absent from upstream checkpoints): a geometric
score for relation descriptions ("the box closest to the window", "the leftmost chair seen from the door",
"the largest ball"), added to each real candidate's score like the match. The small decoder does not find a
landmark in the video tokens (docs/benchmarks.md, "Does the decoder read the video?"), but the landmark is
one of the candidates, so the head finds it there: a landmark query from the description (the ``<ground>``
state and the mean text embedding) attends over the candidates' head embeddings, and each candidate gets
the geometry of its box relative to that soft landmark (`relation_features`), standardised over the room,
weighted by the description, minus its largest value: the match only lowers the candidates that fit the
relation worse than the best one, so it reorders the candidates without lifting any of them over the "no
object" target (a zero-mean term would lift the best, and "all the pink objects" would stop being answered
"nothing" when nothing is pink). Everything is in the scene frame, z up, metres; "seen from X" faces the mean
of the candidate centres (the benchmark's rule faces the room centre, `video3dllm_training.relations`).
The weights start at zero, so adding the relation match leaves a trained model's scores unchanged.
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

#: Names of the relation match's per-candidate features (`relation_features`), in column order.
RELATION_FEATURES = ("distance_m", "bearing_left_rad", "left_offset_m", "log_volume", "bottom_to_landmark_top_m",
                     "landmark_weight")

#: Temperature of the relation match's landmark attention (cosines of the head's embeddings).
RELATION_LANDMARK_TEMPERATURE = 0.07


def _uniform_like_linear_(param: torch.Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    """``param`` drawn as a fresh ``nn.Linear``'s (uniform, bound 1/sqrt(fan_in)), from ``generator``."""
    bound = 1.0 / float(fan_in) ** 0.5
    param.copy_((torch.rand(param.shape, generator=generator) * 2 * bound - bound).to(param))


def _head(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.LayerNorm(width), nn.Linear(width, width))


@dataclass(frozen=True)
class GroundingOutput:
    scores: torch.Tensor  # [N+1] cosine similarities; index N is the "no object" target
    obj_feat: torch.Tensor  # [N+1, H] ground_head_obj output before L2 normalisation
    query_feat: torch.Tensor  # [1, H] ground_head_query output before L2 normalisation
    ground_hidden: torch.Tensor  # [1, H] decoder hidden state at the <ground> token
    match: torch.Tensor | None = None  # [N] attribute match added to the real candidates' scores (None without)
    relation: torch.Tensor | None = None  # [N] relation match added to the real candidates' scores (None without)
    landmark: torch.Tensor | None = None  # [N] the relation match's landmark attention (sums to 1; None without)


class AttributeMatch(nn.Module):
    """``ground_head_match_text`` / ``ground_head_match_obj``: the bilinear attribute match (module docstring)."""

    def __init__(self, text_width: int, tower_width: int, width: int = ATTRIBUTE_MATCH_WIDTH) -> None:
        super().__init__()
        self.text = nn.Linear(text_width, width, bias=False)
        self.obj = nn.Linear(tower_width, width, bias=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``text`` like a fresh ``nn.Linear`` (uniform, bound 1/sqrt(fan_in)), ``obj`` zero: a new match adds 0."""
        with torch.no_grad():
            _uniform_like_linear_(self.text.weight, self.text.in_features, generator)
            self.obj.weight.zero_()

    def forward(self, text_mean: torch.Tensor, tower_mean: torch.Tensor) -> torch.Tensor:
        """[H] mean text embedding, [N, mm_hidden] mean tower features -> [N] match scores."""
        if text_mean.ndim != 1 or tower_mean.ndim != 2:
            raise ValueError(f"attribute match needs text_mean [H] and tower_mean [N, W], got {tuple(text_mean.shape)} "
                             f"and {tuple(tower_mean.shape)}")
        t = self.text(F.layer_norm(text_mean.float(), text_mean.shape[-1:]).to(self.text.weight.dtype))
        o = self.obj(F.layer_norm(tower_mean.float(), tower_mean.shape[-1:]).to(self.obj.weight.dtype))
        return o @ t


def relation_features(boxes_m: torch.Tensor, landmark_weight: torch.Tensor) -> torch.Tensor:
    """[N, 6] candidate boxes (centre xyz, size xyz; scene frame, z up, metres) and [N] landmark attention
    (non-negative, sums to 1) -> [N, len(RELATION_FEATURES)] raw relation features of each candidate.

    The landmark is the attention-weighted mean of the centres (and of the box tops). A viewer stands at the
    landmark's floor position facing the mean of all candidate centres; "left" is positive bearing
    (atan2(left, forward)) and positive left offset. Log volume clamps sides like the size embedding.
    """
    if boxes_m.ndim != 2 or boxes_m.shape[1] != 6:
        raise ValueError(f"relation features need boxes [N, 6], got {tuple(boxes_m.shape)}")
    if landmark_weight.shape != boxes_m.shape[:1]:
        raise ValueError(f"landmark weights {tuple(landmark_weight.shape)} do not match {boxes_m.shape[0]} boxes")
    box = boxes_m.to(torch.float32)
    w = landmark_weight.to(torch.float32)
    centre_xy, centre_z, size = box[:, :2], box[:, 2], box[:, 3:]
    landmark_xy = w @ centre_xy
    landmark_top = w @ (centre_z + size[:, 2] / 2)
    offset = centre_xy - landmark_xy
    facing = centre_xy.mean(dim=0) - landmark_xy
    forward = facing / torch.clamp(facing.norm(), min=1e-3)
    left_dir = torch.stack([-forward[1], forward[0]])  # z_up x forward
    forward_m, left_m = offset @ forward, offset @ left_dir
    distance = torch.sqrt((offset ** 2).sum(dim=-1) + 1e-6)
    bearing = torch.atan2(left_m, forward_m)
    log_volume = torch.log(torch.clamp(size, min=MIN_BOX_SIDE_M)).sum(dim=-1)
    bottom_gap = (centre_z - size[:, 2] / 2 - landmark_top).abs()
    return torch.stack([distance, bearing, left_m, log_volume, bottom_gap, w], dim=-1)


def standardise_over_candidates(features: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each column to mean 0, std 1 over the room's candidates (a constant column becomes 0): a description's
    weights then mean "the most / least" of a quantity whatever the room's scale."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, unbiased=False, keepdim=True)
    return (features - mean) / (std + eps)


class RelationMatch(nn.Module):
    """``ground_head_relation_*``: the relation match (module docstring). ``landmark`` maps the description
    (the ``<ground>`` state and the mean text embedding, each layer-normalised) to a landmark query compared by
    cosine with the head's candidate embeddings; ``weights`` maps the same description to one weight per
    relation feature, zero at initialisation."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.landmark = _head(2 * hidden_size)
        self.landmark_out = nn.Linear(2 * hidden_size, hidden_size)
        self.weights = nn.Linear(2 * hidden_size, len(RELATION_FEATURES))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Landmark layers like fresh ``nn.Linear``s (uniform, bound 1/sqrt(fan_in); LayerNorm 1 / 0), weights zero:
        a new relation match adds 0."""
        with torch.no_grad():
            for module in (*self.landmark, self.landmark_out):
                if isinstance(module, nn.Linear):
                    for p in (module.weight, module.bias):
                        _uniform_like_linear_(p, module.in_features, generator)
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            self.weights.weight.zero_()
            self.weights.bias.zero_()

    def forward(self, description: torch.Tensor, candidate_embeddings: torch.Tensor,
                boxes_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[2H] description, [N, H] head embeddings of the real candidates, [N, 6] boxes -> ([N] relation scores,
        [N] landmark attention)."""
        if boxes_m.shape[0] != candidate_embeddings.shape[0]:
            raise ValueError(f"relation match: {boxes_m.shape[0]} boxes for {candidate_embeddings.shape[0]} candidates")
        dtype = self.weights.weight.dtype
        if boxes_m.shape[0] == 0:  # no candidate: nothing to reorder (only the "no object" target is scored)
            empty = candidate_embeddings.new_zeros(0, dtype=dtype)
            return empty, empty.float()
        query = self.landmark_out(self.landmark(description.to(dtype)))
        cosines = F.normalize(candidate_embeddings.to(dtype), dim=-1) @ F.normalize(query, dim=-1)
        landmark = torch.softmax(cosines.float() / RELATION_LANDMARK_TEMPERATURE, dim=0)
        features = standardise_over_candidates(relation_features(boxes_m, landmark))
        relation = features.to(dtype) @ self.weights(description.to(dtype))
        return relation - relation.max(), landmark


class GroundingHead(nn.Module):
    """``ground_head_obj``, ``ground_head_query`` and ``ground_head_zero_target`` of the checkpoint,
    ``ground_head_box_size`` when ``box_size_embedding`` and ``ground_head_match_*`` when ``match_tower_width``
    is given, ``ground_head_relation_*`` with ``relation_match`` (see the module docstring)."""

    def __init__(self, hidden_size: int, box_size_embedding: bool = False, match_tower_width: int | None = None,
                 relation_match: bool = False) -> None:
        super().__init__()
        self.obj = _head(hidden_size)
        self.query = _head(hidden_size)
        self.zero_target = nn.Parameter(torch.empty(hidden_size))
        self.box_size = nn.Linear(3, hidden_size) if box_size_embedding else None
        self.match = AttributeMatch(hidden_size, match_tower_width) if match_tower_width else None
        self.relation = RelationMatch(hidden_size) if relation_match else None

    def size_embedding(self, size_xyz_m: torch.Tensor) -> torch.Tensor:
        """[N, 3] box sizes (metres) -> [N, H] learned embedding of their logarithm (sides below
        ``MIN_BOX_SIDE_M`` clamped); raises when the head has no ``box_size`` layer."""
        if self.box_size is None:
            raise ValueError("this grounding head has no box size embedding (object_feature_type is not 'patch14-pe-size')")
        log_size = torch.log(torch.clamp(size_xyz_m.to(torch.float32), min=MIN_BOX_SIDE_M))
        return self.box_size(log_size.to(self.box_size.weight.dtype))

    def forward(self, object_features: torch.Tensor, ground_hidden: torch.Tensor, text_mean: torch.Tensor | None = None,
                tower_mean: torch.Tensor | None = None, boxes_m: torch.Tensor | None = None) -> GroundingOutput:
        """Scores [N+1] of N candidates and the "no object" target; ``text_mean`` [H] and ``tower_mean``
        [N, mm_hidden] are required with the attribute match, ``text_mean`` and ``boxes_m`` [N, 6] with the
        relation match, and each is refused when the head has neither."""
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
        elif tower_mean is not None or (text_mean is not None and self.relation is None):
            raise ValueError("text_mean / tower_mean given, but this grounding head has no attribute match")
        relation = landmark = None
        if self.relation is not None:
            if text_mean is None or boxes_m is None:
                raise ValueError("this grounding head has the relation match (ground_relation_match): pass text_mean "
                                 "and boxes_m (Video3DLLM.ground does)")
            hidden = ground_hidden.reshape(-1)
            description = torch.cat([F.layer_norm(hidden.float(), hidden.shape), F.layer_norm(text_mean.float(), text_mean.shape)])
            relation, landmark = self.relation(description, obj_feat[:-1], boxes_m.to(obj_feat.device))
            relation = relation.to(scores.dtype)
            scores = scores + torch.cat([relation, relation.new_zeros(1)])
        elif boxes_m is not None:
            raise ValueError("boxes_m given, but this grounding head has no relation match")
        return GroundingOutput(scores=scores, obj_feat=obj_feat, query_feat=query_feat, ground_hidden=ground_hidden,
                               match=match, relation=relation, landmark=landmark)


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
