"""Trainer pieces: parameter groups, LoRA that keeps the grounding head, checkpoints in the upstream
layout (LoRA merged), resume, base-model initialisation, accelerate/DeepSpeed configs, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from video3dllm_core.cli import main as cli_main
from video3dllm_core.model import Video3DLLM
from video3dllm_training.init_model import UPSTREAM_3D_DEFAULTS, load_training_model
from video3dllm_training.synthetic_benchmark import make_benchmark
from video3dllm_training.trainer import (
    TrainConfig,
    apply_lora,
    configure_trainable,
    merged_state_dict,
    parameter_groups,
    save_model_checkpoint,
    train,
)

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "test" / "fixtures" / "reference_parity" / "checkpoint"
CONFIGS = REPO / "training" / "configs"


def _model() -> Video3DLLM:
    return Video3DLLM.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


def test_parameter_groups_follow_upstream_learning_rates() -> None:
    model = _model()
    configure_trainable(model, tune_vision_tower=True, tune_projector=True, tune_llm=True)
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-5, vision_lr=2e-6, head_lr=1e-4, weight_decay=0.1)}
    assert set(groups) == {"vision_tower", "vision_tower_no_decay", "projector", "projector_no_decay", "ground_head",
                           "ground_head_no_decay", "llm", "llm_no_decay"}
    assert groups["vision_tower"]["lr"] == 2e-6 and groups["projector"]["lr"] == 1e-5 and groups["ground_head"]["lr"] == 1e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["projector_no_decay"]["params"]} == {"image_newline", "mm_projector.0.bias", "mm_projector.2.bias"}
    assert groups["llm"]["weight_decay"] == 0.1 and groups["llm_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    configure_trainable(model, tune_vision_tower=False, tune_projector=True, tune_llm=False)
    frozen = {g["name"] for g in parameter_groups(model, lr=1e-5)}
    assert frozen == {"projector", "projector_no_decay", "ground_head", "ground_head_no_decay"}


def test_lora_keeps_projector_and_grounding_head_trainable_and_merges_on_save(tmp_path: Path) -> None:
    model = _model()
    configure_trainable(model, tune_vision_tower=False, tune_projector=True, tune_llm=False)
    targets = apply_lora(model, r=4, alpha=8, dropout=0.0)
    assert targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("language_model.", "mm_projector.", "image_newline", "ground_head.")) for n in trainable)
    assert {n for n in trainable if n.startswith("language_model.")} == {n for n in trainable if "lora_" in n} != set()
    assert {n for n in trainable if n.startswith("ground_head.")} == {n for n, _ in model.ground_head.named_parameters(prefix="ground_head")}
    assert "mm_projector.0.weight" in trainable and not any("vision_tower" in n for n in trainable)
    assert not any(n.endswith("lm_head.weight") or "embed_tokens" in n for n in trainable)
    # make the adapters non-trivial, then the saved (merged) checkpoint must reproduce the LoRA model
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    merged = merged_state_dict(model)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    q = model.language_model.model.layers[0].self_attn.q_proj
    expected = q.base_layer.weight + q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(merged["language_model.model.layers.0.self_attn.q_proj.weight"], expected)
    out = save_model_checkpoint(model, tmp_path / "ckpt")
    reloaded = Video3DLLM.from_pretrained(out, device="cpu", dtype=torch.float32)
    ids = torch.tensor([[588, 20, 30, 40, 50, 589]])
    with torch.no_grad():
        a = model.language_model(input_ids=ids).logits
        b = reloaded.language_model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # merged W x vs W x + B(A x): rounding only
    torch.testing.assert_close(reloaded.ground_head.zero_target, model.ground_head.zero_target)


def test_base_checkpoint_without_grounding_head_is_completed(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for item in CKPT.iterdir():
        target = base / item.name
        if item.is_dir():
            target.mkdir()
            for sub in item.iterdir():
                (target / sub.name).write_bytes(sub.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    tensors = load_file(str(CKPT / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("ground_head")}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    raw = json.loads((base / "config.json").read_text())
    for key in ("ground_head_type", "world_position_embedding_type", "ground_token_ids", "coord_token_ids"):
        raw.pop(key, None)
    (base / "config.json").write_text(json.dumps(raw))
    model = load_training_model(base)
    assert model.ground_head is not None and model.config.ground_token_ids == (591,) and model.config.coord_token_ids == (592,)
    assert model.config.world_position_embedding_type == UPSTREAM_3D_DEFAULTS["world_position_embedding_type"]
    assert torch.isfinite(model.ground_head.zero_target).all() and float(model.ground_head.zero_target.std()) > 0.5
    torch.testing.assert_close(model.ground_head.obj[2].weight, torch.ones_like(model.ground_head.obj[2].weight))  # LayerNorm init
    torch.testing.assert_close(model.mm_projector[0].weight, tensors["model.mm_projector.0.weight"])


# ---------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_benchmark(out, scenes=2, seed=3, frames_per_scene=4, width=64, height=48, val_fraction=0.5)
    return out


def _config(bench: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model=str(CKPT), data=[str(bench / "multi.yaml")], posed_images=str(bench / "posed_images"), output_dir=str(out),
        boxes=str(bench / "metadata" / "scannet_train_gt_box.json"), frames_upbound=1, batch_size=1, max_steps=4, lr=1e-3,
        warmup_ratio=0.0, tune_vision_tower=False, save_steps=2, save_total_limit=None, seed=7, tensorboard=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_the_step_count_and_the_run(bench: Path, tmp_path: Path) -> None:
    full = train(_config(bench, tmp_path / "full"))
    assert full.global_step == 4 and [r["step"] for r in full.history] == [1, 2, 3, 4]
    assert {p.name for p in (tmp_path / "full").glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    state = json.loads((tmp_path / "full" / "checkpoint-2" / "train_state" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["total_steps"] == 4
    # resume from step 2 in another folder: steps 3 and 4 only, same numbers as the uninterrupted run
    resumed = train(_config(bench, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2")))
    assert resumed.global_step == 4 and [r["step"] for r in resumed.history] == [3, 4]
    for a, b in zip(full.history[2:], resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    final_a = load_file(str(tmp_path / "full" / "checkpoint-4" / "model.safetensors"))
    final_b = load_file(str(tmp_path / "resumed" / "checkpoint-4" / "model.safetensors"))
    for key in ("model.mm_projector.0.weight", "ground_head_zero_target", "model.layers.0.mlp.up_proj.weight"):
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)
    # 'auto' finds the newest checkpoint; nothing left to do at step 4
    again = train(_config(bench, tmp_path / "full", resume="auto"))
    assert again.global_step == 4 and again.history[-1]["step"] == 4 if again.history else again.global_step == 4
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 1 and {"loss", "lr/llm"} <= set(json.loads(lines[0]))


def test_stop_at_step_keeps_the_schedule_and_resume_auto_finishes_the_same_run(bench: Path, tmp_path: Path) -> None:
    full = train(_config(bench, tmp_path / "full"))
    out = tmp_path / "screened"
    stopped = train(_config(bench, out, stop_at_step=3))  # not a save step: the stop writes its own checkpoint
    assert stopped.global_step == 3 and [r["step"] for r in stopped.history] == [1, 2, 3]
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-3"}
    state = json.loads((out / "checkpoint-3" / "train_state" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["total_steps"] == 4
    for a, b in zip(full.history, stopped.history):  # the cosine schedule of 4 steps, not of 3
        assert a["lr/llm"] == pytest.approx(b["lr/llm"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert stopped.history[-1]["lr/llm"] > 0
    finished = train(_config(bench, out, resume="auto"))
    assert finished.global_step == 4 and [r["step"] for r in finished.history] == [4]
    assert finished.history[0]["loss"] == pytest.approx(full.history[3]["loss"], rel=1e-4)
    final_a = load_file(str(tmp_path / "full" / "checkpoint-4" / "model.safetensors"))
    final_b = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    for key in ("model.mm_projector.0.weight", "ground_head_zero_target", "model.layers.0.mlp.up_proj.weight"):
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_a_run_stopped_between_log_steps_logs_its_partial_window(bench: Path, tmp_path: Path) -> None:
    full = train(_config(bench, tmp_path / "full", log_steps=1))
    stopped = train(_config(bench, tmp_path / "stopped", log_steps=2, stop_at_step=3))
    assert [r["step"] for r in stopped.history] == [2, 3]
    per_step = [r["loss"] for r in full.history]
    assert stopped.history[0]["loss"] == pytest.approx((per_step[0] + per_step[1]) / 2, rel=1e-4)
    assert stopped.history[1]["loss"] == pytest.approx(per_step[2], rel=1e-4)  # step 3 alone, not lost
    lines = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 3]


def test_train_config_errors_name_the_option(bench: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--grad-accum"):
        _config(bench, tmp_path, grad_accum=0).validate()
    with pytest.raises(ValueError, match="--description-loss"):
        _config(bench, tmp_path, description_loss_weight=-1.0).validate()
    with pytest.raises(ValueError, match="--landmark-loss must be >= 0"):
        _config(bench, tmp_path, landmark_loss_weight=-1.0).validate()
    with pytest.raises(ValueError, match="--landmark-loss trains the relation match's landmark attention: add --relation-match"):
        train(_config(bench, tmp_path, landmark_loss_weight=1.0))
    with pytest.raises(ValueError, match="--stop-at-step"):
        _config(bench, tmp_path, stop_at_step=0).validate()
    frozen = dict(tune_vision_tower=False, tune_projector=False, tune_llm=False)
    with pytest.raises(ValueError, match="nothing to train"):
        _config(bench, tmp_path, tune_ground_head=False, **frozen).validate()
    _config(bench, tmp_path, **frozen).validate()  # the grounding head alone
    _config(bench, tmp_path, tune_ground_head=False, attribute_match=True, **frozen).validate()  # the match alone
    with pytest.raises(FileNotFoundError, match="train_state"):
        train(_config(bench, tmp_path / "x", resume=str(tmp_path)))


# ---------------------------------------------------------------- accelerate / DeepSpeed configs
@pytest.mark.parametrize("name", ["single_gpu.yaml", "multi_gpu.yaml", "zero2.yaml", "zero3.yaml", "multinode_zero3.yaml"])
def test_accelerate_configs_parse_with_accelerate(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert isinstance(cfg, ClusterConfig)
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert cfg.mixed_precision == "bf16" and cfg.num_processes == raw["num_processes"]
    if "zero" in name:
        assert cfg.distributed_type.value == "DEEPSPEED"
        ds_file = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert ds["zero_optimization"]["stage"] == (3 if "zero3" in name else 2)
        assert ds["bf16"]["enabled"] == "auto" and ds["train_micro_batch_size_per_gpu"] == "auto"
        # with a config file accelerate refuses these keys in the yaml (accelerate's own list)
        forbidden = {"gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                     "offload_param_device", "zero3_save_16bit_model", "mixed_precision"}
        assert not forbidden & set(cfg.deepspeed_config)
        if ds["zero_optimization"]["stage"] == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        auto_left = [k for k, v in ds["zero_optimization"].items() if v == "auto"]
        assert not auto_left  # accelerate fills these only for models with config.hidden_size
    if "multinode" in name:
        assert cfg.num_machines == 2 and cfg.num_processes == 16 and cfg.main_process_ip
    elif name == "multi_gpu.yaml":
        assert cfg.distributed_type.value == "MULTI_GPU"


# ---------------------------------------------------------------- CLI
def test_cli_errors_are_one_line_and_name_the_problem(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", "--model", str(CKPT), "--data", str(bench / "multi.yaml"), "--posed-images", str(bench / "posed_images"),
                     "--output", str(tmp_path / "o"), "--task-weights", "scanqa:1"])
    assert code == 2 and "--task-weights" in capsys.readouterr().err
    code = cli_main(["eval", "scanrefer", "--model", str(CKPT), "--annotations",
                     str(bench / "processed" / "scanrefer_vg_val_llava_style.json"), "--scans", str(bench / "posed_images"),
                     "--answers", str(tmp_path / "a.jsonl")])
    assert code == 2 and "--boxes" in capsys.readouterr().err
    code = cli_main(["prepare", "frames", str(tmp_path / "missing"), "--out", str(tmp_path / "f.json")])
    assert code == 2 and "posed-images root not found" in capsys.readouterr().err


def test_cli_description_loss_and_stop_at_step_reach_the_trainer(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code = cli_main(["train", "--model", str(CKPT), "--data", str(bench / "multi.yaml"), "--posed-images", str(bench / "posed_images"),
                     "--boxes", str(bench / "metadata" / "scannet_train_gt_box.json"), "--output", str(out),
                     "--task-weights", "scanrefer=1,multi3drefer=1,scanqa=0,sqa3d=0,scan2cap=0", "--frames-upbound", "1",
                     "--max-steps", "3", "--stop-at-step", "2", "--lr", "1e-3", "--no-tune-vision-tower",
                     "--description-loss", "0.5", "--save-steps", "2", "--seed", "1"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    state = json.loads((out / "checkpoint-2" / "train_state" / "trainer_state.json").read_text())
    assert state["total_steps"] == 3 and state["config"]["stop_at_step"] == 2
    for r in records:  # grounding-only batches: loss = InfoNCE + 0.5 * recall
        assert r["description_loss"] > 0
        assert r["loss"] == pytest.approx(r["ground_loss"] + 0.5 * r["description_loss"], rel=1e-4)


def test_lora_run_with_activation_checkpointing_saves_a_plain_checkpoint(bench: Path, tmp_path: Path) -> None:
    cfg = _config(bench, tmp_path / "lora", max_steps=2, save_steps=10, lora=True, lora_r=4, gradient_checkpointing=True,
                  task_weights={"scanrefer": 1.0, "scanqa": 1.0, "sqa3d": 0, "scan2cap": 0, "multi3drefer": 0}, batch_size=2,
                  group_by_task=False)
    result = train(cfg)
    assert result.global_step == 2 and all(r["loss"] > 0 for r in result.history)
    state = json.loads((result.final_checkpoint / "train_state" / "trainer_state.json").read_text())
    assert state["lora_targets"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    keys = load_file(str(result.final_checkpoint / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys) and "ground_head_zero_target" in keys
    reloaded = Video3DLLM.from_pretrained(result.final_checkpoint, device="cpu", dtype=torch.float32)
    original = _model()
    # the grounding head trained (it is outside LoRA), the frozen vision tower did not
    assert not torch.equal(reloaded.ground_head.zero_target, original.ground_head.zero_target)
    torch.testing.assert_close(reloaded.vision_tower.tower.embeddings.patch_embedding.weight,
                               original.vision_tower.tower.embeddings.patch_embedding.weight)


@pytest.mark.slow
def test_two_process_data_parallel_run(bench: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: accelerate's gloo DDP, sharded batches, one checkpoint."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "video3dllm_core.cli", "train", "--model", str(CKPT),
           "--data", str(bench / "processed" / "scanqa_train_llava_style.json"),
           str(bench / "processed" / "scanrefer_vg_train_llava_style.json"),
           "--posed-images", str(bench / "posed_images"), "--boxes", str(bench / "metadata" / "scannet_train_gt_box.json"),
           "--frames-upbound", "1", "--max-steps", "3", "--output", str(out), "--save-steps", "10", "--no-tune-vision-tower"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["global_step"] == 3  # printed by the main process only
    state = out / "checkpoint-3" / "train_state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    Video3DLLM.from_pretrained(out / "checkpoint-3", device="cpu", dtype=torch.float32)


def test_metrics_logger_writes_jsonl_and_tensorboard_events_that_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from video3dllm_training.trainer import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    records = [{"step": 1, "loss": 2.5, "lr": 1e-3, "task": "scanqa"}, {"step": 2, "loss": 1.25, "lr": 5e-4}]
    for record in records:
        logger.log(record)
    logger.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr"]  # strings and the step are not scalars
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 1.25)]
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
