"""Replay / demo outputs: answers.jsonl, summary.json, an HTML report with PNG plots, an RViz markers bag.

Everything here works on plain, JSON-ready data so that a report can be rebuilt from the files
of an earlier run, and so that it can be tested without a model:

    answer rows   one dict per query, the answers.jsonl line: `Answer.to_dict()` plus `index`,
                  `at_s`, `asked_at_s`, `stamp_ns`, `frames_seen`, `latency_s`,
                  `requested_task`, `target`, `situation` and, in the demo, `ground_truth`
                  (list of {label, center_xyz, size_xyz}) and a per-object `iou`
    summary       the summary.json dict made by `replay.build_summary`

Files written by `write_report(out_dir, ...)`:

    report.html    self-contained page (relative PNG links): run summary, answers table,
                   latency table, the three figures
    birdseye.png   top view of the scene voxels seen (coloured by height), keyframe camera poses
                   (arrows), grounded boxes (coloured rectangles labelled "Q<index>"), ground truth
                   (dashed, demo only), caption targets (x)
    coverage.png   voxels seen and frames added over stream time, each query's keyframe
                   coverage as a dot at the time it was asked
    latency.png    histogram of each query stage's latency (ms), one panel per stage that ran

`write_markers_bag` writes each answer as the visualization_msgs/msg/MarkerArray the ROS node
publishes for it into a rosbag2 (MCAP), so the answers can be played next to the recording in RViz.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from video3dllm_core.answer import Answer

__all__ = [
    "STAGES",
    "latency_stats",
    "write_jsonl",
    "read_jsonl",
    "write_json",
    "write_report",
    "plot_birdseye",
    "top_view_corners",
    "plot_coverage",
    "plot_latency",
    "write_markers_bag",
]

# Timings fields of an Answer, in pipeline order (total_s last).
STAGES = ("selection_s", "vision_s", "proposals_s", "prefill_s", "decode_s", "grounding_s", "total_s")
MAX_PLOT_POINTS = 80_000
_PALETTE = (
    (0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
)  # matplotlib tab10


def query_colour(index: int) -> tuple[float, float, float]:
    """The colour of query `index` in every figure (tab10, cycling)."""
    return _PALETTE[index % len(_PALETTE)]


CORRECT_IOU = 0.25
"""A grounded box counts as correct when its 3D IoU with a ground-truth box reaches this (Acc@0.25)."""


def correctness_mark(obj: dict[str, Any]) -> str:
    """" (correct)" / " (wrong)" for an object row that carries its best IoU with the truth, else ""."""
    if obj.get("iou") is None:
        return ""
    return " (correct)" if float(obj["iou"]) >= CORRECT_IOU else " (wrong)"


# ---------------------------------------------------------------------------------------------- data


def latency_stats(rows: Iterable[dict[str, Any]], stages: Sequence[str] = STAGES) -> dict[str, dict[str, float]]:
    """p50 / p90 / max (seconds) and count per stage over the successful queries.

    A stage a task does not run (timing 0, e.g. grounding for a QA question) does not count
    towards that stage, so "grounding p50" is the latency of the queries that grounded. The
    end-to-end `latency_s` of each row (queueing included) is reported as stage "end_to_end_s".
    """
    ok = [r for r in rows if r.get("ok", r.get("error") is None)]
    out: dict[str, dict[str, float]] = {}
    columns: dict[str, list[float]] = {s: [float(r.get("timings", {}).get(s, 0.0)) for r in ok] for s in stages}
    columns["end_to_end_s"] = [float(r["latency_s"]) for r in ok if r.get("latency_s") is not None]
    for stage, values in columns.items():
        ran = np.asarray([v for v in values if v > 0], dtype=np.float64)
        if ran.size == 0:
            continue
        out[stage] = {
            "p50": float(np.percentile(ran, 50)),
            "p90": float(np.percentile(ran, 90)),
            "max": float(ran.max()),
            "n": int(ran.size),
        }
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One compact JSON object per line (numpy values converted)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=_json_default) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- figures


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # Agg: no display needed, no global pyplot state
    return fig


def top_view_corners(center_xy: Sequence[float], size_xy: Sequence[float], yaw_rad: float) -> np.ndarray:
    """[4, 2] corners (counter-clockwise) of a box's footprint: extents size_xy along its own axes, turned by
    yaw_rad about up around center_xy."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    half = np.asarray(size_xy, dtype=np.float64) / 2
    local = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * half
    return np.asarray(center_xy, dtype=np.float64) + local @ np.array([[c, s], [-s, c]])


