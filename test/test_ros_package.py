"""The repository root is a valid ROS 2 ament_cmake package that installs our Python packages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]
VENV_PREFIX = Path(sys.prefix)


def test_package_xml_is_valid_format3_ament_cmake() -> None:
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()  # raises InvalidPackage with the offending field
    assert package.name == "video3dllm"
    assert package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    buildtool = {dep.name for dep in package.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= buildtool


def test_package_xml_declares_the_node_and_interface_dependencies() -> None:
    """Every ROS package the node or the interfaces use at run time is declared (rosdep installs them)."""
    package = parse_package(str(ROOT / "package.xml"))
    build = {dep.name for dep in package.build_depends}
    run = {dep.name for dep in package.exec_depends}
    interface_deps = {"builtin_interfaces", "std_msgs", "geometry_msgs", "vision_msgs"}
    assert interface_deps <= build and interface_deps <= run  # <depend>: needed to generate and to use
    assert {
        "rclpy", "sensor_msgs", "visualization_msgs", "std_srvs", "diagnostic_msgs", "tf2_ros", "tf2_msgs",
        "message_filters", "launch", "launch_ros", "rosidl_default_runtime",
        "ros2bag",  # replay.launch.py plays bags
    } <= run
    assert "cv_bridge" not in run | build, "images are decoded by video3dllm_core.image_codec; cv_bridge is unused"
    assert [group.name for group in package.member_of_groups] == ["rosidl_interface_packages"]


def test_versions_agree_between_package_xml_setup_and_core() -> None:
    import video3dllm_core

    package = parse_package(str(ROOT / "package.xml"))
    setup_version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text())
    assert setup_version is not None
    assert package.version == setup_version.group(1) == video3dllm_core.__version__


@pytest.mark.slow
def test_cmake_configure_build_install(tmp_path: Path) -> None:
    """Configure and install with ament_cmake from the ROS wheels, as colcon would."""
    cmake = shutil.which("cmake")
    assert cmake, "cmake is required to build the ROS package (Debian package 'cmake')"
    assert (VENV_PREFIX / "share" / "ament_cmake" / "cmake").is_dir(), "ament_cmake wheels missing: pip install -r requirements-dev.txt"
    build, install = tmp_path / "build", tmp_path / "install"
    env = dict(os.environ, PATH=f"{VENV_PREFIX / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # Interfaces OFF: they need vision_msgs, which has no wheel. The interfaces-ON build (against a
    # vision_msgs stand-in) is test_ros_built_interfaces.py.
    configure = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={VENV_PREFIX}",
         f"-DCMAKE_INSTALL_PREFIX={install}", f"-DPython3_EXECUTABLE={sys.executable}",
         "-DVIDEO3DLLM_BUILD_INTERFACES=OFF"],
        capture_output=True, text=True, env=env,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    built = subprocess.run([cmake, "--build", str(build), "--target", "install"], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]

    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "video3dllm").is_file()
    assert (install / "share" / "video3dllm" / "package.xml").is_file()
    node = install / "lib" / "video3dllm" / "video3dllm_node"
    assert node.is_file() and os.access(node, os.X_OK), "node executable not installed to lib/video3dllm"
    for rel in ("config/video3dllm.yaml", "launch/video3dllm.launch.py",
                "launch/replay.launch.py", "config/video3dllm.rviz"):
        assert (install / "share" / "video3dllm" / rel).is_file(), f"{rel} not installed"
    site = next(install.glob("lib/python3*/site-packages"))
    for package in ("video3dllm_core", "video3dllm_ros", "video3dllm_training"):
        assert (site / package / "__init__.py").is_file(), f"{package} not installed by CMakeLists.txt"
    for data in ("model.safetensors", "config.json", "tokenizer.json", "results.json"):  # the embedded default model
        assert (site / "video3dllm_core" / "default_model" / data).is_file(), f"default_model/{data} not installed"
    # The installed copy imports on its own, under the installed name.
    probe = subprocess.run(
        [sys.executable, "-c", "import video3dllm_training, video3dllm_core.frame; print(video3dllm_core.frame.__file__)"],
        capture_output=True, text=True, env=dict(env, PYTHONPATH=str(site)), cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(site), probe.stdout
