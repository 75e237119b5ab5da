"""Settings and statistics of the scene engine (small frozen dataclasses, no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from video3dllm_core.answer import CAPTION_DECODINGS
from video3dllm_core.keyframes import PRESETS
from video3dllm_core.proposals import ProposalConfig

__all__ = ["CAPTION_DECODINGS", "EngineConfig", "EngineStats", "PROPOSAL_SOURCES", "SCENE_FRAME_MODES", "SCENE_YAW_MODES", "parse_dtype"]

PROPOSAL_SOURCES = ("geometric", "external")
SCENE_FRAME_MODES = ("estimate", "identity")
SCENE_YAW_MODES = ("walls", "world")
_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"EngineConfig.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to know (the contract fields first, then engine-only extras).

    Attributes:
        voxel_size_m: coverage voxel edge (upstream max-coverage sampling: 0.1 m).
        pool_capacity: candidate keyframes kept (CoverageIndex capacity; ~1 MB per frame).
        strategy: keyframe preset (keyframes.PRESETS: uniform, mc, mc-ratio90, mc-ratio95).
        max_frames: keyframe budget per query; a query may pass its own. None: the budget the model
            was trained with (``frames_upbound`` in its config.json, written by ``video3dllm train``),
            else 32 (upstream). A decoder sees as many visual tokens as it was trained on this way.
        selection_hysteresis: keep the previous keyframe set unless the new selection's coverage
            exceeds the previous set's (re-evaluated now) by more than this, or a previous frame
            was evicted; a stable set lets later queries reuse the visual-prefix KV cache.
        proposal_source: candidate boxes for grounding/captioning: "geometric" (propose_boxes on
            the fused keyframe points) or "external" (set_external_boxes).
        max_new_tokens: generation budget of qa / situated_qa / caption answers.
        caption_decoding: how captions are decoded: "checkpoint" (what the checkpoint's
            generation_config.json asks for under ``video3dllm_caption_decoding``; greedy, upstream's, when it
            is silent, as real Video-3D LLM checkpoints are), "greedy", or "listener" (the speaker-listener
            beam search of `model.listener_decoding`: the grounding head picks among the decoder's
            plausible words; the checkpoint's settings, else the defaults). The embedded default model asks
            for "listener" (docs/engine.md, "Captions").
        device, dtype, attn_implementation: for `SceneEngine.load` (None: the model's defaults,
            CPU float32 eager, CUDA bfloat16 flash-attn-2/sdpa). dtype is a torch dtype name.
        model_path: checkpoint folder for `SceneEngine.load`; None: the embedded default model
            (small, trained on synthetic rooms only; see video3dllm_core.default_model).
        scene_frame: "estimate" (SceneFrame.estimate on the fused keyframe points) or "identity"
            (the world frame already is a ScanNet-like frame, e.g. ScanNet data).
        scene_yaw: with ``scene_frame="estimate"``: "walls" turns the scene frame about up so the room's
            walls run along x/y, as ScanNet's axis alignment does (`scene.estimate_wall_yaw`; the world's
            axes when no wall direction stands out or it is within 2 degrees of them); "world" keeps the
            world's horizontal axes. A turned scene frame makes world boxes the axis-aligned hull of the
            scene boxes.
        scene_yaw_tolerance_deg: a re-estimated wall direction within this of the previous scene
            frame's keeps the previous yaw.
        scene_frame_tolerance_m: a re-estimated scene frame whose origin moved by at most this
            (3D distance) is not adopted; the previous one stays, so cached per-frame position
            embeddings remain valid. It is adopted anyway when it keeps more points in range.
        enable_cache: reuse per-frame vision features, the keyframe set's visual prefix KV cache,
            proposals and object features across queries. Disabled, every query recomputes
            everything along the same code path (identical numbers, no reuse).
        vision_cache_frames: most frames whose vision features are kept (least recently used
            go first; frames no longer pooled are dropped at once).
        vision_batch_size: frames per vision-tower call.
        proposal_stride_px: pixel stride of the point fusion feeding the scene frame and the
            geometric proposals (fuse_points stride on the 384x384 crops).
        proposal_max_frames: the geometric proposals fuse the query's keyframes and a max-coverage
            selection (``strategy``) of this many pooled frames; 0: the keyframes alone. Candidates are
            geometry, so they may come from more of the room than the model's few keyframes show
            (docs/engine.md, "Candidates").
        proposal_config: parameters of the geometric proposals.
    """

    voxel_size_m: float = 0.1
    pool_capacity: int = 256
    strategy: str = "mc-ratio95"
    max_frames: int | None = None
    selection_hysteresis: float = 0.02
    proposal_source: str = "geometric"
    max_new_tokens: int = 64
    caption_decoding: str = "checkpoint"
    device: str | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    model_path: str | None = None
    scene_frame: str = "estimate"
    scene_yaw: str = "walls"
    scene_yaw_tolerance_deg: float = 2.0
    scene_frame_tolerance_m: float = 0.25
    enable_cache: bool = True
    vision_cache_frames: int = 64
    vision_batch_size: int = 8
    proposal_stride_px: int = 4
    proposal_max_frames: int = 16
    proposal_config: ProposalConfig = field(default_factory=ProposalConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.voxel_size_m, (int, float)) and self.voxel_size_m > 0):
            raise ValueError(f"EngineConfig.voxel_size_m must be > 0 metres, got {self.voxel_size_m!r}")
        _positive_int("pool_capacity", self.pool_capacity)
        if self.strategy not in PRESETS:
            raise ValueError(f"EngineConfig.strategy must be one of {sorted(PRESETS)}, got {self.strategy!r}")
        if self.max_frames is not None:
            _positive_int("max_frames", self.max_frames)
        if not (isinstance(self.selection_hysteresis, (int, float)) and 0 <= self.selection_hysteresis <= 1):
            raise ValueError(
                f"EngineConfig.selection_hysteresis must be a coverage fraction in [0, 1], got {self.selection_hysteresis!r}"
            )
        if self.proposal_source not in PROPOSAL_SOURCES:
            raise ValueError(f"EngineConfig.proposal_source must be one of {PROPOSAL_SOURCES}, got {self.proposal_source!r}")
        _positive_int("max_new_tokens", self.max_new_tokens)
        if self.caption_decoding not in CAPTION_DECODINGS:
            raise ValueError(f"EngineConfig.caption_decoding must be one of {CAPTION_DECODINGS}, got {self.caption_decoding!r}")
        if self.dtype is not None:
            parse_dtype(self.dtype)
        if self.scene_frame not in SCENE_FRAME_MODES:
            raise ValueError(f"EngineConfig.scene_frame must be one of {SCENE_FRAME_MODES}, got {self.scene_frame!r}")
        if self.scene_yaw not in SCENE_YAW_MODES:
            raise ValueError(f"EngineConfig.scene_yaw must be one of {SCENE_YAW_MODES}, got {self.scene_yaw!r}")
        if not (isinstance(self.scene_yaw_tolerance_deg, (int, float)) and 0 <= self.scene_yaw_tolerance_deg < 45):
            raise ValueError(f"EngineConfig.scene_yaw_tolerance_deg must be in [0, 45) degrees, got {self.scene_yaw_tolerance_deg!r}")
        if not (isinstance(self.scene_frame_tolerance_m, (int, float)) and self.scene_frame_tolerance_m >= 0):
            raise ValueError(f"EngineConfig.scene_frame_tolerance_m must be >= 0, got {self.scene_frame_tolerance_m!r}")
        _positive_int("vision_cache_frames", self.vision_cache_frames, 0)
        _positive_int("vision_batch_size", self.vision_batch_size)
        _positive_int("proposal_stride_px", self.proposal_stride_px)
        _positive_int("proposal_max_frames", self.proposal_max_frames, 0)
        if not isinstance(self.proposal_config, ProposalConfig):
            raise ValueError(f"EngineConfig.proposal_config must be a ProposalConfig, got {type(self.proposal_config).__name__}")