def plot_birdseye(
    path: str | Path,
    points_xyz: np.ndarray,
    keyframe_poses: Sequence[np.ndarray],
    rows: Sequence[dict[str, Any]],
    title: str = "",
) -> Path:
    """Top view: scene points by height, keyframe poses, grounded / ground-truth boxes, caption targets.

    A grounded object with a tight box (`box_size_xyz`, `yaw_rad`: the engine's scene frame turned onto a
    room's walls) is drawn turned; truth boxes and axis-aligned answers as rectangles."""
    from matplotlib.patches import Polygon, Rectangle

    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    if len(pts) > MAX_PLOT_POINTS:
        pts = pts[np.random.default_rng(0).choice(len(pts), MAX_PLOT_POINTS, replace=False)]
    pts = pts[np.argsort(pts[:, 2])]  # higher points drawn last, as seen from above
    fig = _figure((9, 8))
    ax = fig.subplots()
    extent: list[np.ndarray] = []
    if len(pts):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=pts[:, 2], s=5.0, marker="s", cmap="viridis", linewidths=0,
                        rasterized=True)
        fig.colorbar(sc, ax=ax, shrink=0.7, label="height z [m]")
        extent.append(pts[:, :2])
    poses = [np.asarray(T, dtype=np.float64) for T in keyframe_poses]
    if poses:
        pos = np.stack([T[:3, 3] for T in poses])
        fwd = np.stack([T[:3, 2] for T in poses])  # optical z axis: the viewing direction
        ax.quiver(pos[:, 0], pos[:, 1], fwd[:, 0], fwd[:, 1], color="red", angles="xy", scale_units="xy",
                  scale=2.5, width=0.004, label=f"keyframes ({len(poses)})")
        ax.plot(pos[:, 0], pos[:, 1], "o", color="red", ms=3)
        extent.append(pos[:, :2])
    drawn_gt: set[tuple[float, ...]] = set()
    box_queries: dict[tuple[float, ...], list[tuple[int, str]]] = {}  # identical boxes of several queries: one label
    for row in rows:
        index = int(row.get("index", 0))
        colour = query_colour(index)
        for gt in row.get("ground_truth") or []:
            key = tuple(map(float, list(gt["center_xyz"]) + list(gt["size_xyz"])))
            if key in drawn_gt:
                continue
            drawn_gt.add(key)
            (cx, cy, _), (sx, sy, _) = gt["center_xyz"], gt["size_xyz"]
            ax.add_patch(Rectangle((cx - sx / 2, cy - sy / 2), sx, sy, fill=False, lw=1.0, ls="--", ec="black"))
            ax.text(cx, cy - sy / 2, gt.get("label", ""), fontsize=7, ha="center", va="top", color="black")
        for obj in row.get("objects") or []:
            size = obj.get("box_size_xyz") or obj["size_xyz"]
            key = tuple(round(float(v), 4) for v in [*obj["center_xyz"], *size, float(obj.get("yaw_rad") or 0.0)])
            box_queries.setdefault(key, []).append((index, correctness_mark(obj)))
        target = row.get("target")
        if target is not None:
            ax.plot([target[0]], [target[1]], "x", color=colour, ms=9, mew=2)
            ax.text(target[0], target[1], f" Q{index} target", fontsize=7, color=colour)
    for key, marks in box_queries.items():
        cx, cy, _, sx, sy, _, yaw = key
        colour = query_colour(marks[0][0])
        corners = top_view_corners((cx, cy), (sx, sy), yaw)
        ax.add_patch(Polygon(corners, closed=True, fill=False, lw=1.8, ec=colour))
        left, top = corners[:, 0].min(), corners[:, 1].max()
        ax.text(left, top, ",".join(f"Q{i}{mark}" for i, mark in marks), fontsize=8, ha="left",
                va="bottom", color=colour, fontweight="bold")
        extent.append(corners)
    if extent:
        all_xy = np.concatenate(extent)
        lo, hi = all_xy.min(axis=0) - 0.3, all_xy.max(axis=0) + 0.3
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x [m] (world frame)")
    ax.set_ylabel("y [m] (world frame)")
    if poses:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "scene seen (top view)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_coverage(path: str | Path, summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Path:
    """Top: voxels seen and frames added over stream time. Bottom: each query's keyframe coverage."""
    series = summary.get("coverage_series") or {}
    t = np.asarray(series.get("t_s", []), dtype=np.float64)
    fig = _figure((9, 6))
    ax, axq = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    if t.size:
        ax.plot(t, series["voxels"], "-", color="tab:blue")
    ax.set_ylabel("voxels seen", color="tab:blue")
    ax2 = ax.twinx()
    if t.size:
        ax2.plot(t, series["frames"], "--", color="0.45", lw=1.0)
    ax2.set_ylabel("frames added (dashed)", color="0.35")
    ax.set_title("scene coverage over stream time", fontsize=10)
    for row in rows:
        asked = row.get("asked_at_s")
        if asked is None:
            continue
        index = int(row.get("index", 0))
        colour = query_colour(index)
        for a in (ax, axq):
            a.axvline(asked, color=colour, lw=0.8, ls=":")
        if row.get("ok", row.get("error") is None):
            axq.plot([asked], [100.0 * float(row.get("coverage", 0.0))], "o", color=colour, ms=6)
            axq.annotate(f"Q{index}", (asked, 100.0 * float(row.get("coverage", 0.0))), fontsize=7, color=colour,
                         xytext=(3, 3), textcoords="offset points")
        else:
            axq.plot([asked], [0.0], "x", color=colour, ms=6)
    axq.set_ylim(-5, 110)
    axq.set_ylabel("keyframe\ncoverage [%]")
    axq.set_xlabel("stream time [s] after the first frame (x: failed query)")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_latency(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """One histogram (milliseconds) per query stage that ran in at least one successful query."""
    ok = [r for r in rows if r.get("ok", r.get("error") is None)]
    data = {s: [1e3 * float(r["timings"].get(s, 0.0)) for r in ok if float(r["timings"].get(s, 0.0)) > 0] for s in STAGES}
    data = {s: v for s, v in data.items() if v}
    n = max(len(data), 1)
    cols = min(n, 4)
    nrows = (n + cols - 1) // cols
    fig = _figure((3.2 * cols, 2.8 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, (stage, values) in zip(axes, data.items()):
        ax.hist(values, bins=min(20, max(3, len(values))), color="tab:blue", edgecolor="white")
        ax.set_title(f"{stage[:-2]} (n={len(values)}, p50 {np.median(values):.0f} ms)", fontsize=9)
        ax.set_xlabel("ms")
    for ax in axes[len(data):]:
        ax.axis("off")
    if not data:
        axes[0].text(0.5, 0.5, "no successful query", ha="center", va="center")
    fig.suptitle("query latency per stage", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# ---------------------------------------------------------------------------------------------- HTML


def _fmt_vec(v: Sequence[float] | None) -> str:
    return "-" if v is None else "(" + ", ".join(f"{float(x):.2f}" for x in v) + ")"


def _objects_html(row: dict[str, Any]) -> str:
    parts = []
    for obj in row.get("objects") or []:
        text = f"c {_fmt_vec(obj['center_xyz'])} s {_fmt_vec(obj['size_xyz'])} score {float(obj.get('score', 0)):.2f}"
        if obj.get("label"):
            text = f"{obj['label']}: " + text
        if obj.get("iou") is not None:
            text += f" IoU {float(obj['iou']):.2f}{correctness_mark(obj)}"
        parts.append(html.escape(text))
    for gt in row.get("ground_truth") or []:
        parts.append(
            "<i>truth " + html.escape(f"{gt.get('label', '')}: c {_fmt_vec(gt['center_xyz'])} s {_fmt_vec(gt['size_xyz'])}")
            + "</i>"
        )
    return "<br>".join(parts) or "-"


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in r) + "</tr>" for r in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    frames = summary.get("frames", {})
    ingest = summary.get("ingest", {})
    memory = summary.get("memory", {})
    queries = summary.get("queries", {})

    def dropped(d: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) or "none"

    rows = [
        ("source", str(summary.get("source", "-"))),
        ("rate", str(summary.get("rate", "-"))),
        ("frames read / added", f"{frames.get('read', '-')} / {frames.get('added', '-')}"),
        ("dropped by the source", dropped(frames.get("dropped_by_source", {}))),
        ("dropped by the engine", dropped(frames.get("dropped_by_engine", {}))),
        ("stream duration", f"{frames.get('duration_s', 0.0):.2f} s"),
        ("ingest rate (engine.add_frame)", f"{ingest.get('rate_fps', 0.0):.1f} frames/s"),
        ("stream rate (decode + add_frame)", f"{ingest.get('stream_rate_fps', 0.0):.1f} frames/s"),
        ("queries ok / failed", f"{queries.get('ok', 0)} / {queries.get('failed', 0)}"),
        ("peak RSS", f"{memory.get('max_rss_bytes', 0) / 2**20:.0f} MiB"),
        ("engine pool (end / peak)",
         f"{memory.get('pool_bytes', 0) / 2**20:.1f} / {memory.get('pool_bytes_peak', 0) / 2**20:.1f} MiB"),
        ("wall time", f"{summary.get('wall_s', 0.0):.2f} s"),
    ]
    if ingest.get("max_lag_s") is not None:
        rows.insert(8, ("max ingest lag behind the recording", f"{ingest['max_lag_s']:.3f} s"))
    return rows


def _html(title: str, summary: dict[str, Any], rows: Sequence[dict[str, Any]], images: dict[str, str],
          notes: Sequence[str]) -> str:
    answer_rows = []
    for r in rows:
        at = r.get("at_s")
        when = "end" if at is None else f"{float(at):.2f}"
        text = html.escape(str(r.get("text", "")))
        if r.get("error"):
            text = f"<b class='err'>error:</b> {html.escape(str(r['error']))}"
        if r.get("warnings"):
            text += "<br><small>" + html.escape("; ".join(map(str, r["warnings"]))) + "</small>"
        task = html.escape(str(r.get("task", "")))
        if r.get("requested_task") and r["requested_task"] != r.get("task"):
            task += f" <small>({html.escape(str(r['requested_task']))})</small>"
        question = html.escape(str(r.get("question", "")))
        if r.get("situation"):
            question = f"<small>{html.escape(str(r['situation']))}</small><br>" + question
        answer_rows.append([
            f"Q{r.get('index', '')}", when, task, question, text, _objects_html(r),
            f"{len(r.get('keyframe_stamps_ns') or [])} ({100 * float(r.get('coverage', 0.0)):.0f} %)",
            str(r.get("frames_seen", "-")),
            f"{1e3 * float(r.get('timings', {}).get('total_s', 0.0)):.0f}",
        ])
    latency = summary.get("latency_s") or latency_stats(rows)
    lat_rows = [[html.escape(s[:-2] if s.endswith("_s") else s), str(v["n"]), f"{1e3 * v['p50']:.1f}",
                 f"{1e3 * v['p90']:.1f}", f"{1e3 * v['max']:.1f}"] for s, v in latency.items()]
    note_html = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    imgs = "".join(
        f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'><figcaption>{html.escape(alt)}</figcaption></figure>"
        for alt, src in images.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #bbb; padding: 3px 6px; vertical-align: top; text-align: left; }}
th {{ background: #eee; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
figure {{ margin: 0 0 1.5em; }}
.err {{ color: #b00; }} .note {{ background: #fff4d6; padding: 0.5em; border-left: 4px solid #e0a800; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{note_html}
<h2>Run</h2>
{_table(["", ""], [[html.escape(k), html.escape(v)] for k, v in _summary_rows(summary)])}
<h2>Answers</h2>
{_table(["#", "at [s]", "task", "question", "answer", "objects (world frame, m)", "keyframes (coverage)", "frames seen", "latency [ms]"], answer_rows)}
<h2>Latency per stage (successful queries)</h2>
{_table(["stage", "n", "p50 [ms]", "p90 [ms]", "max [ms]"], lat_rows)}
<h2>Figures</h2>
{imgs}
<p><small>Files: answers.jsonl (one JSON object per query), summary.json (this run's numbers).</small></p>
</body></html>
"""


def write_report(
    out_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    points_xyz: np.ndarray,
    keyframe_poses: Sequence[np.ndarray],
    title: str = "video3dllm replay report",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write report.html and its three PNGs into `out_dir`; returns {name: path}.

    `points_xyz` are the scene's points to draw (the engine's `coverage_points()`),
    `keyframe_poses` the T_world_cam of the keyframes to draw (the engine's current selection).
    `notes` are shown as highlighted paragraphs at the top (e.g. "untrained model").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "birdseye": plot_birdseye(out / "birdseye.png", points_xyz, keyframe_poses, rows, title),
        "coverage": plot_coverage(out / "coverage.png", summary, rows),
        "latency": plot_latency(out / "latency.png", rows),
    }
    images = {
        "Top view: scene voxels seen, keyframe poses (red arrows), grounded boxes per query": "birdseye.png",
        "Coverage over stream time": "coverage.png",
        "Query latency per stage": "latency.png",
    }
    page = out / "report.html"
    page.write_text(_html(title, summary, rows, images, notes), encoding="utf-8")
    files["html"] = page
    return files


# ---------------------------------------------------------------------------------------------- markers


def write_markers_bag(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    world_frame: str,
    topic: str = "/video3dllm/markers",
    lifetime_s: float = 0.0,
) -> int:
    """Write each answer row as the MarkerArray the node publishes for it into a new rosbag2 (MCAP).

    The markers are built by `video3dllm_ros.convert.answer_to_marker_array` (the node's own
    function, here with `rosbags` messages), so playing the bag shows exactly what the live node
    shows: per answer a DELETEALL (clearing the previous answer's boxes, as a QA answer or a
    failed query does live), then per object the box edges (LINE_LIST), a translucent CUBE and a
    label with score (the best object's also carries the answer text). One message per row, in
    row order, stamped (header and log time) with the row's `stamp_ns` (the bag time the query
    was asked), in `world_frame`; the rows are answers.jsonl dicts (`Answer.from_dict`). Returns
    the number of messages written. The bag must not exist yet (rosbag2 never overwrites).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    # Imported here: video3dllm_ros.convert / .factory import no rclpy or message package, only
    # the core and numpy; the typestore factory builds rosbags dataclasses.
    from video3dllm_ros.convert import answer_to_marker_array
    from video3dllm_ros.factory import TypestoreFactory

    out = Path(path)
    if out.exists():
        raise FileExistsError(f"markers bag {out} already exists; rosbag2 writers never overwrite, choose a new path")
    answers = []
    for i, row in enumerate(rows):
        if "stamp_ns" not in row:
            raise ValueError(f"answer row {i} lacks 'stamp_ns' (the bag time the query was asked)")
        try:
            answers.append((int(row["stamp_ns"]), Answer.from_dict(row)))
        except ValueError as exc:
            raise ValueError(f"answer row {i}: {exc}") from None
    ts = get_typestore(Stores.ROS2_JAZZY)
    factory = TypestoreFactory(ts)
    msgtype = "visualization_msgs/msg/MarkerArray"
    with Writer(out, version=8, storage_plugin=StoragePlugin.MCAP) as writer:  # type: ignore[arg-type]
        conn = writer.add_connection(topic, msgtype, typestore=ts)
        for stamp, answer in answers:
            msg = answer_to_marker_array(factory, answer, world_frame, stamp, lifetime_s=lifetime_s)
            writer.write(conn, stamp, ts.serialize_cdr(msg, msgtype))
    return len(answers)
