"""video3dllm_ros: the rclpy node and message <-> array conversion (a thin shell over the core)."""
