"""pip entry for the Python code of the `video3dllm` ROS package (core, ROS shell, training).

On a ROS machine colcon builds the same code through CMakeLists.txt; on machines without ROS
`pip install -e .` gives the library and the `video3dllm` command.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# `training/` is installed as the package `video3dllm_training`.
training_packages = ["video3dllm_training"] + [
    "video3dllm_training." + name for name in find_packages(where="training")
]

setup(
    name="video3dllm",
    version="0.1.0",
    description="Video-3D LLM as a ROS 2 perception component: online keyframes, grounding, QA",
    python_requires=">=3.10",
    packages=find_packages(include=["video3dllm_core", "video3dllm_core.*", "video3dllm_ros", "video3dllm_ros.*"])
    + training_packages,
    package_dir={"video3dllm_training": "training"},
    # The embedded default model's config, tokenizer and vision-tower config (no weights; ~60 KB).
    package_data={"video3dllm_core.default_model": ["*.json", "*.safetensors", "*/config.json"]},
    install_requires=requirements(),
    entry_points={
        "console_scripts": [
            "video3dllm = video3dllm_core.cli:main",
            # The ROS 2 node (needs rclpy); on a ROS machine `ros2 run video3dllm video3dllm_node`.
            "video3dllm_node = video3dllm_ros.node:main",
        ]
    },
)
