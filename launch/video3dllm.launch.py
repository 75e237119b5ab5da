"""Launch video3dllm_node with config/video3dllm.yaml (and optionally RViz with rviz/video3dllm.rviz).

    ros2 launch video3dllm video3dllm.launch.py model_path:=/models/video3dllm device:=cuda:0
    ros2 launch video3dllm video3dllm.launch.py config:=/path/to/my.yaml rviz:=true

Launch arguments: config (parameter file), model_path and device (override the file when not
empty), rviz (also start RViz), log_level.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video3dllm"


def _node(context, *args, **kwargs):
    """The node, with model_path/device overrides only when given (empty keeps the file's value)."""
    overrides = {}
    for name in ("model_path", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    parameters = [LaunchConfiguration("config").perform(context)]
    if overrides:
        parameters.append(overrides)
    return [
        Node(
            package=PACKAGE,
            executable="video3dllm_node",
            name="video3dllm",
            output="screen",
            emulate_tty=True,
            parameters=parameters,
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
        )
    ]


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "video3dllm.yaml"]),
                              description="Parameter file of video3dllm_node"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Video-3D LLM checkpoint folder (empty: the value in the config file)"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device such as cuda:0 (empty: the value in the config file)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start RViz with rviz/video3dllm.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the node"),
        OpaqueFunction(function=_node),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", PathJoinSubstitution([share, "rviz", "video3dllm.rviz"])],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
