"""Test-wide guards: no network, no hub, no ROS discovery beyond this process."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

# Must be set before transformers / huggingface_hub / rclpy are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"

_real_connect = socket.socket.connect


def _is_local(address: object) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise RuntimeError(f"test attempted a network connection to {address!r}; everything must run offline")
    _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        raise pytest.UsageError("HF_HUB_OFFLINE must be 1 for the test suite")


@pytest.fixture(scope="session")
def small_model_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-room synthetic benchmark (1 train / 1 val / 1 test room, 6 frames at 64x48) for the small-model
    recipe's tests (init-model, pretrain-tower); read-only, tests copy it before changing it."""
    from video3dllm_core.cli import main as cli_main

    out = tmp_path_factory.mktemp("bench") / "b"
    assert cli_main(["make-benchmark", str(out), "--scenes", "3", "--seed", "5", "--frames", "6", "--width", "64",
                     "--height", "48"]) == 0
    return out


@pytest.fixture(scope="session")
def small_init_model(small_model_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`video3dllm init-model` on ``small_model_benchmark`` (seed 0), for the grounding-head extension tests;
    read-only: tests save what they change elsewhere."""
    from video3dllm_core.cli import main as cli_main

    out = tmp_path_factory.mktemp("head_extension") / "init"
    assert cli_main(["init-model", str(small_model_benchmark), str(out)]) == 0
    return out


@pytest.fixture
def train_head_extension_alone(small_model_benchmark: Path) -> Callable[[Path, str, Path], Path]:
    """``run(model, flag, out)``: `video3dllm train` of ``model`` on ``small_model_benchmark``'s grounding tasks with
    one grounding-head extension added by ``flag`` (``--attribute-match``, ``--relation-match``) and everything else
    frozen, 3 steps at lr 1e-2; returns the checkpoint folder of step 3."""
    from video3dllm_core.cli import main as cli_main

    def run(model: Path, flag: str, out: Path) -> Path:
        bench = small_model_benchmark
        code = cli_main(["train", "--model", str(model), "--data", str(bench / "multi.yaml"),
                         "--posed-images", str(bench / "posed_images"),
                         "--boxes", str(bench / "metadata" / "scannet_train_gt_box.json"),
                         "--task-weights", "scanrefer=1,multi3drefer=1,scanqa=0,sqa3d=0,scan2cap=0", "--frames-upbound", "1",
                         flag, "--no-tune-vision-tower", "--no-tune-projector", "--no-tune-llm",
                         "--no-tune-ground-head", "--max-steps", "3", "--lr", "1e-2", "--batch-size", "2",
                         "--output", str(out), "--save-steps", "3", "--seed", "0"])
        assert code == 0
        return out / "checkpoint-3"

    return run
