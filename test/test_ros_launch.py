"""The launch files and the RViz config agree with the package, the node and each other.

`launch` and `launch_ros` have no wheel, so the launch files cannot run here. They are compiled
and their structure read with `ast` (the launch_ros API they use was checked against the
launch_ros and launch sources): the declared arguments, that every argument they read is
declared, the executable and package against CMakeLists.txt / setup.py / package.xml, the
installed files they point at, and replay.launch.py's include and `ros2 bag play` command.
The RViz config is parsed as the YAML rviz2 reads and compared with the topics, types and QoS
the node really creates (a live rclpy node with a stand-in engine), and the parameter file is
loaded by rcl into a node in a namespace, as the launch file's namespace:=... does.
"""

from __future__ import annotations

import os

os.environ["ROS_DOMAIN_ID"] = "43"  # unique per ROS test module

import ast
import py_compile
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import rclpy
import yaml
from catkin_pkg.package import parse_package
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from video3dllm_ros.node import Video3DLLMNode
from video3dllm_ros.params import PARAMETERS
from video3dllm_ros.query import EngineLike

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "launch" / "video3dllm.launch.py"
REPLAY = ROOT / "launch" / "replay.launch.py"
RVIZ = ROOT / "config" / "video3dllm.rviz"
CONFIG = ROOT / "config" / "video3dllm.yaml"
DEFAULTS = {p.name: p.default for p in PARAMETERS}

# What the issue asks each launch file to accept.
MAIN_ARGUMENTS = {"params_file", "model_path", "device", "namespace", "use_sim_time", "rgb_topic", "depth_topic",
                  "info_topic", "rviz", "log_level"}
REPLAY_ARGUMENTS = {"bag", "model_path", "rate", "rviz"}
# rviz_default_plugins display class -> the message type it subscribes to
DISPLAY_TYPES = {
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
    "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
    "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
    "rviz_default_plugins/PoseArray": "geometry_msgs/msg/PoseArray",
}
# The node with this engine only builds its endpoints: nothing here spins it or sends it a query.
NO_ENGINE = cast(EngineLike, object())
RVIZ_DURABILITY = {"Transient Local": DurabilityPolicy.TRANSIENT_LOCAL, "Volatile": DurabilityPolicy.VOLATILE}


class LaunchFile:
    """A launch file read with ast: module constants, calls by name, declared arguments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_text()
        self.tree = ast.parse(self.source)
        self.constants: dict[str, Any] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    self.constants[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass  # not a literal (e.g. derived from PARAMETERS)

    def value(self, node: ast.AST) -> Any:
        """A literal or a module constant."""
        if isinstance(node, ast.Name):
            return self.constants[node.id]
        return ast.literal_eval(node)

    def calls(self, name: str) -> list[ast.Call]:
        return [n for n in ast.walk(self.tree) if isinstance(n, ast.Call)
                and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]

    @staticmethod
    def kwargs(call: ast.Call) -> dict[str, ast.expr]:
        return {k.arg: k.value for k in call.keywords if k.arg}

    def declared(self) -> dict[str, ast.Call]:
        return {self.value(c.args[0]): c for c in self.calls("DeclareLaunchArgument")}

    def read_arguments(self) -> set[str]:
        """Launch configurations the file reads: LaunchConfiguration("x"), _flag(context, "x")."""
        names = {self.value(c.args[0]) for c in self.calls("LaunchConfiguration") if isinstance(c.args[0], ast.Constant)}
        names |= {self.value(c.args[1]) for c in self.calls("_flag")}
        return names

    def share_paths(self) -> list[tuple[str, ...]]:
        """The package-relative paths of PathJoinSubstitution([<share of PACKAGE>, "dir", "file"])."""
        paths = []
        for call in self.calls("PathJoinSubstitution"):
            first, *rest = call.args[0].elts  # type: ignore[attr-defined]
            share = first if isinstance(first, ast.Call) else None
            if share is None:  # a variable holding FindPackageShare(PACKAGE)
                (assign,) = [n for n in ast.walk(self.tree) if isinstance(n, ast.Assign)
                             and getattr(n.targets[0], "id", None) == getattr(first, "id", "")]
                share = assign.value  # type: ignore[assignment]
            assert getattr(share.func, "id", None) == "FindPackageShare", ast.unparse(call)  # type: ignore[union-attr]
            assert self.value(share.args[0]) == "video3dllm", ast.unparse(call)  # type: ignore[union-attr]
            paths.append(tuple(self.value(p) for p in rest))
        return paths


def cmake_project_and_programs() -> tuple[str, set[str], set[str]]:
    text = (ROOT / "CMakeLists.txt").read_text()
    project = re.search(r"^project\((\w+)\)", text, re.M)
    assert project is not None
    programs = set(re.findall(r"install\(PROGRAMS scripts/(\S+) DESTINATION lib/\$\{PROJECT_NAME\}\)", text))
    (dirs,) = re.findall(r"install\(DIRECTORY ([\w ]+) DESTINATION share/\$\{PROJECT_NAME\}\)", text)
    return project.group(1), programs, set(dirs.split())


def console_scripts() -> dict[str, str]:
    """setup.py's console_scripts entry points, name -> "module:function"."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    return dict(tuple(part.strip() for part in e.split("=")) for e in entries)
    raise AssertionError("setup.py has no console_scripts")


