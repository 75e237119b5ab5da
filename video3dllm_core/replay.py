"""Drive a SceneEngine from a recording (rosbag2, posed-images, or any PosedFrame iterable).

The replay is the robot situation without a robot: frames arrive in time order and are handed
to `engine.add_frame` one by one; questions are asked *while* the stream runs, at the stream
time given in the query file (`at_s`, seconds after the first frame's stamp), or after the last
frame. Two pacings:

* ``rate="max"`` (default): frames are added as fast as they decode. A query with `at_s` is
  asked synchronously just before the first frame whose stream time is later than `at_s`, so it
  sees exactly the frames stamped at or before `at_s`: deterministic, and the fastest way to
  benchmark ingest and query latency separately.
* ``rate="recorded"``: frames are added at their recorded pace (the replay sleeps until each
  frame's stamp, measured from the first frame, on the wall clock). Queries run in one worker
  thread, submitted when the wall clock reaches their `at_s`, while the main thread keeps
  adding frames: this measures what a robot sees, namely query latency under ingest load and
  ingest lag under query load (`max_lag_s`: how far `add_frame` fell behind the recording).
  Queries are answered one after the other, like a single-threaded service server.

Queries with `at_s` past the last frame, and those without `at_s`, are asked after the last
frame (in file order, after the timed ones). Stream time 0 is the first frame the source yields
(for a bag, the first usable colour/depth pair, not the first TF message).

`replay(...)` returns a `ReplayResult`; `build_summary` turns it and the engine's statistics
into the summary.json dict; `write_outputs` writes answers.jsonl, summary.json and the HTML
report (see `report`).
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from video3dllm_core.answer import Answer
from video3dllm_core.frame import PosedFrame
from video3dllm_core.queries import QuerySpec

if TYPE_CHECKING:
    from video3dllm_core.engine import SceneEngine

__all__ = ["RATES", "QueryRecord", "ReplayResult", "replay", "build_summary", "write_outputs", "max_rss_bytes"]

RATES = ("max", "recorded")
NS_PER_S = 1_000_000_000
SERIES_MAX_POINTS = 1000  # coverage-over-time samples kept in summary.json (evenly thinned)


@dataclass
class QueryRecord:
    """One asked query: the file entry, the engine's answer and when / on how much it ran."""

    spec: QuerySpec
    answer: Answer
    asked_at_s: float  # stream time at which the query was asked (submitted)
    stamp_ns: int  # the same instant as a bag stamp (first frame stamp + asked_at_s)
    frames_seen: int  # frames the engine had accepted when the query started
    latency_s: float  # wall time from submission to answer (includes waiting for the worker)

    def to_dict(self) -> dict[str, Any]:
        """The answers.jsonl line: Answer.to_dict() plus the query file entry and the timing context."""
        row = self.answer.to_dict()
        row.update(
            index=self.spec.index,
            at_s=self.spec.at_s,
            requested_task=self.spec.task,
            target=list(self.spec.target_xyz) if self.spec.target_xyz is not None else None,
            situation=self.spec.situation,
            asked_at_s=self.asked_at_s,
            stamp_ns=self.stamp_ns,
            frames_seen=self.frames_seen,
            latency_s=self.latency_s,
        )
        return row


@dataclass
class ReplayResult:
    """What happened during one replay (see `build_summary` for the file form)."""

    rate: str
    records: list[QueryRecord]  # in query-file order
    frames_read: int = 0  # frames the source yielded
    frames_added: int = 0  # frames engine.add_frame accepted
    frames_rejected: int = 0  # frames engine.add_frame refused (counted by reason in the engine's stats)
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    read_s: float = 0.0  # time spent getting frames from the source (decode)
    add_s: float = 0.0  # time spent in engine.add_frame
    query_s: float = 0.0  # time the stream was paused for synchronous queries (max rate)
    wall_s: float = 0.0
    max_lag_s: float | None = None  # recorded rate: how far add_frame fell behind the recording
    pool_bytes_peak: int = 0
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (stream s, frames added, voxels seen)

    @property
    def duration_s(self) -> float:
        if self.first_stamp_ns is None or self.last_stamp_ns is None:
            return 0.0
        return (self.last_stamp_ns - self.first_stamp_ns) / NS_PER_S


