"""rosbag2 (MCAP or sqlite3) -> PosedFrames: colour + depth + camera_info, posed by /tf in world_frame.

What it reads (defaults: realsense-ros 4.x with `align_depth.enable:=true`, the names of
`bag_writer.SceneBagTopics`):

    rgb_topic     /camera/camera/color/image_raw                     Image or CompressedImage
                  (when left at the default and absent, .../image_raw/compressed is used)
    depth_topic   /camera/camera/aligned_depth_to_color/image_raw    Image 16UC1/32FC1 or compressedDepth
    info_topic    /camera/camera/aligned_depth_to_color/camera_info  CameraInfo of the depth image
    /tf, /tf_static                                                  tf2_msgs/TFMessage

How a frame is made:
  * colour and depth are paired by `sync.RgbdSynchronizer` (approximate time, `sync_slop_s`);
    camera_info is state: the latest one received is used (latched, slow or per-frame info all work);
  * the frame's stamp is the colour header stamp; its pose is T_world_cam = lookup(world_frame,
    camera frame, stamp), the camera frame being the depth image's header frame_id (the depth
    pixels are what gets unprojected, with the depth camera_info; for aligned depth it is the
    colour optical frame), falling back to the colour frame_id when depth has none;
  * dynamic TF is interpolated at the stamp (`tf_buffer.TfBuffer`, tf2 semantics).

Reading order and memory. /tf_static is read first in a separate pass (a few messages), so
static transforms are known whatever their position in the bag. Everything else is read once
in log-time order. A synchronised pair waits in a small pending queue until TF covering its
stamp has arrived (a lookup without extrapolation succeeds) or until the stream, measured by
the newest header stamp seen on any topic, is `tf_wait_s` past its stamp; then it is looked up
once more with `tf_tolerance_s` and yielded or dropped. Frames are yielded in stamp order: a
pair also waits while an older colour image is still queued for synchronisation. The pending
queue holds at most `max_pending` pairs (still-encoded messages); beyond that the oldest is
resolved at once. A pair that completes after a newer frame was already yielded (only possible
after such a forced release) is dropped as "unsynced", so the output stays in time order.

Dropped frames are counted in `stats.dropped` by reason: "unsynced" (no depth within slop),
"no_camera_info", "no_tf" (lookup failed: unknown frame, not connected, extrapolation), and
"invalid_frame" (camera_info size differs from the depth image, no valid depth, non-rigid pose).
`drop_examples` keeps the first message of each reason, for reports.

Errors (RosbagError, a ValueError): a path that is not a readable rosbag2, a missing topic (the
message lists the topics in the bag with their types), a topic of the wrong type, an empty bag,
undecodable images or uncalibrated intrinsics (naming topic and stamp), and a corrupt or truncated
bag (naming the file, the message index and the last topic read).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from video3dllm_core.bag_writer import SceneBagTopics  # one source of truth for the default names
from video3dllm_core.frame import FrameError, PosedFrame
from video3dllm_core.image_codec import (
    CameraInfoSizeError,
    ImageCodecError,
    decode_depth_m,
    decode_rgb,
    intrinsics_for_depth,
)
from video3dllm_core.sources.base import FrameSource
from video3dllm_core.sync import RgbdSet, RgbdSynchronizer
from video3dllm_core.tf_buffer import DEFAULT_CACHE_DURATION_S, TfBuffer, TransformError, stamp_to_ns

__all__ = ["RosbagSource", "RosbagError", "DEFAULT_RGB_TOPIC", "DEFAULT_DEPTH_TOPIC", "DEFAULT_INFO_TOPIC"]

DEFAULT_RGB_TOPIC = SceneBagTopics().rgb_topic
DEFAULT_DEPTH_TOPIC = SceneBagTopics().depth_topic
DEFAULT_INFO_TOPIC = SceneBagTopics().info_topic

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"
NS_PER_S = 1_000_000_000


class RosbagError(ValueError):
    """A bag that cannot be used as asked; the message names the file/topic and the fix."""


def _fmt_s(stamp_ns: int) -> str:
    return f"{stamp_ns / NS_PER_S:.6f} s"


class RosbagSource(FrameSource):
    """PosedFrames from a rosbag2 directory or a bare .mcap / .db3 file (see the module doc).

    Args:
        path: rosbag2 directory (with metadata.yaml) or storage file.
        rgb_topic, depth_topic, info_topic: topics (None = realsense-ros defaults).
        world_frame: TF frame the poses are expressed in (T_world_cam).
        sync_slop_s: largest colour/depth stamp difference of a pair.
        tf_wait_s: how far (stream time) to read past an image stamp waiting for its TF.
        tf_tolerance_s: extrapolation accepted in the final lookup (nearest sample held); 0 = tf2.
        tf_cache_s: TF history kept per edge (tf2 default 10 s).
        queue_size: synchroniser queue per stream.
        max_pending: synchronised pairs held waiting for TF at most.
        tf_topic, tf_static_topic: TF topics (namespaced robots: /robot1/tf ...).
    """

    def __init__(
        self,
        path: str | Path,
        rgb_topic: str | None = None,
        depth_topic: str | None = None,
        info_topic: str | None = None,
        world_frame: str = "map",
        sync_slop_s: float = 0.02,
        tf_wait_s: float = 0.5,
        tf_tolerance_s: float = 0.0,
        tf_cache_s: float = DEFAULT_CACHE_DURATION_S,
        queue_size: int = 10,
        max_pending: int = 32,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not sync_slop_s >= 0:
            raise ValueError(f"sync_slop_s must be >= 0 seconds, got {sync_slop_s}")
        if not tf_wait_s >= 0 or not tf_tolerance_s >= 0:
            raise ValueError(f"tf_wait_s and tf_tolerance_s must be >= 0 seconds, got {tf_wait_s}, {tf_tolerance_s}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.world_frame = world_frame.lstrip("/")
        self.sync_slop_s = float(sync_slop_s)
        self.tf_wait_ns = int(round(tf_wait_s * NS_PER_S))
        self.tf_tolerance_ns = int(round(tf_tolerance_s * NS_PER_S))
        self.tf_cache_s = float(tf_cache_s)
        self.queue_size = int(queue_size)
        self.max_pending = int(max_pending)
        self.tf_topic = tf_topic
        self.tf_static_topic = tf_static_topic
        self.drop_examples: dict[str, str] = {}
        self.tf_rejected = 0  # malformed transforms skipped (NaN, non-unit quaternion, ...)

        with self._open() as reader:
            topics = reader.topics
            if reader.message_count == 0 or not topics:
                raise RosbagError(f"bag {self.path} is empty: it holds no messages")
            self.topics: dict[str, tuple[str | None, int]] = {t: (i.msgtype, i.msgcount) for t, i in topics.items()}
            self.storage = self._storage_name()
        rgb_default = rgb_topic is None
        self.rgb_topic = rgb_topic or DEFAULT_RGB_TOPIC
        if rgb_default and self.rgb_topic not in self.topics and f"{self.rgb_topic}/compressed" in self.topics:
            self.rgb_topic = f"{self.rgb_topic}/compressed"
        self.depth_topic = depth_topic or DEFAULT_DEPTH_TOPIC
        self.info_topic = info_topic or DEFAULT_INFO_TOPIC
        if self.rgb_topic == self.depth_topic:
            raise RosbagError(f"rgb topic and depth topic are both '{self.rgb_topic}': pass the colour and the depth topic")
        self._check_topic(self.rgb_topic, "rgb topic (--rgb-topic)", (IMAGE_TYPE, COMPRESSED_TYPE))
        self._check_topic(self.depth_topic, "depth topic (--depth-topic)", (IMAGE_TYPE, COMPRESSED_TYPE))
        self._check_topic(self.info_topic, "camera_info topic (--info-topic)", (INFO_TYPE,))
        tf_topics = [t for t in (self.tf_topic, self.tf_static_topic) if t in self.topics]
        if not tf_topics:
            raise RosbagError(
                f"bag {self.path} has neither {self.tf_topic} nor {self.tf_static_topic}: camera poses in "
                f"'{self.world_frame}' cannot be resolved; record TF with the images. Topics in the bag: "
                f"{self._topic_list()}"
            )
        for t in tf_topics:
            self._check_topic(t, "TF topic", (TF_TYPE,))

    # ------------------------------------------------------------------ opening and checks
    def _storage_name(self) -> str:
        if self.path.is_file():
            return {".mcap": "mcap", ".db3": "sqlite3"}.get(self.path.suffix.lower(), self.path.suffix)
        for pattern, name in (("*.mcap", "mcap"), ("*.db3", "sqlite3")):
            if any(self.path.glob(pattern)):
                return name
        return "unknown"

    @contextmanager
    def _open(self) -> Iterator[Any]:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise RosbagError(
                f"{self.path} is not a rosbag2: the directory has no metadata.yaml; expected a rosbag2 directory "
                "(made by `ros2 bag record`) or a .mcap / .db3 storage file"
            )
        if self.path.is_file() and self.path.suffix.lower() not in (".mcap", ".db3"):
            raise RosbagError(
                f"{self.path} is not a rosbag2: expected a rosbag2 directory with metadata.yaml or a .mcap / .db3 file"
            )
        try:
            reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
            reader.open()
        except (FileNotFoundError, RosbagError):
            raise
        except Exception as exc:  # rosbags, apsw, yaml and zstd errors: all mean "cannot read this bag"
            hint = ""
            if any(f.suffix == ".mcap" for f in self._storage_files()) and "magic" in str(exc).lower():
                hint = " (an interrupted recording leaves a truncated MCAP file; `mcap recover` can salvage it)"
            raise RosbagError(
                f"cannot read {self.path} as a rosbag2: {self._files_text()}: {type(exc).__name__}: {exc}{hint}; "
                "the bag is corrupt, truncated or not a rosbag2 (expected a directory with metadata.yaml and "
                ".mcap/.db3 files, or one such file)"
            ) from None
        try:
            yield reader
        finally:
            try:
                reader.close()
            except Exception:  # closing a half-broken bag must not mask the real error
                pass

    def _storage_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in (".mcap", ".db3"))

    def _files_text(self) -> str:
        files = self._storage_files()
        if not files:
            return "no .mcap/.db3 storage file"
        return ", ".join(f"{f.name} ({f.stat().st_size} bytes)" for f in files)

    def _topic_list(self) -> str:
        return "; ".join(f"{t} [{ty}, {n} msgs]" for t, (ty, n) in sorted(self.topics.items()))

    def _check_topic(self, topic: str, role: str, types: tuple[str, ...]) -> None:
        if topic not in self.topics:
            similar = [t for t, (ty, _) in sorted(self.topics.items()) if ty in types]
            hint = f"; topics of type {' or '.join(types)}: {', '.join(similar)}" if similar else ""
            raise RosbagError(
                f"{role} '{topic}' is not in bag {self.path}{hint}. Topics in the bag: {self._topic_list()}"
            )
        msgtype, count = self.topics[topic]
        if msgtype not in types:
            raise RosbagError(f"{role} '{topic}' in bag {self.path} has type {msgtype}, expected {' or '.join(types)}")
        if count == 0:
            raise RosbagError(f"{role} '{topic}' in bag {self.path} has no messages")

    def describe(self) -> str:
        return (
            f"rosbag2 {self.path} ({self.storage}): rgb {self.rgb_topic}, depth {self.depth_topic}, "
            f"camera_info {self.info_topic}, poses in '{self.world_frame}' from {self.tf_topic} + "
            f"{self.tf_static_topic}, sync slop {self.sync_slop_s:.3f} s"
        )

    # ------------------------------------------------------------------ reading
    def _drop(self, reason: str, detail: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.stats.drop(reason, count)
        self.drop_examples.setdefault(reason, detail)

    def _read_messages(self, reader: Any, topics: list[str]) -> Iterator[tuple[int, str, int, Any]]:
        """(index, topic, log time, deserialised message) in log-time order; bag errors say where.

        `index` counts the messages of `topics` read so far (0-based), in log-time order.
        """
        connections = [c for c in reader.connections if c.topic in topics]
        messages = reader.messages(connections=connections)
        last = "none read yet"
        for index in itertools.count():
            try:
                item = next(messages, None)
            except Exception as exc:
                raise RosbagError(
                    f"bag {self.path} is corrupt or truncated: {self._files_text()}: reading {', '.join(topics)} "
                    f"failed at message #{index} (previous: {last}): {type(exc).__name__}: {exc}"
                ) from None
            if item is None:
                return
            conn, logtime, raw = item
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:
                raise RosbagError(
                    f"bag {self.path} is corrupt: {self._files_text()}: message #{index} on {conn.topic} "
                    f"(log time {_fmt_s(logtime)}, {conn.msgtype}) cannot be deserialised: {exc}"
                ) from None
            last = f"{conn.topic} at log time {_fmt_s(logtime)}"
            yield index, conn.topic, logtime, msg

    def _add_tf(self, buf: TfBuffer, msg: Any, static: bool) -> int:
        """Add a TFMessage transform by transform; malformed ones are skipped and counted. Returns the newest stamp."""
        newest = -1
        for ts in msg.transforms:
            stamp = stamp_to_ns(ts.header.stamp)
            tr, rot = ts.transform.translation, ts.transform.rotation
            try:
                buf.set_transform(
                    ts.header.frame_id, ts.child_frame_id, stamp, (tr.x, tr.y, tr.z), (rot.x, rot.y, rot.z, rot.w), static
                )
            except ValueError as exc:
                self.tf_rejected += 1
                self.drop_examples.setdefault("tf_rejected", str(exc))
                continue
            newest = max(newest, stamp)
        return newest

    def _iter_frames(self) -> Iterator[PosedFrame]:
        self.drop_examples.clear()
        self.tf_rejected = 0
        with self._open() as reader:
            buf = TfBuffer(cache_duration_s=self.tf_cache_s)
            if self.tf_static_topic in self.topics:
                for _, _, _, msg in self._read_messages(reader, [self.tf_static_topic]):
                    self._add_tf(buf, msg, static=True)
            sync = RgbdSynchronizer(self.sync_slop_s, self.queue_size)
            pending: list[tuple[int, int, RgbdSet]] = []  # heap by colour stamp
            seq = itertools.count()
            stream_ns = -(2**62)
            last_yielded = -(2**62)
            wanted = [self.rgb_topic, self.depth_topic, self.info_topic]
            if self.tf_topic in self.topics:
                wanted.append(self.tf_topic)
            for _, topic, _, msg in self._read_messages(reader, wanted):
                new: list[RgbdSet] = []
                if topic == self.tf_topic:
                    stamp = self._add_tf(buf, msg, static=False)
                elif topic == self.rgb_topic:
                    stamp = stamp_to_ns(msg.header.stamp)
                    new = sync.add_color(stamp, msg)
                elif topic == self.depth_topic:
                    stamp = stamp_to_ns(msg.header.stamp)
                    new = sync.add_depth(stamp, msg)
                else:
                    stamp = stamp_to_ns(msg.header.stamp)
                    new = sync.add_info(stamp, msg)
                stream_ns = max(stream_ns, stamp)
                for s in new:
                    if s.stamp_ns <= last_yielded:
                        self._drop("unsynced", f"pair at {_fmt_s(s.stamp_ns)} completed after newer frames were yielded")
                        continue
                    heapq.heappush(pending, (s.stamp_ns, next(seq), s))
                while pending:
                    head = pending[0][2]
                    forced = len(pending) > self.max_pending
                    if not forced:
                        older = sync.oldest_queued_color_stamp()
                        if older is not None and older < head.stamp_ns:
                            break  # an older colour image may still pair: keep time order
                        timed_out = stream_ns >= head.stamp_ns + self.tf_wait_ns
                        if not timed_out and not buf.can_transform(
                            self.world_frame, self._camera_frame(head), head.stamp_ns, tolerance_ns=0
                        ):
                            break
                    heapq.heappop(pending)
                    last_yielded = head.stamp_ns
                    frame = self._make_frame(head, buf)
                    if frame is not None:
                        yield frame
            sync.flush()
            while pending:
                _, _, head = heapq.heappop(pending)
                frame = self._make_frame(head, buf)
                if frame is not None:
                    yield frame
            self._drop("unsynced", "colour image without a depth image within the sync slop", sync.stats["unsynced"])
            self._drop("no_camera_info", f"no camera_info on {self.info_topic} before the end", sync.stats["no_camera_info"])

    @staticmethod
    def _camera_frame(s: RgbdSet) -> str:
        return str(s.depth.header.frame_id or s.color.header.frame_id)

    def _make_frame(self, s: RgbdSet, buf: TfBuffer) -> PosedFrame | None:
        camera_frame = self._camera_frame(s)
        if not camera_frame:
            self._drop("invalid_frame", f"frame at {_fmt_s(s.stamp_ns)}: colour and depth headers have no frame_id")
            return None
        try:
            T_world_cam = buf.lookup(self.world_frame, camera_frame, s.stamp_ns, tolerance_ns=self.tf_tolerance_ns)
        except TransformError as exc:
            self._drop("no_tf", str(exc))
            return None
        where = f"at stamp {_fmt_s(s.stamp_ns)}"
        try:
            rgb = decode_rgb(s.color)
        except ImageCodecError as exc:
            raise RosbagError(f"bag {self.path}: {self.rgb_topic} {where}: {exc}") from None
        try:
            depth_m = decode_depth_m(s.depth)
        except ImageCodecError as exc:
            raise RosbagError(f"bag {self.path}: {self.depth_topic} {where}: {exc}") from None
        try:
            K = intrinsics_for_depth(s.info, depth_m.shape, f"camera_info on {self.info_topic}")
        except CameraInfoSizeError as exc:  # another stream's camera_info: this frame is unusable
            self._drop("invalid_frame", f"frame {where}: {exc}")
            return None
        except ImageCodecError as exc:  # broken or uncalibrated K: every frame would be wrong
            raise RosbagError(f"bag {self.path}: {self.info_topic}: {exc}") from None
        try:
            return PosedFrame(stamp_ns=s.stamp_ns, rgb=rgb, depth_m=depth_m, K_depth=K, T_world_cam=T_world_cam)
        except FrameError as exc:
            self._drop("invalid_frame", f"frame {where}: {exc}")
            return None

    def read_all(self) -> list[PosedFrame]:
        """All frames as a list (convenience for tests and offline commands)."""
        return list(self)