@pytest.fixture(scope="module")
def main() -> LaunchFile:
    return LaunchFile(MAIN)


@pytest.fixture(scope="module")
def replay() -> LaunchFile:
    return LaunchFile(REPLAY)


@pytest.mark.parametrize("path", [MAIN, REPLAY], ids=lambda p: p.name)
def test_launch_files_compile_and_read_only_declared_arguments(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "launch.pyc"), doraise=True)
    launch = LaunchFile(path)
    functions = {n.name: n for n in launch.tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions and not functions["generate_launch_description"].args.args
    # a misspelt LaunchConfiguration would silently read an undeclared (empty) configuration
    declared = set(launch.declared())
    assert launch.read_arguments() <= declared, launch.read_arguments() - declared
    for call in launch.declared().values():
        assert "description" in launch.kwargs(call), f"{path.name}: {ast.unparse(call.args[0])} has no description"
    _, _, installed_dirs = cmake_project_and_programs()
    for rel in launch.share_paths():  # every installed file a launch file points at exists and is installed
        assert (ROOT.joinpath(*rel)).is_file() and rel[0] in installed_dirs, rel


def test_main_launch_declares_the_arguments_and_starts_the_installed_node(main: LaunchFile) -> None:
    declared = main.declared()
    assert set(declared) == MAIN_ARGUMENTS
    # every argument is used: the overrides through PARAMETER_ARGUMENTS, the rest by name
    overrides = main.constants["PARAMETER_ARGUMENTS"]
    assert set(overrides) <= set(DEFAULTS), "PARAMETER_ARGUMENTS must name node parameters"
    assert {"model_path", "device", "rgb_topic", "depth_topic", "info_topic"} <= set(overrides)
    assert main.read_arguments() | set(overrides) == MAIN_ARGUMENTS
    assert sorted(main.share_paths()) == [("config", "video3dllm.rviz"), ("config", "video3dllm.yaml")]
    params_default = ast.unparse(main.kwargs(declared["params_file"])["default_value"])
    assert params_default.startswith("PathJoinSubstitution(") and "'config', 'video3dllm.yaml'" in params_default

    project, programs, _ = cmake_project_and_programs()
    (ours,) = [c for c in main.calls("Node") if main.value(main.kwargs(c)["package"]) == "video3dllm"]
    kw = main.kwargs(ours)
    executable = main.value(kw["executable"])
    assert main.value(kw["package"]) == project == parse_package(str(ROOT / "package.xml")).name
    assert executable in programs, f"{executable} is not installed to lib/{project} by CMakeLists.txt"
    assert console_scripts()[executable] == "video3dllm_ros.node:main"
    assert "from video3dllm_ros.node import main" in (ROOT / "scripts" / executable).read_text()
    node_name = main.value(kw["name"])
    assert list(yaml.safe_load(CONFIG.read_text())) == [f"/**/{node_name}"]  # the yaml addresses this node
    # the parameter file first, then the overrides dict (rcl: the last definition wins)
    params_file, override_dict = kw["parameters"].elts  # type: ignore[attr-defined]
    assert "LaunchConfiguration('params_file')" in ast.unparse(params_file)
    assert ast.unparse(override_dict) == "overrides" and "namespace" in kw
    assert "use_sim_time" in ast.unparse(main.tree)

    (rviz,) = [c for c in main.calls("Node") if main.value(main.kwargs(c)["package"]) == "rviz2"]
    assert {"arguments", "parameters", "remappings"} <= set(main.kwargs(rviz))


def test_replay_plays_the_bag_with_clock_into_the_node_on_sim_time(main: LaunchFile, replay: LaunchFile) -> None:
    declared = replay.declared()
    assert REPLAY_ARGUMENTS <= set(declared)
    assert "default_value" not in replay.kwargs(declared["bag"]), "bag is required"
    # arguments both files declare have the same default (no drift between the two)
    main_declared = main.declared()
    for name in set(declared) & set(main_declared):
        assert ast.dump(replay.kwargs(declared[name])["default_value"]) == \
            ast.dump(main.kwargs(main_declared[name])["default_value"]), name

    (include,) = replay.calls("IncludeLaunchDescription")
    (source,) = replay.calls("PythonLaunchDescriptionSource")
    assert source in list(ast.walk(include))
    assert ("launch", "video3dllm.launch.py") in replay.share_paths()
    handed = {replay.value(pair.elts[0]): pair.elts[1]  # type: ignore[attr-defined]
              for pair in replay.kwargs(include)["launch_arguments"].elts}  # type: ignore[attr-defined]
    assert set(handed) <= set(main_declared), set(handed) - set(main_declared)
    assert replay.value(handed.pop("use_sim_time")) == "true"
    for name, value in handed.items():  # everything else is passed through unchanged
        assert ast.unparse(value) == f"LaunchConfiguration('{name}')"
    assert {"model_path", "rviz"} <= set(handed)

    (play,) = replay.calls("ExecuteProcess")
    cmd = [ast.unparse(e) for e in replay.kwargs(play)["cmd"].elts]  # type: ignore[attr-defined]
    assert cmd[:4] == ["'ros2'", "'bag'", "'play'", "LaunchConfiguration('bag')"]
    assert cmd[cmd.index("'--rate'") + 1] == "LaunchConfiguration('rate')"
    # --clock takes an optional Hz value: nothing that is not a number may follow it
    assert "'--clock'" in cmd and cmd.index("'--clock'") == len(cmd) - 1
    (timer,) = replay.calls("TimerAction")
    assert ast.unparse(replay.kwargs(timer)["period"]) == "LaunchConfiguration('start_delay_s')"
    assert ast.unparse(replay.kwargs(timer)["actions"]) == "[play]"


def test_docs_list_every_launch_argument(main: LaunchFile, replay: LaunchFile) -> None:
    docs = (ROOT / "docs" / "ros.md").read_text()
    section = docs[docs.index("## Launch files"):docs.index("## RViz")]
    main_table, replay_table = section.split("launch/replay.launch.py", 1)
    for launch, table in ((main, main_table), (replay, replay_table)):
        missing = {name for name in launch.declared() if f"`{name}`" not in table}
        assert not missing, f"{launch.path.name}: arguments not documented in docs/ros.md: {sorted(missing)}"
    assert "config/video3dllm.rviz" in docs and "rviz/video3dllm.rviz" not in docs


@pytest.fixture(scope="module")
def context() -> Iterator[rclpy.Context]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def node_graph(node: Video3DLLMNode) -> tuple[dict[str, tuple[str, Any]], dict[str, str]]:
    """The node's own publishers {topic: (type, durability)} and subscriptions {topic: type}."""
    publishers = {}
    for topic, types in node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace()):
        (info,) = [i for i in node.get_publishers_info_by_topic(topic) if i.node_name == node.get_name()]
        publishers[topic] = (types[0], info.qos_profile.durability)
    subscriptions = {t: types[0] for t, types in node.get_subscriber_names_and_types_by_node(node.get_name(),
                                                                                              node.get_namespace())}
    return publishers, subscriptions


