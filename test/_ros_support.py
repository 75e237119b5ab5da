"""Shared test helpers for the ROS package: a rosbags typestore with our interfaces, CMake builds.

Imported by the test modules (pytest puts this folder on sys.path); not a test module itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_typestore, get_types_from_msg

ROOT = Path(__file__).resolve().parents[1]
VENV_PREFIX = Path(sys.prefix)
INTERFACE_FIXTURES = ROOT / "test" / "fixtures" / "ros_interfaces"
WHEEL_FIXUP = INTERFACE_FIXTURES / "wheel_prefix_fixup.cmake"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` every 20 ms until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@lru_cache(maxsize=1)
def interface_typestore() -> Any:
    """ROS 2 Jazzy typestore + vision_msgs 4.x subset + video3dllm/msg/GroundedObject + Query_Request/Response.

    rosbags names every type pkg/msg/Name, so the two halves of srv/Query.srv are registered as
    video3dllm/msg/Query_Request and video3dllm/msg/Query_Response (same fields and CDR layout).

    The .msg/.srv texts are the repository's own files, so this also checks that rosbags parses them.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for path in sorted((INTERFACE_FIXTURES / "vision_msgs" / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{path.stem}"))
    types.update(get_types_from_msg((ROOT / "msg" / "GroundedObject.msg").read_text(), "video3dllm/msg/GroundedObject"))
    request, response = (ROOT / "srv" / "Query.srv").read_text().split("\n---\n")
    types.update(get_types_from_msg(request, "video3dllm/msg/Query_Request"))
    types.update(get_types_from_msg(response, "video3dllm/msg/Query_Response"))
    store.register(types)
    return store


def cdr_roundtrip(store: Any, msg: Any) -> Any:
    """Serialise a rosbags message to CDR and back, as a bag or a DDS link would."""
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def ros_build_env() -> dict[str, str]:
    """Environment for ament_cmake builds from the wheels (ament index = the venv prefix)."""
    return dict(
        os.environ,
        PATH=f"{VENV_PREFIX / 'bin'}{os.pathsep}{os.environ['PATH']}",
        AMENT_PREFIX_PATH=os.pathsep.join(filter(None, [str(VENV_PREFIX), os.environ.get("AMENT_PREFIX_PATH", "")])),
    )


PACKAGE_CONTENT = ("CMakeLists.txt", "package.xml", "msg", "srv", "scripts", "launch", "config",
                   "video3dllm_core", "video3dllm_ros", "training")


def package_source_copy(dest: Path) -> Path:
    """Copy the ROS package's own files to `dest` (like a colcon workspace's src/video3dllm).

    Needed for the interface build here: the venv lives inside the repository, so numpy's
    include directory would lie inside the source tree, which CMake refuses in an installed
    target ("prefixed in the source directory"). On a robot numpy is a system package.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True)
    for name in PACKAGE_CONTENT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def cmake_build_install(source: Path, build: Path, install: Path, *options: str,
                        prefixes: tuple[Path, ...] = (), env: dict[str, str] | None = None) -> None:
    """Configure, build and install one ament_cmake package as colcon would (asserts on failure)."""
    cmake = shutil.which("cmake")
    assert cmake, "cmake is required to build the ROS package (Debian package 'cmake')"
    assert (VENV_PREFIX / "share" / "ament_cmake" / "cmake").is_dir(), \
        "ament_cmake wheels missing: pip install -r requirements-dev.txt"
    env = env or ros_build_env()
    prefix_path = ";".join([str(p) for p in prefixes] + [str(VENV_PREFIX)])
    configure = subprocess.run(
        [cmake, "-S", str(source), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix_path}",
         f"-DCMAKE_INSTALL_PREFIX={install}", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
         *options],
        capture_output=True, text=True, env=env,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    built = subprocess.run([cmake, "--build", str(build), "--target", "install", "-j", jobs],
                           capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
