"""Replay a rosbag2 recording into video3dllm_node on simulated time.

    ros2 launch video3dllm replay.launch.py bag:=/data/kitchen_bag model_path:=/models/video3dllm rviz:=true

Starts video3dllm.launch.py with use_sim_time:=true, then, after start_delay_s (the node
loads its model before it subscribes to anything; messages sent earlier would be lost), plays
the bag with `ros2 bag play <bag> --rate <rate> --clock` so that /clock follows the bag's
stamps. The node keeps running when the bag ends, so the scene can be queried afterwards.

Launch arguments: bag (required), rate, start_delay_s, and params_file, model_path, device,
rgb_topic, depth_topic, info_topic, rviz, which are handed to video3dllm.launch.py (its other
arguments, e.g. namespace:=..., reach it as well: launch configurations are shared).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, TimerAction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video3dllm"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "video3dllm.launch.py"])),
        launch_arguments=[
            ("use_sim_time", "true"),
            ("params_file", LaunchConfiguration("params_file")),
            ("model_path", LaunchConfiguration("model_path")),
            ("device", LaunchConfiguration("device")),
            ("rgb_topic", LaunchConfiguration("rgb_topic")),
            ("depth_topic", LaunchConfiguration("depth_topic")),
            ("info_topic", LaunchConfiguration("info_topic")),
            ("rviz", LaunchConfiguration("rviz")),
        ],
    )
    # The bag goes before --clock: ros2 bag play's --clock takes an optional rate (Hz), so
    # `--clock <bag>` would read the bag path as that rate. --clock alone publishes at 40 Hz.
    play = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"), "--clock"],
        output="screen",
    )
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder or file to play (colour, aligned depth, camera_info, /tf)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate of ros2 bag play"),
        DeclareLaunchArgument("start_delay_s", default_value="5.0",
                              description="Seconds between starting the node and playing the bag (model loading)"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "video3dllm.yaml"]),
                              description="Parameter file of video3dllm_node"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Video-3D LLM checkpoint folder (empty: the value in params_file)"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device such as cuda:0 (empty: the value in params_file)"),
        DeclareLaunchArgument("rgb_topic", default_value="", description="Colour image topic in the bag (empty: params_file)"),
        DeclareLaunchArgument("depth_topic", default_value="", description="Depth image topic in the bag (empty: params_file)"),
        DeclareLaunchArgument("info_topic", default_value="", description="CameraInfo topic in the bag (empty: params_file)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start RViz with config/video3dllm.rviz"),
        node,
        TimerAction(period=LaunchConfiguration("start_delay_s"), actions=[play]),
    ])
