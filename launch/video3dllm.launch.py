"""Launch video3dllm_node with a parameter file, and optionally RViz with config/video3dllm.rviz.

    ros2 launch video3dllm video3dllm.launch.py model_path:=/models/video3dllm device:=cuda:0 rviz:=true
    ros2 launch video3dllm video3dllm.launch.py params_file:=/path/to/my.yaml namespace:=robot1 \
        rgb_topic:=/cam/color/image_raw depth_topic:=/cam/depth/image_raw info_topic:=/cam/depth/camera_info

Launch arguments (docs/ros.md has the table):
  params_file   parameter file of the node (default: the installed config/video3dllm.yaml)
  model_path, device, rgb_topic, depth_topic, info_topic
                override the node parameter of the same name when not empty (empty: the file's value)
  namespace     ROS namespace of the node (outputs become /<namespace>/video3dllm/...)
  use_sim_time  true: the node (and RViz) take time from /clock, e.g. `ros2 bag play --clock`
  rviz          true: also start RViz; its topics are remapped to the namespace and rgb_topic
  log_level     logging level of the node

The arguments are resolved in one OpaqueFunction so that empty overrides keep the file's value,
parameter values keep their types (a model_path of digits stays a string) and RViz gets the
remappings that match the node's namespace.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from video3dllm_ros.params import PARAMETERS

PACKAGE = "video3dllm"
EXECUTABLE = "video3dllm_node"  # installed to lib/video3dllm by CMakeLists.txt
NODE_NAME = "video3dllm"  # the name config/video3dllm.yaml addresses (/**/video3dllm)
# Launch arguments that override the node parameter of the same name when not empty.
PARAMETER_ARGUMENTS = ("model_path", "device", "rgb_topic", "depth_topic", "info_topic")
# Node outputs shown in config/video3dllm.rviz as /video3dllm/<name> (remapped for a namespace).
RVIZ_OUTPUTS = ("markers", "coverage", "keyframes")
# The colour topic config/video3dllm.rviz shows: the node's default rgb_topic (remapped to rgb_topic).
RVIZ_IMAGE_TOPIC = next(p.default for p in PARAMETERS if p.name == "rgb_topic")


def _flag(context, name):
    """A boolean launch argument as bool ('true'/'false'/'1'/'0', as IfCondition reads them)."""
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"launch argument {name} must be true or false, got {value!r}")


def _absolute(topic, namespace):
    """The fully qualified name a node in `namespace` gives `topic` (relative names get the namespace)."""
    return topic if topic.startswith("/") else f"{namespace}/{topic}"


def _launch_setup(context, *args, **kwargs):
    """The node and (rviz:=true) RViz, from the evaluated launch arguments."""
    namespace = LaunchConfiguration("namespace").perform(context).strip().strip("/")
    use_sim_time = _flag(context, "use_sim_time")
    overrides = {"use_sim_time": use_sim_time}
    for name in PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    actions = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=namespace or None,  # None: the enclosing PushRosNamespace, if any
            output="screen",
            emulate_tty=True,
            # the file first, then the overrides (the last definition of a parameter wins)
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
        )
    ]
    if _flag(context, "rviz"):
        prefix = f"/{namespace}" if namespace else ""
        remappings = [(f"/{NODE_NAME}/{name}", f"{prefix}/{NODE_NAME}/{name}")
                      for name in RVIZ_OUTPUTS if prefix]
        if "rgb_topic" in overrides:
            remappings.append((RVIZ_IMAGE_TOPIC, _absolute(overrides["rgb_topic"], prefix)))
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                output="screen",
                arguments=["-d", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "video3dllm.rviz"])],
                parameters=[{"use_sim_time": use_sim_time}],
                remappings=remappings,
            )
        )
    return actions


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "video3dllm.yaml"]),
                              description="Parameter file of video3dllm_node"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Video-3D LLM checkpoint folder (empty: the value in params_file)"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device such as cuda:0 (empty: the value in params_file)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="ROS namespace of the node (outputs: /<namespace>/video3dllm/...)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (true when playing a bag with --clock)"),
        DeclareLaunchArgument("rgb_topic", default_value="",
                              description="Colour image topic (empty: the value in params_file)"),
        DeclareLaunchArgument("depth_topic", default_value="",
                              description="Depth image topic, registered to colour (empty: the value in params_file)"),
        DeclareLaunchArgument("info_topic", default_value="",
                              description="CameraInfo of the depth image (empty: the value in params_file)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start RViz with config/video3dllm.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the node"),
        OpaqueFunction(function=_launch_setup),
    ])
