"""launch/video3dllm.launch.py and rviz/video3dllm.rviz agree with the node.

`launch` and `launch_ros` have no wheel, so the launch file cannot run here: it is compiled and
its structure checked (the launch_ros API it uses was checked against the launch_ros docs). The
RViz config is parsed as the YAML rviz2 reads and its topics compared with the node's outputs.
"""

from __future__ import annotations

import ast
import py_compile
from pathlib import Path

import yaml

from video3dllm_ros.params import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "video3dllm.launch.py"


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _kw(call: ast.Call) -> dict[str, object]:
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg and isinstance(k.value, ast.Constant)}


def test_launch_file_compiles_and_starts_the_installed_node(tmp_path: Path) -> None:
    py_compile.compile(str(LAUNCH), cfile=str(tmp_path / "launch.pyc"), doraise=True)
    tree = ast.parse(LAUNCH.read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("launch_ros.actions", "Node") in imports and ("launch", "LaunchDescription") in imports
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    nodes = [_kw(c) for c in _calls(tree, "Node")]
    ours = next(n for n in nodes if n.get("executable") == "video3dllm_node")
    assert ours["name"] == "video3dllm"  # the node name the yaml addresses
    assert any(isinstance(c.args[0], ast.Name) and c.args[0].id == "PACKAGE" for c in _calls(tree, "FindPackageShare"))
    assert 'PACKAGE = "video3dllm"' in LAUNCH.read_text()
    arguments = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"config", "model_path", "device", "rviz", "log_level"} <= arguments
    assert {"model_path", "device"} <= {p.name for p in PARAMETERS}
    assert "video3dllm.yaml" in LAUNCH.read_text() and "video3dllm.rviz" in LAUNCH.read_text()


def test_rviz_config_shows_the_node_outputs_in_map() -> None:
    config = yaml.safe_load((ROOT / "rviz" / "video3dllm.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Class"]: d for d in manager["Displays"]}
    expected = {
        "rviz_default_plugins/MarkerArray": "/video3dllm/markers",
        "rviz_default_plugins/PointCloud2": "/video3dllm/coverage",
        "rviz_default_plugins/PoseArray": "/video3dllm/keyframes",
    }
    for cls, topic in expected.items():
        assert displays[cls]["Topic"]["Value"] == topic
        # the node publishes these latched (transient local): RViz must ask for it to get the last one
        assert displays[cls]["Topic"]["Durability Policy"] == "Transient Local"
    publish_point = next(t for t in manager["Tools"] if t["Class"] == "rviz_default_plugins/PublishPoint")
    assert publish_point["Topic"]["Value"] == "/clicked_point"
    rgb_default = next(p.default for p in PARAMETERS if p.name == "rgb_topic")
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == rgb_default
