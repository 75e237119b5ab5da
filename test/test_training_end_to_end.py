"""End to end on synthetic data, through the command line: make-benchmark -> train -> reload -> eval.

A tiny model (the parity fixture's checkpoint) is trained for 200 steps on CPU on a synthetic
five-task benchmark; the loss must fall clearly, the checkpoint must load with
`Video3DLLM.from_pretrained`, and `video3dllm eval` must produce answers and metrics for every task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from video3dllm_core.cli import main as cli_main
from video3dllm_core.model import Video3DLLM

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"
FILES = {"scanqa": "scanqa", "sqa3d": "sqa3d", "scan2cap": "scan2cap", "scanrefer": "scanrefer_vg", "multi3drefer": "multi3drefer"}


@pytest.mark.slow
def test_train_then_evaluate_on_the_synthetic_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    bench = tmp_path / "bench"
    assert cli_main(["make-benchmark", str(bench), "--scenes", "6", "--seed", "1", "--frames", "12", "--width", "96",
                     "--height", "72"]) == 0
    meta = bench / "metadata"
    out = tmp_path / "run"
    t_train = time.perf_counter()
    assert cli_main([
        "train", "--model", str(CKPT), "--data", str(bench / "multi.yaml"), "--posed-images", str(bench / "posed_images"),
        "--boxes", str(meta / "scannet_train_gt_box.json"), "--frames-file", str(meta / "scannet_select_frames.json"),
        "--frame-strategy", "mc", "--frames-upbound", "2", "--batch-size", "2", "--max-steps", "200", "--lr", "2e-3",
        "--no-tune-vision-tower", "--warmup-ratio", "0.05", "--output", str(out), "--log-steps", "1", "--save-steps", "100",
        "--save-total-limit", "1", "--seed", "0",
    ]) == 0
    t_train = time.perf_counter() - t_train
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([r["loss"] for r in records])
    assert [r["step"] for r in records] == list(range(1, 201))
    first, last = losses[:10].mean(), losses[-50:].mean()
    assert last < 0.4 * first, (first, last)
    lm = [r["lm_loss"] for r in records if "lm_loss" in r]
    ground = [r["ground_loss"] for r in records if "ground_loss" in r]
    assert np.mean(lm[-30:]) < 0.3 * np.mean(lm[:5]) and np.mean(ground[-30:]) < np.mean(ground[:5])
    ckpt = out / "checkpoint-200"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-200"]  # save_total_limit 1
    model = Video3DLLM.from_pretrained(ckpt, device="cpu", dtype=torch.float32)
    assert model.ground_head is not None and model.tokenizer is not None
    assert model.config.raw["frames_upbound"] == 2  # the engine's default keyframe budget for this checkpoint
    capsys.readouterr()

    t_eval = time.perf_counter()
    summaries = {}
    for task, stem in FILES.items():
        args = ["eval", task, "--model", str(ckpt), "--annotations", str(bench / "processed" / f"{stem}_val_llava_style.json"),
                "--scans", str(bench / "posed_images"), "--answers", str(tmp_path / "answers" / f"{task}.jsonl"),
                "--frames-file", str(meta / "scannet_select_frames.json"), "--frame-strategy", "mc", "--frames-upbound", "2",
                "--max-new-tokens", "6", "--boxes", str(meta / "scannet_val_pred_box.json")]
        if task != "scan2cap":
            args.append("--no-meteor")
        assert cli_main(args) == 0, task
        summaries[task] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (tmp_path / "answers" / f"{task}.metrics.json").is_file()
    t_eval = time.perf_counter() - t_eval
    val = json.loads((bench / "benchmark.json").read_text())["counts"]["val"]
    for task, summary in summaries.items():  # every validation question answered (ScanQA here: one answer each)
        assert summary["questions"] == summary["answered"] == val[task], task
    assert set(summaries["scanrefer"]["metrics"]["all"]) == {"acc@0.25", "acc@0.5", "count"}
    assert set(summaries["multi3drefer"]["metrics"]["all"]) == {"f1@0.25", "f1@0.5", "count"}
    assert {"cider", "bleu4", "meteor", "rouge_l", "localised"} <= set(summaries["scan2cap"]["metrics"])
    assert {"em", "cider"} <= set(summaries["scanqa"]["metrics"]) and "all" in summaries["sqa3d"]["metrics"]["em"]
    # grounding answers are candidate (detector) boxes of the question's scene
    pred_boxes = {k: np.asarray(v) for k, v in json.loads((meta / "scannet_val_pred_box.json").read_text()).items()}
    for line in (tmp_path / "answers" / "scanrefer.jsonl").read_text().splitlines():
        rec = json.loads(line)
        np.testing.assert_allclose(rec["pred_response"], pred_boxes[f"scannet/{rec['scene_id']}"][rec["pred_index"]])
    print(json.dumps({"train_s": round(t_train, 1), "eval_s": round(t_eval, 1), "total_s": round(time.perf_counter() - t0, 1),
                      "first_loss": round(float(first), 3), "last_loss": round(float(last), 3),
                      "metrics": {k: v["metrics"] for k, v in summaries.items()}}))
