"""Helpers shared by the model tests (imported as a module: not tests, not fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from video3dllm_core.model import Video3DLLM


def ground_scores_after_reload(saved: Path, crops: np.ndarray, coords: np.ndarray, ids: list[int], boxes: Any) -> torch.Tensor:
    """Grounding scores of the checkpoint ``saved`` loaded afresh, on the given frames, prompt ids and boxes: what
    a round trip through save_checkpoint / from_pretrained must reproduce."""
    model = Video3DLLM.from_pretrained(saved, device="cpu")
    with torch.no_grad():
        visual = model.encode_frames(crops, coords)
        return model.ground(model.build_inputs_embeds(ids, visual), model.object_features(visual, boxes)).scores