def test_rviz_config_shows_what_the_node_publishes_with_its_qos(context: rclpy.Context, main: LaunchFile) -> None:
    config = yaml.safe_load(RVIZ.read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == DEFAULTS["world_frame"]
    displays = {d["Class"]: d for d in manager["Displays"] if d["Class"] in DISPLAY_TYPES}
    assert set(displays) == set(DISPLAY_TYPES), "Image, MarkerArray, PointCloud2 and PoseArray displays"

    # the node itself (default parameters, a stand-in engine) says what it publishes and subscribes to
    node = Video3DLLMNode(engine=NO_ENGINE, context=context, cli_args=["--ros-args", "--params-file", str(CONFIG)],
                          parameter_overrides=[Parameter("pose_source", value="topic")])
    try:
        publishers, subscriptions = node_graph(node)
    finally:
        node.destroy_node()
    shown = set()
    for cls, display in displays.items():
        topic, kind = display["Topic"]["Value"], DISPLAY_TYPES[cls]
        assert display["Enabled"] is True, cls
        if cls == "rviz_default_plugins/Image":  # the camera the node listens to, as sensor data
            assert subscriptions.get(topic) == kind == "sensor_msgs/msg/Image" and topic == DEFAULTS["rgb_topic"]
            assert display["Topic"]["Reliability Policy"] == "Best Effort"
            continue
        assert topic in publishers and publishers[topic][0] == kind, (cls, topic, publishers)
        # latched outputs: RViz must ask for transient local to get the last one when it starts later
        assert RVIZ_DURABILITY[display["Topic"]["Durability Policy"]] == publishers[topic][1], topic
        assert publishers[topic][1] == DurabilityPolicy.TRANSIENT_LOCAL, topic
        shown.add(topic)
    # every output RViz can draw is in the config, and it is what the launch file remaps for a namespace
    drawable = {t for t, (kind, _) in publishers.items() if kind in DISPLAY_TYPES.values()}
    assert shown == drawable
    node_name = main.value(main.kwargs(next(c for c in main.calls("Node")
                                            if main.value(main.kwargs(c)["package"]) == "video3dllm"))["name"])
    assert {f"/{node_name}/{n}" for n in main.constants["RVIZ_OUTPUTS"]} == shown
    publish_point = next(t for t in manager["Tools"] if t["Class"] == "rviz_default_plugins/PublishPoint")
    assert subscriptions[publish_point["Topic"]["Value"]] == "geometry_msgs/msg/PointStamped"


def test_params_file_and_launch_overrides_apply_to_the_node_in_a_namespace(
        context: rclpy.Context, tmp_path: Path) -> None:
    """What namespace:=robot1 model_path:=... does: the yaml, then launch_ros's override file."""
    data = yaml.safe_load(CONFIG.read_text())
    (key,) = data
    data[key]["ros__parameters"]["voxel_size_m"] = 0.25  # differs from the default, to see the file apply
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    # launch_ros writes a dict of parameters as {<node fqn>: {ros__parameters: ...}} in a temporary file
    overrides = tmp_path / "launch_params.yaml"
    overrides.write_text(yaml.safe_dump({"/robot1/video3dllm": {"ros__parameters": {
        "model_path": "/models/v3d", "rgb_topic": "cam/color", "use_sim_time": True}}}))
    node = Video3DLLMNode(engine=NO_ENGINE, context=context, namespace="robot1",
                          cli_args=["--ros-args", "--params-file", str(params), "--params-file", str(overrides)],
                          parameter_overrides=[Parameter("pose_source", value="topic")])
    try:
        assert node.get_fully_qualified_name() == "/robot1/video3dllm"
        assert node.settings.voxel_size_m == 0.25 and node.settings.model_path == "/models/v3d"
        assert node.get_parameter("use_sim_time").value is True
        publishers, subscriptions = node_graph(node)
    finally:
        node.destroy_node()
    assert "/robot1/video3dllm/markers" in publishers  # where the launch file remaps RViz to
    assert "/robot1/cam/color" in subscriptions  # a relative rgb_topic resolves in the namespace
