"""Frame sources: everything that yields PosedFrames (posed-images directories, rosbag2 files).

`open_source(path, **options)` picks the right one. `RosbagSource` is importable from here too,
but lazily, so that importing this package does not pull in the rosbag reader's dependencies.
"""

from __future__ import annotations

from typing import Any

from video3dllm_core.sources.base import FrameSource, SourceStats, is_posed_images_dir, is_rosbag_path, open_source
from video3dllm_core.sources.posed_images import PosedImagesSource, stamp_from_index, write_posed_images

__all__ = [
    "FrameSource",
    "SourceStats",
    "open_source",
    "is_rosbag_path",
    "is_posed_images_dir",
    "PosedImagesSource",
    "write_posed_images",
    "stamp_from_index",
    "RosbagSource",
]


def __getattr__(name: str) -> Any:
    if name == "RosbagSource":
        from video3dllm_core.sources.rosbag import RosbagSource

        return RosbagSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
