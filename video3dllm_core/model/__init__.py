"""Video-3D LLM model code: prompts, vision tower, projector, 3D position embedding, LLM, grounding head.

Public entry points: :class:`Video3DLLM` (``from_pretrained``, ``encode_frames``,
``build_inputs_embeds``, ``prefill_prefix``, ``generate``, ``object_features``, ``ground``) and the
selection rules :func:`select_scanrefer` / :func:`select_multi3drefer`.
"""

from .checkpoint import CheckpointError
from .config import ConfigError, Video3DLLMConfig
from .constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .decoding import GenerationOutput
from .grounding import GroundingOutput, select_multi3drefer, select_scanrefer
from .layout import MergedInputs
from .modeling import (
    DecoderOutput,
    Video3DLLM,
    VisualFeatures,
    VisualPrefix,
    load_language_model,
)
from .objects import ObjectFeatures

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DecoderOutput",
    "GenerationOutput",
    "GroundingOutput",
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "MergedInputs",
    "ObjectFeatures",
    "Video3DLLM",
    "Video3DLLMConfig",
    "VisualFeatures",
    "VisualPrefix",
    "load_language_model",
    "select_multi3drefer",
    "select_scanrefer",
]