def max_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _schedule(queries: Sequence[QuerySpec]) -> tuple[list[QuerySpec], list[QuerySpec]]:
    """(timed queries sorted by at_s then file order, untimed queries in file order)."""
    timed = sorted((q for q in queries if q.at_s is not None), key=lambda q: (q.at_s, q.index))
    return timed, [q for q in queries if q.at_s is None]


def _ask(engine: SceneEngine, spec: QuerySpec) -> Answer:
    return engine.query(spec.question, task=spec.task, target_xyz=spec.target_xyz, situation=spec.situation)


def replay(
    frames: Iterable[PosedFrame],
    engine: SceneEngine,
    queries: Sequence[QuerySpec],
    rate: str = "max",
    on_frame: Callable[[int], None] | None = None,
    on_answer: Callable[[QueryRecord], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """Stream `frames` into `engine` and ask `queries` at their stream times (see the module doc).

    `on_frame(frames_read)` is called after each frame (progress bars), `on_answer(record)`
    after each answer. `clock` / `sleep` pace the recorded rate (replaceable in tests).
    Never raises for a failed query: the engine returns an error Answer, which is recorded.
    """
    if rate not in RATES:
        raise ValueError(f"rate must be one of {', '.join(RATES)}, got {rate!r}")
    timed, untimed = _schedule(queries)
    result = ReplayResult(rate=rate, records=[])
    records: dict[int, QueryRecord] = {}
    lock = threading.Lock()
    frames_added = 0  # accepted frames, read by the worker thread for frames_seen

    def run_query(spec: QuerySpec, asked_at_s: float, submitted: float) -> None:
        seen = frames_added
        answer = _ask(engine, spec)
        origin = result.first_stamp_ns or 0
        record = QueryRecord(spec, answer, asked_at_s, origin + int(round(asked_at_s * NS_PER_S)), seen,
                             clock() - submitted)
        with lock:
            records[spec.index] = record
        if on_answer is not None:
            on_answer(record)

    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-query") if rate == "recorded" else None
    futures: list[Future[None]] = []

    def submit(spec: QuerySpec, asked_at_s: float) -> None:
        submitted = clock()
        if worker is not None:
            futures.append(worker.submit(run_query, spec, asked_at_s, submitted))
        else:
            run_query(spec, asked_at_s, submitted)
            result.query_s += clock() - submitted

    def sample(t_s: float) -> None:
        stats = engine.stats()
        result.series.append((t_s, frames_added, int(stats.voxels_total)))
        result.pool_bytes_peak = max(result.pool_bytes_peak, int(stats.pool_bytes))

    t_wall0 = clock()
    t_stream0: float | None = None  # wall time of stream time 0 (recorded rate)
    max_lag = 0.0
    t_s = 0.0
    pending = list(timed)
    iterator: Iterator[PosedFrame] = iter(frames)
    try:
        while True:
            t0 = clock()
            frame = next(iterator, None)
            result.read_s += clock() - t0
            if frame is None:
                break
            stamp = int(frame.stamp_ns)
            if result.first_stamp_ns is None:
                result.first_stamp_ns = stamp
                t_stream0 = clock()
            result.last_stamp_ns = stamp
            t_s = (stamp - result.first_stamp_ns) / NS_PER_S
            # Queries due before this frame: stream time has passed their at_s.
            while pending and pending[0].at_s is not None and pending[0].at_s < t_s:
                spec = pending.pop(0)
                assert spec.at_s is not None
                if rate == "recorded":
                    assert t_stream0 is not None
                    wait = t_stream0 + spec.at_s - clock()
                    if wait > 0:
                        sleep(wait)
                submit(spec, spec.at_s)
            if rate == "recorded":
                assert t_stream0 is not None
                wait = t_stream0 + t_s - clock()
                if wait > 0:
                    sleep(wait)
                else:
                    max_lag = max(max_lag, -wait)
            t0 = clock()
            accepted = engine.add_frame(frame)
            result.add_s += clock() - t0
            result.frames_read += 1
            if accepted:
                frames_added += 1
            else:
                result.frames_rejected += 1
            sample(t_s)
            if on_frame is not None:
                on_frame(result.frames_read)
        result.frames_added = frames_added
        # After the last frame: late timed queries (at their at_s order), then the untimed ones.
        for spec in pending + untimed:
            submit(spec, t_s)
        for fut in futures:
            fut.result()  # re-raises an unexpected exception of the worker
    finally:
        if worker is not None:
            worker.shutdown(wait=True)
    result.frames_added = frames_added
    result.max_lag_s = max_lag if rate == "recorded" else None
    result.records = [records[q.index] for q in sorted(queries, key=lambda q: q.index)]
    result.wall_s = clock() - t_wall0
    return result


def _thin(series: list[tuple[float, int, int]], n: int) -> list[tuple[float, int, int]]:
    if len(series) <= n:
        return series
    keep = np.unique(np.linspace(0, len(series) - 1, n).round().astype(int))
    return [series[i] for i in keep]


def _plain(value: Any) -> Any:
    """A dataclass (e.g. EngineConfig) as a JSON-ready dict; other values unchanged."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in asdict(value).items()}
    return value


def build_summary(
    result: ReplayResult,
    engine: SceneEngine,
    source: str,
    source_dropped: dict[str, int] | None = None,
    world_frame: str | None = None,
) -> dict[str, Any]:
    """The summary.json dict of a replay (field meanings in docs/replay.md)."""
    from video3dllm_core.report import latency_stats

    stats = engine.stats()
    rows = [r.to_dict() for r in result.records]
    ok = sum(1 for r in result.records if r.answer.ok)
    by_task: dict[str, int] = {}
    for r in result.records:
        by_task[r.answer.task] = by_task.get(r.answer.task, 0) + 1
    series = _thin(result.series, SERIES_MAX_POINTS)
    stream_s = result.read_s + result.add_s
    return {
        "source": source,
        "world_frame": world_frame,
        "rate": result.rate,
        "frames": {
            "read": result.frames_read,
            "added": result.frames_added,
            "dropped_by_source": dict(source_dropped or {}),
            "dropped_by_engine": {str(k): int(v) for k, v in dict(stats.frames_dropped).items()},
            "first_stamp_ns": result.first_stamp_ns,
            "last_stamp_ns": result.last_stamp_ns,
            "duration_s": result.duration_s,
        },
        "ingest": {
            "rate_fps": result.frames_read / result.add_s if result.add_s > 0 else 0.0,
            "stream_rate_fps": result.frames_read / stream_s if stream_s > 0 else 0.0,
            "engine_rate_hz": float(stats.ingest_rate_hz),
            "read_s": result.read_s,
            "add_s": result.add_s,
            "max_lag_s": result.max_lag_s,
        },
        "queries": {
            "count": len(result.records),
            "ok": ok,
            "failed": len(result.records) - ok,
            "by_task": by_task,
            "paused_stream_s": result.query_s,
        },
        "latency_s": latency_stats(rows),
        "memory": {
            "max_rss_bytes": max_rss_bytes(),
            "pool_bytes": int(stats.pool_bytes),
            "pool_bytes_peak": max(result.pool_bytes_peak, int(stats.pool_bytes)),
            "pool_size": int(stats.pool_size),
        },
        "coverage": {"voxels_total": int(stats.voxels_total), "last_keyframe_coverage": float(stats.last_coverage)},
        "coverage_series": {
            "t_s": [s[0] for s in series],
            "frames": [s[1] for s in series],
            "voxels": [s[2] for s in series],
        },
        "engine": _plain(getattr(engine, "config", None)),
        "wall_s": result.wall_s,
    }


def write_outputs(
    out_dir: str | Path,
    result: ReplayResult,
    engine: SceneEngine,
    summary: dict[str, Any],
    rows: list[dict[str, Any]] | None = None,
    title: str = "video3dllm replay report",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write answers.jsonl, summary.json and the report (report.html + PNGs) into `out_dir`.

    `rows` defaults to the records' `to_dict()`; the demo passes rows with ground truth added.
    """
    from video3dllm_core.report import write_json, write_jsonl, write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else [r.to_dict() for r in result.records]
    files = {
        "answers": write_jsonl(out / "answers.jsonl", rows),
        "summary": write_json(out / "summary.json", summary),
    }
    keyframes = [np.asarray(T) for _, T in engine.keyframe_poses()]
    files.update(write_report(out, rows, summary, engine.coverage_points(), keyframes, title=title, notes=notes))
    return files
