"""The one iterator interface shared by every frame source (posed-images directory, rosbag2, ...).

A source is an iterable of `PosedFrame`s in time order. Sources never raise on a single unusable
frame that real data is known to contain (ScanNet's invalid poses, a depth image with no valid
pixel, a frame without TF): they drop it and count it by reason in `stats`, so a run can report
how much of the input it actually used. Data that is malformed (an unreadable pose file, a missing
depth image) raises a clear error naming the file instead, because that is a broken input and not
a property of the recording.

`open_source(path)` picks the right class from what is on disk.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from video3dllm_core.frame import PosedFrame

__all__ = ["FrameSource", "SourceStats", "open_source", "is_rosbag_path", "is_posed_images_dir"]

# File suffixes of rosbag2 storage files that can be opened directly (without metadata.yaml).
ROSBAG_FILE_SUFFIXES = (".mcap", ".db3")


@dataclass
class SourceStats:
    """What a source yielded and what it dropped, by reason (e.g. "invalid_pose": 3)."""

    frames_yielded: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count `count` frames dropped for `reason` (a short snake_case key)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    @property
    def frames_dropped(self) -> int:
        return sum(self.dropped.values())

    def reset(self) -> None:
        self.frames_yielded = 0
        self.dropped.clear()

    def summary(self) -> str:
        """One line for logs, e.g. "118 frames, dropped 2 (invalid_pose: 2)"."""
        text = f"{self.frames_yielded} frames"
        if self.dropped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
            text += f", dropped {self.frames_dropped} ({reasons})"
        return text


class FrameSource(ABC):
    """Iterable of PosedFrame in time order, with drop statistics and a human description.

    Subclasses call `super().__init__()`, implement `_iter_frames()` (yield frames, call
    `self.stats.drop(reason)` for dropped ones) and `describe()`. Each new iteration starts the
    statistics afresh, so `stats` always describes the latest pass. Sources that hold files open
    override `close()`; every source is a context manager.
    """

    def __init__(self) -> None:
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[PosedFrame]:
        self.stats.reset()
        for frame in self._iter_frames():
            self.stats.frames_yielded += 1
            yield frame

    @abstractmethod
    def _iter_frames(self) -> Iterator[PosedFrame]:
        """Yield the usable frames; count the others with `self.stats.drop(reason)`."""

    @abstractmethod
    def describe(self) -> str:
        """One human-readable line: what is read, from where, with which options."""

    def close(self) -> None:
        """Release open files (no-op for sources that hold none)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def is_rosbag_path(path: Path) -> bool:
    """True for a rosbag2 directory (has metadata.yaml) or a bare .mcap / .db3 storage file."""
    if path.is_file():
        return path.suffix.lower() in ROSBAG_FILE_SUFFIXES
    return path.is_dir() and (path / "metadata.yaml").is_file()


def is_posed_images_dir(path: Path) -> bool:
    """True for a directory in the ScanNet posed-images layout (depth_intrinsic.txt or NNNNN.jpg)."""
    if not path.is_dir():
        return False
    if (path / "depth_intrinsic.txt").is_file():
        return True
    return any(p.stem.isdigit() for p in path.glob("*.jpg"))


def _check_options(cls: type, options: dict[str, Any], kind: str) -> None:
    """Turn an option the chosen source does not take into a clear ValueError (not a TypeError)."""
    params = inspect.signature(cls).parameters
    accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to a {kind}; "
            f"accepted options: {', '.join(a for a in accepted[1:]) or 'none'}"
        )


def open_source(path: str | Path, **options: Any) -> FrameSource:
    """Open `path` as the right FrameSource.

    - a rosbag2 (directory with metadata.yaml, or a .mcap / .db3 file) -> RosbagSource
      (options: rgb_topic, depth_topic, info_topic, world_frame, sync_slop_s, ...)
    - a ScanNet posed-images directory -> PosedImagesSource (options: use_axis_align, frame_stride)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist; pass a posed-images directory or a rosbag2")
    if is_rosbag_path(path):
        # Imported lazily: the rosbag reader pulls in rosbags, which posed-images users do not need.
        from video3dllm_core.sources.rosbag import RosbagSource

        _check_options(RosbagSource, options, "rosbag2")
        return RosbagSource(path, **options)
    if is_posed_images_dir(path):
        from video3dllm_core.sources.posed_images import PosedImagesSource

        _check_options(PosedImagesSource, options, "posed-images directory")
        return PosedImagesSource(path, **options)
    raise ValueError(
        f"cannot tell what {path} is: expected a rosbag2 (a directory with metadata.yaml, or a .mcap / .db3 "
        "file) or a posed-images directory (NNNNN.jpg colour, NNNNN.png depth in mm, NNNNN.txt pose, "
        "depth_intrinsic.txt)"
    )
