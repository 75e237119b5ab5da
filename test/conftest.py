"""Test-wide guards: no network, no hub, no ROS discovery beyond this process."""

from __future__ import annotations

import ipaddress
import os
import socket

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
