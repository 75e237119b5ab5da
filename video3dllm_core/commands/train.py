"""`video3dllm train`: fine-tune Video-3D LLM on the five tasks (full or LoRA), resumable.

    video3dllm train --model data/models/LLaVA-Video-7B-Qwen2 --data scripts/3d/train/multi.yaml \\
        --posed-images data/scannet/posed_images --boxes data/metadata/scannet_train_gt_box.json \\
        --output outputs/run1 --frames-upbound 32 --gradient-checkpointing

Multi-GPU / DeepSpeed / multi-node: the same command under accelerate, e.g.
    accelerate launch --config_file training/configs/zero3.yaml -m video3dllm_core.cli train ...
Defaults follow upstream's train_multi.sh (lr 1e-5, vision tower 2e-6, cosine, warmup 3 %, one
epoch, upstream's spatial instruction). See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os

HELP = "fine-tune Video-3D LLM (full or LoRA) with accelerate; checkpoints in the upstream layout"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help=HELP, description=HELP)
    b = argparse.BooleanOptionalAction
    d = p.add_argument_group("data")
    d.add_argument("--model", required=True, help="checkpoint folder (Video-3D LLM, or a LLaVA-Video base: heads/tokens are added)")
    d.add_argument("--data", required=True, nargs="+",
                   help="*_llava_style.json annotation files and/or upstream data YAMLs (datasets: [{json_path, sampling_strategy, weight}])")
    d.add_argument("--posed-images", required=True, help="posed-images root (<root>/<scene>/NNNNN.jpg ...)")
    d.add_argument("--boxes", default=None, help="ground-truth box JSON (scannet_train_gt_box.json); needed for grounding")
    d.add_argument("--frames-file", default=None, help="max-coverage picks (scannet_select_frames.json), for mc strategies")
    d.add_argument("--frame-strategy", default="uniform", choices=("uniform", "mc", "mc-ratio90", "mc-ratio95"))
    d.add_argument("--frames-upbound", type=int, default=32, help="frame budget per sample (default 32)")
    d.add_argument("--embodiedscan", nargs="+", default=None, help="EmbodiedScan info pickles (needs --trust-pickle)")
    d.add_argument("--trust-pickle", action="store_true", help="allow unpickling --embodiedscan files")
    d.add_argument("--spatial-instruction", action=b, default=True, help="upstream's add_spatial_instruction (default on)")
    d.add_argument("--task-weights", default=None, help="task mixture, e.g. scanqa=1,sqa3d=1,scan2cap=0.5,scanrefer=1,multi3drefer=1")
    d.add_argument("--group-by-task", action=b, default=True, help="batches from one task group at a time (upstream)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--output", required=True, help="output folder (checkpoints, metrics.jsonl, tensorboard/)")
    o.add_argument("--batch-size", type=int, default=1, help="samples per device per step (default 1)")
    o.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    o.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    o.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    o.add_argument("--stop-at-step", type=int, default=None, metavar="STEP",
                   help="stop after this step with a checkpoint, the schedule unchanged: --resume auto continues the "
                        "same run (to screen training seeds); default: run to the end")
    o.add_argument("--lr", type=float, default=1e-5, help="LLM learning rate (default 1e-5)")
    o.add_argument("--vision-lr", type=float, default=2e-6, help="vision tower learning rate (mm_vision_tower_lr, 2e-6)")
    o.add_argument("--projector-lr", type=float, default=None, help="projector learning rate (mm_projector_lr; default --lr)")
    o.add_argument("--head-lr", type=float, default=None, help="grounding head learning rate (default --lr)")
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--warmup-ratio", type=float, default=0.03)
    o.add_argument("--scheduler", default="cosine", help="transformers scheduler name (default cosine)")
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument("--tune-vision-tower", action=b, default=True)
    o.add_argument("--tune-projector", action=b, default=True)
    o.add_argument("--tune-llm", action=b, default=True)
    o.add_argument("--tune-ground-head", action=b, default=True,
                   help="train the grounding head (default on; the attribute match trains whenever the model has one)")
    o.add_argument("--attribute-match", action="store_true",
                   help="add the grounding head's attribute match (ours: ground_attribute_match) to a checkpoint without "
                        "one, text side seeded by --seed, object side zero (docs/training.md, 'The attribute match')")
    o.add_argument("--landmark-loss", type=float, default=0.0,
                   help="weight of the relation match's landmark loss: its attention against the annotation's "
                        "metadata.anchor_ids (the reference object of a relation description); 0 = off")
    o.add_argument("--relation-match", action="store_true",
                   help="add the grounding head's relation match (ours: ground_relation_match) to a checkpoint without "
                        "one, landmark query seeded by --seed, weights zero (docs/training.md, 'The relation match')")
    o.add_argument("--lora", action="store_true", help="LoRA on the LLM's linear layers; projector and grounding head stay trainable")
    o.add_argument("--lora-r", type=int, default=64)
    o.add_argument("--lora-alpha", type=int, default=16)
    o.add_argument("--lora-dropout", type=float, default=0.05)
    o.add_argument("--gradient-checkpointing", action=b, default=False)
    o.add_argument("--ground-loss-scale", type=float, default=1.0)
    o.add_argument("--lm-loss-on-grounding", action=b, default=False, help="also LM loss on '<ground>' answers (upstream: no)")
    o.add_argument("--description-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the description recall loss at <ground> (not upstream; helps decoders trained from "
                        "scratch gather the description, see docs/training.md); default 0")
    o.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"), help="auto: bf16 on GPU")
    o.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="parameter dtype (auto: float32)")
    o.add_argument("--save-dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="auto: bf16 on GPU")
    o.add_argument("--attn", default="auto", help="attention: auto, eager, sdpa, flash_attention_2")
    o.add_argument("--seed", type=int, default=42)
    o.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    c = p.add_argument_group("checkpoints and logging")
    c.add_argument("--save-steps", type=int, default=500)
    c.add_argument("--save-total-limit", type=int, default=1, help="checkpoints kept (default 1)")
    c.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --output) or a checkpoint folder")
    c.add_argument("--log-steps", type=int, default=1)
    c.add_argument("--allow-pickle-weights", action="store_true", help="load pytorch_model.bin weights (pickles)")


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--task-weights: {part!r} is not task=weight (e.g. scanqa=1,scanrefer=2)")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--task-weights: weight of {name!r} is not a number: {value!r}") from None
    return out


def config_from_args(args: argparse.Namespace) -> object:
    from video3dllm_training.trainer import TrainConfig

    return TrainConfig(
        model=args.model, data=list(args.data), posed_images=args.posed_images, output_dir=args.output, boxes=args.boxes,
        frames_file=args.frames_file, embodiedscan=args.embodiedscan, trust_pickle=args.trust_pickle,
        frame_strategy=args.frame_strategy, frames_upbound=args.frames_upbound, spatial_instruction=args.spatial_instruction,
        batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps,
        stop_at_step=args.stop_at_step, lr=args.lr,
        vision_lr=args.vision_lr, projector_lr=args.projector_lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, scheduler=args.scheduler, max_grad_norm=args.max_grad_norm,
        tune_vision_tower=args.tune_vision_tower, tune_projector=args.tune_projector, tune_llm=args.tune_llm,
        tune_ground_head=args.tune_ground_head, attribute_match=args.attribute_match, relation_match=args.relation_match,
        lora=args.lora,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        gradient_checkpointing=args.gradient_checkpointing, ground_loss_scale=args.ground_loss_scale,
        lm_loss_on_grounding=args.lm_loss_on_grounding, description_loss_weight=args.description_loss,
        landmark_loss_weight=args.landmark_loss, task_weights=_weights(args.task_weights),
        group_by_task=args.group_by_task, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        resume=args.resume, log_steps=args.log_steps, seed=args.seed, num_workers=args.num_workers,
        mixed_precision=args.mixed_precision, dtype=args.dtype, attn_implementation=args.attn, save_dtype=args.save_dtype,
        allow_pickle_weights=args.allow_pickle_weights,
    )


def run(args: argparse.Namespace) -> int:
    from video3dllm_training.trainer import train

    cfg = config_from_args(args)

    def report(record: dict) -> None:
        parts = [f"step {record['step']}", f"loss {record['loss']:.4f}"]
        for key in ("lm_loss", "ground_loss", "description_loss"):
            if key in record:
                parts.append(f"{key} {record[key]:.4f}")
        print("  ".join(parts), flush=True)

    result = train(cfg, on_step=report)  # type: ignore[arg-type]
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, from the main process
        return 0
    print(json.dumps({"global_step": result.global_step, "checkpoint": str(result.final_checkpoint),
                      "seconds": round(result.seconds, 1)}))
    return 0
