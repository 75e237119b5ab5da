"""Fine-tuning Video-3D LLM with an `accelerate` loop (full or LoRA; one GPU, many, DeepSpeed).

Why a hand-written accelerate loop rather than transformers' `Trainer` (docs/training.md has the
full argument): the model is not a `PreTrainedModel` with a standard `forward(input_ids, labels)`,
batches are not tensors alone (per-sample frames, boxes, targets), the loss is custom, and
checkpoints must be written in the upstream layout (`save_checkpoint`) so that
`Video3DLLM.from_pretrained`, `video3dllm eval` and the ROS node load them directly. With
`Trainer` every one of those is an override (`compute_loss`, `_save`, `_load_from_checkpoint`,
`create_optimizer`, the sampler); the loop below is those pieces and nothing else, while
`accelerate` still provides DDP, DeepSpeed ZeRO-2/3, multi-node, mixed precision, gradient
accumulation and resumable optimizer/scheduler/RNG state.

Checkpoint folder `OUTPUT/checkpoint-<step>/`: the model in the upstream layout (config.json,
model.safetensors, tokenizer, tower config; LoRA merged into the weights) and `train_state/`
(accelerate's optimizer/scheduler/RNG/model state plus `trainer_state.json`) for `--resume`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from video3dllm_core.model import Video3DLLM
from video3dllm_core.model.checkpoint import save_checkpoint
from video3dllm_core.model.prompts import parse_task

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "parameter_groups",
    "apply_lora",
    "configure_trainable",
    "merged_state_dict",
    "save_model_checkpoint",
    "find_resume_checkpoint",
    "MetricsLogger",
]

TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainConfig:
    """Every training setting (the `video3dllm train` options map 1:1 onto these)."""

    model: str
    data: list[str]
    posed_images: str
    output_dir: str
    boxes: str | None = None
    frames_file: str | None = None
    embodiedscan: list[str] | None = None
    trust_pickle: bool = False
    frame_strategy: str = "uniform"
    frames_upbound: int = 32
    spatial_instruction: bool = True
    batch_size: int = 1
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    stop_at_step: int | None = None
    lr: float = 1e-5
    vision_lr: float | None = 2e-6
    projector_lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    tune_vision_tower: bool = True
    tune_projector: bool = True
    tune_llm: bool = True
    tune_ground_head: bool = True
    attribute_match: bool = False
    relation_match: bool = False
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    ground_loss_scale: float = 1.0
    lm_loss_on_grounding: bool = False
    ground_temperature: float = 0.07
    description_loss_weight: float = 0.0
    landmark_loss_weight: float = 0.0  # ours: the relation match's landmark attention against metadata.anchor_ids
    task_weights: dict[str, float] | None = None
    group_by_task: bool = True
    save_steps: int = 500
    save_total_limit: int | None = 1
    resume: str | None = None
    log_steps: int = 1
    seed: int = 42
    num_workers: int = 0
    mixed_precision: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    save_dtype: str = "auto"
    allow_pickle_weights: bool = False
    tensorboard: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"--batch-size and --grad-accum must be >= 1, got {self.batch_size} and {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"--stop-at-step must be >= 1, got {self.stop_at_step}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs}")
        if self.description_loss_weight < 0:
            raise ValueError(f"--description-loss must be >= 0, got {self.description_loss_weight}")
        if self.landmark_loss_weight < 0:
            raise ValueError(f"--landmark-loss must be >= 0, got {self.landmark_loss_weight}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.save_steps < 1 or self.log_steps < 1:
            raise ValueError("--save-steps and --log-steps must be >= 1")
        if self.lora and self.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {self.lora_r}")
        if not (self.tune_vision_tower or self.tune_projector or self.tune_llm or self.lora or self.tune_ground_head
                or self.attribute_match or self.relation_match):
            raise ValueError("nothing to train: enable at least one of vision tower, projector, LLM, LoRA, grounding head, "
                             "--attribute-match or --relation-match")
        for name in ("mixed_precision",):
            if getattr(self, name) not in ("auto", "no", "bf16", "fp16"):
                raise ValueError(f"--mixed-precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("dtype", "save_dtype"):
            if getattr(self, name) not in ("auto", "float32", "bfloat16", "float16"):
                raise ValueError(f"--{name.replace('_', '-')} must be auto, float32, bfloat16 or float16, got {getattr(self, name)!r}")
        if self.task_weights:
            for key in self.task_weights:
                parse_task(key)


@dataclass
class TrainResult:
    global_step: int
    final_checkpoint: Path
    checkpoints: list[Path]
    history: list[dict[str, Any]]
    seconds: float


# ------------------------------------------------------------------------------------------ model set-up
def configure_trainable(model: Video3DLLM, tune_vision_tower: bool, tune_projector: bool, tune_llm: bool,
                        tune_ground_head: bool = True) -> None:
    """requires_grad per part (upstream `mm_tunable_parts`, where the grounding head always trains); the attribute
    and relation matches (ours) train whenever the model has them, also with the rest of the head frozen."""
    model.requires_grad_(False)
    model.vision_tower.requires_grad_(tune_vision_tower)
    model.mm_projector.requires_grad_(tune_projector)
    model.image_newline.requires_grad_(tune_projector)
    model.language_model.requires_grad_(tune_llm)
    if model.ground_head is not None:
        model.ground_head.requires_grad_(tune_ground_head)
        for extension in (model.ground_head.match, model.ground_head.relation):
            if extension is not None:
                extension.requires_grad_(True)


def lora_target_modules(model: Video3DLLM) -> list[str]:
    """Linear layers of the LLM, by their last name, without lm_head (upstream find_all_linear_names,
    which skips the projector, the vision tower and the grounding head)."""
    names = {name.rsplit(".", 1)[-1] for name, mod in model.language_model.named_modules()
             if isinstance(mod, nn.Linear) and not name.endswith("lm_head")}
    return sorted(names)


def apply_lora(model: Video3DLLM, r: int = 64, alpha: int = 16, dropout: float = 0.05) -> list[str]:
    """Inject LoRA adapters into the LLM's linear layers (peft). The LLM's own weights freeze; the
    projector, newline and grounding head keep their requires_grad. Returns the target names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_target_modules(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model.language_model)
    for name, param in model.language_model.named_parameters():
        param.requires_grad_("lora_" in name)
    return targets


