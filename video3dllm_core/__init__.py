"""Video-3D LLM core: RGB-D ingestion, keyframes, model and engine, without any ROS dependency."""

__version__ = "0.1.0"
