"""Vision-to-LLM projector (upstream ``build_vision_projector``).

``mlpNx_gelu`` is ``Linear(mm_hidden, H)`` followed by N-1 times (exact-erf GELU, ``Linear(H, H)``),
as an ``nn.Sequential`` so that the checkpoint keys ``model.mm_projector.{0,2,...}`` map directly.
"""

from __future__ import annotations

import re

from torch import nn


def build_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None:
        raise ValueError(f"mm_projector_type {projector_type!r} not supported (use 'linear' or 'mlpNx_gelu')")
    depth = int(match.group(1))
    layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
    for _ in range(1, depth):
        layers.append(nn.GELU())  # approximate="none": the exact erf GELU upstream uses
        layers.append(nn.Linear(hidden_size, hidden_size))
    return nn.Sequential(*layers)