def _part(name: str) -> str:
    if name.startswith("vision_tower."):
        return "vision_tower"
    if name.startswith("mm_projector.") or name == "image_newline":
        return "projector"
    if name.startswith("ground_head."):
        return "ground_head"
    return "llm"


def parameter_groups(model: nn.Module, lr: float, vision_lr: float | None = None, projector_lr: float | None = None,
                     head_lr: float | None = None, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer groups: vision tower (`mm_vision_tower_lr`), projector + newline (`mm_projector_lr`),
    grounding head, LLM (incl. LoRA); each split into decayed (matrices) and not decayed (biases,
    norms, vectors), as upstream's `create_optimizer`. Empty groups are left out."""
    rates = {"vision_tower": vision_lr, "projector": projector_lr, "ground_head": head_lr, "llm": None}
    groups: list[dict[str, Any]] = []
    for part, part_lr in rates.items():
        for decay in (True, False):
            params = [p for n, p in model.named_parameters()
                      if p.requires_grad and _part(n) == part and (p.ndim >= 2) == decay]
            if params:
                groups.append({"params": params, "lr": part_lr if part_lr is not None else lr,
                               "weight_decay": weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


# ------------------------------------------------------------------------------------------ checkpoints
def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's state with LoRA merged into the base weights and peft's names removed.

    W = W_base + scaling * (B @ A) for every LoRA layer (from the full state, so it also works on a
    ZeRO-3-gathered state dict); the result has plain upstream-mappable names.
    """
    from peft.tuners.lora import LoraLayer

    state = dict(model.state_dict() if state is None else state)
    scalings = {name: mod.scaling for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = tensor
    for name, scaling in scalings.items():
        for adapter, scale in scaling.items():
            a, b = state.get(f"{name}.lora_A.{adapter}.weight"), state.get(f"{name}.lora_B.{adapter}.weight")
            if a is None or b is None:
                continue
            key = f"{name}.weight"
            out[key] = (out[key].float() + scale * (b.float() @ a.float())).to(out[key].dtype)
    return out


class _CheckpointView:
    """What `save_checkpoint` reads from a model, over a given (merged) state dict and dtype."""

    def __init__(self, model: Video3DLLM, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self._model, self._state, self._dtype = model, state, dtype
        self.config = model.config
        self.language_model = model.language_model
        self.vision_tower = model.vision_tower
        self.generation_config = model.generation_config
        self.tokenizer = model.tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: (v.to(self._dtype) if v.is_floating_point() else v) for k, v in self._state.items()}


def save_model_checkpoint(model: Video3DLLM, directory: str | Path, state: dict[str, torch.Tensor] | None = None,
                          dtype: torch.dtype | None = None) -> Path:
    """Write the model (LoRA merged) in the upstream layout with `save_checkpoint`."""
    merged = merged_state_dict(model, state)
    return save_checkpoint(_CheckpointView(model, merged, dtype or model.dtype), directory)


def find_resume_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    """`resume` = a checkpoint folder, or 'auto' (the newest `checkpoint-<step>` with a train_state)."""
    if resume != "auto":
        path = Path(resume)
        if not (path / "train_state" / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"--resume {path}: no train_state/{TRAINER_STATE} (not a checkpoint written by `video3dllm train`)")
        return path
    candidates = []
    for p in Path(output_dir).glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if suffix.isdigit() and (p / "train_state" / TRAINER_STATE).is_file():
            candidates.append((int(suffix), p))
    return max(candidates)[1] if candidates else None


def _rotate(output_dir: Path, keep: int | None) -> None:
    if keep is None or keep < 1:
        return
    steps = sorted((int(p.name.split("-", 1)[1]), p) for p in output_dir.glob("checkpoint-*")
                   if p.name.split("-", 1)[1].isdigit())
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ logging
class MetricsLogger:
    """metrics.jsonl plus TensorBoard event files (a pinned requirement; without it, metrics.jsonl only)."""

    def __init__(self, output_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; metrics.jsonl has everything
                self.writer = None
            else:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------ the loop
def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _build_data(cfg: TrainConfig, tokenizer: Any, ingest_config: Any = None) -> tuple[Any, Any, Any]:
    from video3dllm_training.data import (
        DatasetConfig,
        SceneStore,
        TaskBatchSampler,
        Video3DDataset,
        load_box_file,
        load_data_mixture,
        load_embodiedscan_infos,
        load_frames_file,
    )
    from video3dllm_training.data.dataset import Collator

    annotations: list[Any] = []
    weights: dict[Any, float] = {}
    for path in cfg.data:
        anns, w = load_data_mixture(path, seed=cfg.seed)
        annotations.extend(anns)
        weights.update(w)
    if cfg.task_weights:
        weights.update({parse_task(k): float(v) for k, v in cfg.task_weights.items()})
    if not annotations:
        raise ValueError(f"no training samples in {cfg.data}")
    infos = load_embodiedscan_infos(cfg.embodiedscan, trust_pickle=cfg.trust_pickle) if cfg.embodiedscan else None
    frames = load_frames_file(cfg.frames_file) if cfg.frames_file else None
    store = SceneStore(cfg.posed_images, infos=infos, frames_file=frames, ingest_config=ingest_config)
    boxes = load_box_file(cfg.boxes) if cfg.boxes else None
    dataset = Video3DDataset(annotations, store, tokenizer, boxes,
                             DatasetConfig(frame_strategy=cfg.frame_strategy, frames_upbound=cfg.frames_upbound,
                                           training=True, spatial_instruction=cfg.spatial_instruction, boxes_are_gt=True))
    sampler = TaskBatchSampler(dataset.tasks, cfg.batch_size, weights or None, seed=cfg.seed, group_by_task=cfg.group_by_task)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return dataset, sampler, Collator(int(pad))


def train(cfg: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Run training (see the module docstring); returns the step count, checkpoints and loss history."""
    from accelerate import Accelerator  # type: ignore[import-untyped]
    from accelerate.utils import DistributedDataParallelKwargs, set_seed  # type: ignore[import-untyped]
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from video3dllm_training.forward import TrainingModule
    from video3dllm_training.init_model import add_attribute_match, add_relation_match, load_training_model

    cfg.validate()
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if cuda else "no")
    accelerator = Accelerator(
        cpu=not cuda,  # lets accelerate run several CPU processes (torchrun / MULTI_CPU) as a gloo group
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    plugin = accelerator.state.deepspeed_plugin
    deepspeed = plugin is not None
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") == "auto":
        # batches come from a batch sampler (no DataLoader.batch_size for accelerate to read)
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    # DeepSpeed keeps float32 master weights itself: bf16 parameters halve the per-process host copy.
    dtype = _dtype(cfg.dtype) if cfg.dtype != "auto" else (torch.bfloat16 if deepspeed and mixed == "bf16" else torch.float32)
    attn = cfg.attn_implementation
    if attn == "auto":
        from video3dllm_core.model.modeling import default_attn_implementation

        attn = default_attn_implementation(accelerator.device, torch.bfloat16 if mixed == "bf16" else dtype)
    model = load_training_model(cfg.model, device="cpu" if deepspeed else accelerator.device, dtype=dtype,
                                attn_implementation=attn, allow_pickle=cfg.allow_pickle_weights)
    if cfg.attribute_match and not model.config.ground_attribute_match:
        add_attribute_match(model, seed=cfg.seed)
    if cfg.relation_match and not model.config.ground_relation_match:
        add_relation_match(model, seed=cfg.seed)
    if cfg.landmark_loss_weight and not model.config.ground_relation_match:
        raise ValueError("--landmark-loss trains the relation match's landmark attention: add --relation-match "
                         "(or start from a checkpoint with ground_relation_match)")
    configure_trainable(model, cfg.tune_vision_tower, cfg.tune_projector, cfg.tune_llm and not cfg.lora, cfg.tune_ground_head)
    lora_targets = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if cfg.lora else []
    if cfg.gradient_checkpointing:
        for part in (model.language_model, model.vision_tower.tower):
            part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora:
            model.language_model.enable_input_require_grads()
    model.train()
    model.config.raw["frames_upbound"] = int(cfg.frames_upbound)  # the engine's default keyframe budget for it

    dataset, sampler, collator = _build_data(cfg, model.tokenizer, model.ingest_config())
    per_epoch = sampler.batches_per_epoch()
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples make no full batch of {cfg.batch_size} (per task group); lower --batch-size")
    updates_per_epoch = max(1, per_epoch // (cfg.grad_accum * accelerator.num_processes))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * updates_per_epoch))

    groups = parameter_groups(model, cfg.lr, cfg.vision_lr, cfg.projector_lr, cfg.head_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(round(cfg.warmup_ratio * total_steps)),
                              num_training_steps=total_steps)
    module = TrainingModule(model, cfg.ground_loss_scale, cfg.lm_loss_on_grounding, cfg.ground_temperature,
                            cfg.description_loss_weight, cfg.landmark_loss_weight)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if plugin is not None and int(plugin.zero_stage or 0) == 3:
        _register_zero3_external_parameters(accelerator.unwrap_model(module))

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0}
    if cfg.resume:
        resume_dir = find_resume_checkpoint(output_dir, cfg.resume)
        if resume_dir is not None:
            accelerator.load_state(str(resume_dir / "train_state"))
            saved = json.loads((resume_dir / "train_state" / TRAINER_STATE).read_text())
            state.update({k: int(saved[k]) for k in state})
            accelerator.print(f"resumed from {resume_dir} at step {state['global_step']}")

    logger = MetricsLogger(output_dir, enabled=accelerator.is_main_process, tensorboard=cfg.tensorboard)
    history: list[dict[str, Any]] = []
    checkpoints: list[Path] = []
    unwrapped: Any = accelerator.unwrap_model(module)
    save_dtype = _dtype(cfg.save_dtype) if cfg.save_dtype != "auto" else (torch.bfloat16 if cuda else model.dtype)

    def save(step: int) -> Path:
        directory = output_dir / f"checkpoint-{step}"
        full = accelerator.get_state_dict(module)
        if accelerator.is_main_process:
            inner = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
            save_model_checkpoint(unwrapped.model, directory, inner, save_dtype)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(directory / "train_state"))
        if accelerator.is_main_process:
            record = dict(state, global_step=step, total_steps=total_steps, lora_targets=lora_targets, config=asdict(cfg))
            (directory / "train_state" / TRAINER_STATE).write_text(json.dumps(record, indent=2, default=str))
            _rotate(output_dir, cfg.save_total_limit)
        accelerator.wait_for_everyone()
        checkpoints.append(directory)
        return directory

    # --stop-at-step ends this call early with a checkpoint; the schedule still runs to total_steps, so
    # `--resume auto` continues the very same run (used to screen training seeds, docs/training.md)
    end_step = min(total_steps, cfg.stop_at_step) if cfg.stop_at_step else total_steps
    window: list[Any] = []
    t_window = time.perf_counter()
    samples_window = 0
    while state["global_step"] < end_step:
        sampler.set_position(state["epoch"], state["batches_in_epoch"])
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.num_workers)
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
        for batch in _iterate(loader):
            with accelerator.accumulate(module):
                out = module(batch)
                if out.loss.requires_grad:  # a text batch has nothing to train when only the attribute match trains
                    accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state["batches_in_epoch"] += accelerator.num_processes
            window.append(out)
            samples_window += len(batch) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["global_step"] += 1
            step = state["global_step"]
            if step % cfg.log_steps == 0 or step == end_step:  # a stopped run logs its last, partial window too
                record = _record(accelerator, step, window, scheduler,
                                 samples_window / max(1e-9, time.perf_counter() - t_window), time.perf_counter() - t_start,
                                 state["epoch"])
                logger.log(record)
                history.append(record)
                if on_step is not None and accelerator.is_main_process:
                    on_step(record)
                window, samples_window, t_window = [], 0, time.perf_counter()
            if step % cfg.save_steps == 0 and step < end_step:
                save(step)
            if step >= end_step:
                break
        else:
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            continue
        break
    final = save(state["global_step"])
    logger.close()
    return TrainResult(global_step=state["global_step"], final_checkpoint=final, checkpoints=checkpoints,
                       history=history, seconds=time.perf_counter() - t_start)


def _iterate(loader: Iterable[Any]) -> Iterable[Any]:
    yield from loader


def _register_zero3_external_parameters(module: Any) -> None:
    """ZeRO-3 gathers a parameter only while its own module's forward runs. Video3DLLM reads
    `image_newline` and the input embedding matrix's shape outside such a call (image block,
    vocabulary check), so they are registered with the TrainingModule, whose forward is called."""
    import deepspeed  # type: ignore[import-not-found]  # only reached under a DeepSpeed ZeRO-3 config

    model = module.model
    for param in (model.image_newline, model.language_model.get_input_embeddings().weight):
        deepspeed.zero.register_external_parameter(module, param)


def _record(accelerator: Any, step: int, outputs: list[Any], scheduler: Any, samples_per_s: float, elapsed: float,
            epoch: int) -> dict[str, Any]:
    """One log line: losses averaged over the logging window and over all processes."""
    sums = [0.0] * 8  # loss, n, lm, n_lm, ground, n_ground, description, n_description
    for o in outputs:
        sums[0] += float(o.loss.detach())
        sums[1] += 1
        if o.lm_loss is not None:
            sums[2] += o.lm_loss
            sums[3] += 1
        if o.ground_loss is not None:
            sums[4] += o.ground_loss
            sums[5] += 1
        if o.description_loss is not None:
            sums[6] += o.description_loss
            sums[7] += 1
    total = accelerator.reduce(torch.tensor(sums, dtype=torch.float64, device=accelerator.device), reduction="sum").tolist()
    record: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "loss": total[0] / total[1] if total[1] else None,
        "lm_loss": total[2] / total[3] if total[3] else None,
        "ground_loss": total[4] / total[5] if total[5] else None,
        "description_loss": total[6] / total[7] if total[7] else None,
        "samples_per_s": round(samples_per_s, 3),
        "elapsed_s": round(elapsed, 2),
    }
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        record[f"lr/{group.get('name', 'group')}"] = lr
    return {k: v for k, v in record.items() if v is not None}
