"""Constants shared by the model code and the prompt builder (values fixed by the upstream code)."""

from __future__ import annotations

#: Placeholder written into ``input_ids`` where the image block goes; never embedded (LLaVA convention).
IMAGE_TOKEN_INDEX = -200

#: Label value the upstream training/eval code uses for "no target" positions.
IGNORE_INDEX = -100

#: SigLIP image-processor normalisation (mean 0.5, std 0.5 on every channel, after x / 255).
SIGLIP_IMAGE_MEAN = 0.5
SIGLIP_IMAGE_STD = 0.5
