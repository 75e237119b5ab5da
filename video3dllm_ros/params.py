"""The node's ROS parameters: one table with defaults, descriptions and checks (no rclpy import).

`PARAMETERS` is the single source of truth: the node declares each entry with a
ParameterDescriptor carrying its description (so `ros2 param describe /video3dllm <name>`
explains it), `config/video3dllm.yaml` sets the same names, docs/ros.md lists them, and
`NodeSettings.from_values` validates a full set of values with errors that name the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from video3dllm_core.answer import CAPTION_DECODINGS

__all__ = ["ParamSpec", "PARAMETERS", "NodeSettings", "engine_config_kwargs"]

RGB_TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")
POSE_SOURCES = ("tf", "topic")
BACKENDS = ("auto", "core", "ros")


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default (its type is the parameter's type) and description."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- inputs
    ParamSpec("rgb_topic", "/camera/camera/color/image_raw",
              "Colour image topic (sensor_msgs/Image; sensor_msgs/CompressedImage when rgb_transport is "
              "'compressed', e.g. .../image_raw/compressed)."),
    ParamSpec("rgb_transport", "raw", "'raw' (Image) or 'compressed' (CompressedImage, JPEG/PNG).", RGB_TRANSPORTS),
    ParamSpec("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw",
              "Depth image registered to the colour image (16UC1 mm or 32FC1 m; CompressedImage "
              "'compressedDepth png' when depth_transport is 'compressedDepth')."),
    ParamSpec("depth_transport", "raw", "'raw' (Image) or 'compressedDepth' (CompressedImage).", DEPTH_TRANSPORTS),
    ParamSpec("info_topic", "/camera/camera/aligned_depth_to_color/camera_info",
              "CameraInfo of the depth image (its K unprojects the depth; latest one received is used)."),
    ParamSpec("world_frame", "map", "Fixed frame the scene is accumulated in; every output is in this frame."),
    ParamSpec("pose_source", "tf",
              "'tf': camera pose = TF lookup world_frame <- depth image frame_id at the image stamp; "
              "'topic': poses from ~/camera_pose (geometry_msgs/PoseStamped of the camera optical frame "
              "in world_frame).", POSE_SOURCES),
    ParamSpec("tf_backend", "auto",
              "'ros': tf2_ros.Buffer + TransformListener; 'core': video3dllm_core.tf_buffer fed by /tf and "
              "/tf_static (needs tf2_msgs); 'auto': ros when tf2_ros imports, else core.", BACKENDS),
    ParamSpec("tf_timeout_s", 0.5,
              "How long a synchronised frame waits for its pose before it is dropped as 'no_tf'.", minimum=0.0),
    ParamSpec("tf_cache_s", 10.0, "TF history kept (seconds).", minimum=0.001),
    ParamSpec("sync_backend", "auto",
              "'ros': message_filters.ApproximateTimeSynchronizer; 'core': video3dllm_core.sync."
              "RgbdSynchronizer (same policy); 'auto': ros when message_filters imports, else core.", BACKENDS),
    ParamSpec("sync_slop_s", 0.02, "Largest colour/depth stamp difference paired into one frame (seconds).",
              minimum=0.0),
    ParamSpec("sync_queue_size", 10, "Messages kept per stream while waiting for a partner.", minimum=1),
    ParamSpec("ingest_period_s", 0.0,
              "Minimum stamp spacing between ingested frames (0: every synchronised frame). Frames closer "
              "than this to the previous ingested one are skipped, not dropped.", minimum=0.0),
    # --- engine
    ParamSpec("voxel_size_m", 0.1, "Coverage voxel edge in metres (upstream max-coverage sampling: 0.1).",
              minimum=1e-6),
    ParamSpec("pool_capacity", 256, "Candidate keyframes kept in memory (about 1 MB each).", minimum=1),
    ParamSpec("keyframe_strategy", "mc-ratio95",
              "Keyframe selection preset: uniform, mc, mc-ratio90, mc-ratio95 (max coverage until 95 %)."),
    ParamSpec("max_frames", 0, "Keyframe budget per query (a Query may ask for fewer); 0: the budget the model was "
              "trained with (config.json frames_upbound), else 32.", minimum=0),
    ParamSpec("selection_hysteresis", 0.02,
              "Keep the previous keyframe set unless the coverage gain exceeds this fraction (reuses the "
              "visual-prefix cache).", minimum=0.0),
    ParamSpec("proposal_source", "geometric",
              "Candidate boxes for grounding: 'geometric' (from the fused depth) or 'external' "
              "(~/external_detections).", ("geometric", "external")),
    ParamSpec("proposal_max_frames", 16,
              "Geometric proposals fuse the query's keyframes and a max-coverage selection of this many pooled "
              "frames (candidates from more of the room than the model's keyframes show); 0: the keyframes alone.",
              minimum=0),
    ParamSpec("scene_frame", "estimate",
              "'estimate': gravity-aligned scene frame estimated from the points (robots); 'identity': "
              "world_frame already is a ScanNet-like frame.", ("estimate", "identity")),
    ParamSpec("scene_yaw", "walls",
              "'walls': the scene frame is turned so the room's walls run along x/y (as ScanNet's axis "
              "alignment); world boxes are then hulls of the scene boxes. 'world': keep world_frame's axes.",
              ("walls", "world")),
    ParamSpec("max_new_tokens", 64, "Generation budget of text answers.", minimum=1),
    ParamSpec("caption_decoding", "checkpoint",
              "How captions are decoded: 'checkpoint' (what its generation_config.json asks for; greedy for "
              "upstream checkpoints, the speaker-listener search for the embedded default model), 'greedy', or "
              "'listener' (the grounding head picks among the decoder's plausible words).",
              CAPTION_DECODINGS),
    ParamSpec("model_path", "", "Video-3D LLM checkpoint folder; empty: the embedded default model (small, trained on synthetic rooms)."),
    ParamSpec("device", "", "torch device, e.g. 'cuda:0' or 'cpu'; empty: CUDA when available."),
    ParamSpec("dtype", "", "torch dtype name (bfloat16, float16, float32); empty: the model default."),
    ParamSpec("attn_implementation", "", "transformers attention implementation (flash_attention_2, sdpa, eager); "
              "empty: the model default."),
    # --- outputs
    ParamSpec("marker_lifetime_s", 0.0, "Lifetime of the answer markers (0: until the next answer).", minimum=0.0),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics, ~/coverage and ~/keyframes (seconds).",
              minimum=0.01),
    ParamSpec("caption_question", "Describe the object at the clicked point.",
              "Question asked when a point arrives on /clicked_point (RViz 'Publish Point')."),
)

_BY_NAME = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class NodeSettings:
    """Validated parameter values (field names = parameter names)."""

    rgb_topic: str
    rgb_transport: str
    depth_topic: str
    depth_transport: str
    info_topic: str
    world_frame: str
    pose_source: str
    tf_backend: str
    tf_timeout_s: float
    tf_cache_s: float
    sync_backend: str
    sync_slop_s: float
    sync_queue_size: int
    ingest_period_s: float
    voxel_size_m: float
    pool_capacity: int
    keyframe_strategy: str
    max_frames: int
    selection_hysteresis: float
    proposal_source: str
    proposal_max_frames: int
    scene_frame: str
    scene_yaw: str
    max_new_tokens: int
    caption_decoding: str
    model_path: str
    device: str
    dtype: str
    attn_implementation: str
    marker_lifetime_s: float
    diagnostics_period_s: float
    caption_question: str

    @classmethod
    def defaults(cls) -> NodeSettings:
        return cls.from_values({})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeSettings:
        """Settings from parameter values (missing ones take the default).

        Raises ValueError naming the parameter for an unknown name, a wrong type, a value below
        its minimum or outside its choices.
        """
        unknown = sorted(set(values) - set(_BY_NAME))
        if unknown:
            raise ValueError(f"unknown video3dllm parameter(s) {unknown}; known: {sorted(_BY_NAME)}")
        out: dict[str, Any] = {}
        for spec in PARAMETERS:
            value = values.get(spec.name, spec.default)
            kind = type(spec.default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ValueError(
                    f"parameter '{spec.name}' must be a {kind.__name__}, got {value!r} ({type(value).__name__})"
                )
            if spec.choices and value not in spec.choices:
                raise ValueError(f"parameter '{spec.name}' must be one of {list(spec.choices)}, got {value!r}")
            if spec.minimum is not None and value < spec.minimum:
                raise ValueError(f"parameter '{spec.name}' must be >= {spec.minimum}, got {value!r}")
            if kind is str and spec.name.endswith(("_topic", "_frame")) and not value:
                raise ValueError(f"parameter '{spec.name}' must not be empty")
            out[spec.name] = value
        assert set(out) == {f.name for f in fields(cls)}, "PARAMETERS and NodeSettings disagree"
        return cls(**out)


def engine_config_kwargs(settings: NodeSettings) -> dict[str, Any]:
    """Keyword arguments of video3dllm_core EngineConfig from the node settings ("" -> None)."""

    def opt(value: str) -> str | None:
        return value or None

    return {
        "voxel_size_m": settings.voxel_size_m,
        "pool_capacity": settings.pool_capacity,
        "strategy": settings.keyframe_strategy,
        "max_frames": settings.max_frames or None,
        "selection_hysteresis": settings.selection_hysteresis,
        "proposal_source": settings.proposal_source,
        "proposal_max_frames": settings.proposal_max_frames,
        "scene_frame": settings.scene_frame,
        "scene_yaw": settings.scene_yaw,
        "max_new_tokens": settings.max_new_tokens,
        "caption_decoding": settings.caption_decoding,
        "model_path": opt(settings.model_path),
        "device": opt(settings.device),
        "dtype": opt(settings.dtype),
        "attn_implementation": opt(settings.attn_implementation),
    }
