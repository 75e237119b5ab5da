"""Answer.to_dict / Answer.from_dict: a lossless round trip through JSON (answers.jsonl rows)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from video3dllm_core.answer import Answer, GroundedObject, Timings


def _full_answer() -> Answer:
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = (20.125, -12.5, 1.4)
    return Answer(
        question="Where is the chair?",
        task="ground",
        text="",
        objects=(GroundedObject((21.0, -11.0, 0.45), (0.5, 0.5, 0.9), 0.8125, "chair", 2),),
        keyframe_stamps_ns=(1_700_000_000_123_456_789, 1_700_000_001_000_000_000),
        keyframe_poses=(pose, np.eye(4)),
        coverage=0.91,
        timings=Timings(0.002, 0.3, 0.05, 0.4, 0.0, 0.01, 0.8),
        warnings=("scene extends to x=18.3 m",),
        error=None,
        cache_hit=True,
        candidates=(GroundedObject((21.0, -11.0, 0.45), (0.5, 0.5, 0.9), 0.8125, "chair", 2),
                    GroundedObject((19.0, -13.0, 0.2), (0.4, 0.4, 0.4), 0.1, "", 0),
                    GroundedObject((18.0, -12.0, 0.3), (0.53, 0.5, 0.6), 0.25, "", 1, (0.4, 0.3, 0.6), 0.5236)),
        no_object_score=-0.5,
        proposal_stamps_ns=(1_700_000_000_123_456_789, 1_700_000_000_500_000_000, 1_700_000_001_000_000_000),
    )


def _assert_same(a: Answer, b: Answer) -> None:
    """Field by field (numpy poses make dataclass == ambiguous), with the exact types."""
    for f in dataclasses.fields(Answer):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "keyframe_poses":
            assert isinstance(y, tuple) and len(x) == len(y)
            for p, q in zip(x, y):
                assert isinstance(q, np.ndarray) and q.dtype == np.float64
                np.testing.assert_array_equal(p, q)
        else:
            assert x == y, f.name
            assert type(x) is type(y), f.name


def test_round_trip_through_json() -> None:
    answer = _full_answer()
    row = json.loads(json.dumps(answer.to_dict()))
    back = Answer.from_dict(row)
    _assert_same(answer, back)
    assert isinstance(back.objects[0].center_xyz, tuple) and isinstance(back.keyframe_stamps_ns[0], int)
    assert back.to_dict() == answer.to_dict()
    # A failed answer with defaults only.
    failed = Answer("Describe this.", "caption", error="caption needs a target_xyz")
    again = Answer.from_dict(json.loads(json.dumps(failed.to_dict())))
    _assert_same(failed, again)
    assert not again.ok
    caption = Answer("Describe this.", "caption", text="a red box.", decoding="listener")
    assert Answer.from_dict(json.loads(json.dumps(caption.to_dict()))).decoding == "listener"


def test_replay_row_extras_are_ignored() -> None:
    row = _full_answer().to_dict()
    row.update(index=3, at_s=1.5, stamp_ns=5, latency_s=0.9, requested_task="auto", target=None, situation=None)
    row["objects"][0]["iou"] = 0.8
    row["timings"]["queue_s"] = 0.1  # a stage this version does not know
    _assert_same(Answer.from_dict(row), _full_answer())


def test_errors_name_the_field() -> None:
    row = _full_answer().to_dict()
    with pytest.raises(ValueError, match="lacks 'task'"):
        Answer.from_dict({k: v for k, v in row.items() if k != "task"})
    bad = json.loads(json.dumps(row))
    del bad["objects"][0]["size_xyz"]
    with pytest.raises(ValueError, match=r"objects\[0\] lacks 'size_xyz'"):
        Answer.from_dict(bad)
    bad = json.loads(json.dumps(row))
    bad["candidates"][1]["center_xyz"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"candidates\[1\]\.center_xyz must be 3 numbers"):
        Answer.from_dict(bad)
    bad = json.loads(json.dumps(row))
    bad["keyframe_poses"][1] = [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"keyframe_poses\[1\] must be a 4x4"):
        Answer.from_dict(bad)
    with pytest.raises(ValueError, match="must be a dict"):
        Answer.from_dict([row])  # type: ignore[arg-type]
