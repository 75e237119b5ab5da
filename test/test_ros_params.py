"""The node's parameter table agrees with config/video3dllm.yaml, docs/ros.md and EngineConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from video3dllm_core.engine import EngineConfig
from video3dllm_ros.params import PARAMETERS, NodeSettings, engine_config_kwargs

ROOT = Path(__file__).resolve().parents[1]


def yaml_values() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "config" / "video3dllm.yaml").read_text())
    # /**/video3dllm: the node's name in any namespace (test_ros_launch.py checks rcl applies it under one)
    assert list(data) == ["/**/video3dllm"], "the yaml must address the node by its name 'video3dllm' in any namespace"
    values: dict[str, object] = data["/**/video3dllm"]["ros__parameters"]
    return values


def test_yaml_sets_exactly_the_declared_parameters_with_valid_values() -> None:
    values = yaml_values()
    assert list(values) == [p.name for p in PARAMETERS]
    settings = NodeSettings.from_values(values)
    assert settings.world_frame == "map" and settings.sync_slop_s == 0.02


def test_every_parameter_is_described_and_documented() -> None:
    doc = (ROOT / "docs" / "ros.md").read_text()
    for spec in PARAMETERS:
        assert len(spec.description) > 20, spec.name
        assert f"`{spec.name}`" in doc, f"docs/ros.md does not document parameter {spec.name}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"voxel_size": 0.1}, r"unknown video3dllm parameter\(s\) \['voxel_size'\]"),
        ({"voxel_size_m": "0.1"}, r"parameter 'voxel_size_m' must be a float"),
        ({"pool_capacity": 2.5}, r"parameter 'pool_capacity' must be a int"),
        ({"rgb_transport": "theora"}, r"parameter 'rgb_transport' must be one of \['raw', 'compressed'\]"),
        ({"tf_timeout_s": -1.0}, r"parameter 'tf_timeout_s' must be >= 0.0"),
        ({"world_frame": ""}, r"parameter 'world_frame' must not be empty"),
    ],
)
def test_bad_values_name_the_parameter(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeSettings.from_values(values)


def test_integers_are_accepted_for_float_parameters() -> None:
    assert NodeSettings.from_values({"tf_timeout_s": 1}).tf_timeout_s == 1.0


def test_engine_config_from_the_settings() -> None:
    settings = NodeSettings.from_values({"keyframe_strategy": "mc-ratio90", "device": "", "dtype": "float32",
                                         "max_frames": 8, "model_path": "/models/v3d"})
    config = EngineConfig(**engine_config_kwargs(settings))
    assert config.strategy == "mc-ratio90" and config.max_frames == 8 and config.model_path == "/models/v3d"
    assert config.device is None and config.dtype == "float32" and config.attn_implementation is None
    with pytest.raises(ValueError, match="strategy"):
        EngineConfig(**engine_config_kwargs(NodeSettings.from_values({"keyframe_strategy": "random"})))