def parse_dtype(name: str) -> Any:
    """torch dtype of a name such as "bfloat16" (ValueError naming EngineConfig.dtype otherwise)."""
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"EngineConfig.dtype must be one of {_DTYPES}, got {name!r}")
    import torch

    return getattr(torch, key)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's counters (`SceneEngine.stats()`).

    Attributes:
        frames_added: frames accepted into the keyframe pool.
        frames_dropped: rejected frames by reason: the field a FrameError names (``rgb``,
            ``depth_m``, ``K_depth``, ``T_world_cam``, ``stamp_ns``), ``not_a_frame`` (not a
            PosedFrame) or ``ingest_error`` (any other failure, e.g. a pose 100 km away).
        pool_size: frames in the pool now; pool_bytes: memory they and the voxel map hold.
        ingest_rate_hz: accepted frames per second over the last few seconds (0 when idle).
        queries: query() calls answered (errors included); queries_failed: error answers.
        last_coverage: coverage of the keyframes the last query used (0 before any).
        voxels_total: distinct coverage voxels seen so far.
        frames_evicted: frames the pool evicted to stay within pool_capacity.
        vision_cache_frames: frames whose vision features are cached now.
        last_drop_message: the FrameError/exception message of the last dropped frame.
    """

    frames_added: int
    frames_dropped: dict[str, int]
    pool_size: int
    pool_bytes: int
    ingest_rate_hz: float
    queries: int
    last_coverage: float
    voxels_total: int
    queries_failed: int = 0
    frames_evicted: int = 0
    vision_cache_frames: int = 0
    last_drop_message: str | None = None
