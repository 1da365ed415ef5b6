"""The training recipe, per Ray Train worker: setup, train, save_checkpoint.

Frozen vision tower and language model; LoRA on the language model plus a trainable projector; AdamW
(no decay on biases and 1-D parameters); cosine schedule with warmup and a floor; bf16 autocast on GPU.
Checkpoints hold the trainable weights, optimiser, scheduler and step, and a rerun continues from the
latest one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time

import numpy as np
import ray.train
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from model import load_pllava
from pipeline.captioner import resolve_model_dir
from training.config import TrainConfig
from training.data import collate

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.jsonl"


def lr_multiplier(step: int, total_steps: int, warmup_ratio: float, floor: float) -> float:
    """Linear warmup to 1, then cosine decay; never below ``floor`` (the reference floors warmup too)."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        value = (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total_steps - warmup)
        value = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return max(floor, value)


def add_lora(model, cfg: TrainConfig) -> None:
    """Freeze everything, wrap the language model with LoRA, unfreeze the projector."""
    model.requires_grad_(False)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules))
    model.language_model = get_peft_model(model.language_model, lora)
    model.multi_modal_projector.requires_grad_(True)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights in float32 even when the base is bf16


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_checkpoint(model, optimizer, scheduler, step: int, history: list[dict]) -> str:
    """A local folder with the trainable weights, optimiser and scheduler state, step and metric history."""
    folder = tempfile.mkdtemp(prefix="pllava-ckpt-")
    save_file(trainable_state(model), os.path.join(folder, TRAINABLE_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               os.path.join(folder, "optim.pt"))
    with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump({"step": step}, f)
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in history)
    return folder


def _sum_over_workers(value: int) -> int:
    """Videos skipped by all workers together (each worker only sees its own shard)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.long)
    torch.distributed.all_reduce(total)
    return int(total.item())


def train_func(raw_config: dict) -> None:
    """Runs on every worker (``TorchTrainer(train_loop_per_worker=train_func)``)."""
    cfg = TrainConfig.from_dict(raw_config["train"])
    total_steps = raw_config["total_steps"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.run.seed)
    use_gpu = cfg.run.use_gpu and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    model, processor = load_pllava(
        resolve_model_dir(cfg.model), weights_dir=cfg.weights_dir, lora_alpha=cfg.lora_alpha_of_weights,
        device=device, dtype=torch.bfloat16 if use_gpu else torch.float32, num_frames=cfg.sampling.num_frames)
    add_lora(model, cfg)
    if cfg.optim.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio))
    step = 0
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_file(os.path.join(folder, TRAINABLE_FILE))
            expected = set(trainable_state(model))
            if set(saved) != expected:
                raise ValueError(f"checkpoint {checkpoint.path} does not match this run's trainable weights: "
                                 f"{sorted(expected ^ set(saved))[:8]} (changed LoRA settings?)")
            model.load_state_dict(saved, strict=False)  # only the trainable part; checked just above
            states = torch.load(os.path.join(folder, "optim.pt"), weights_only=False)
            optimizer.load_state_dict(states["optimizer"])
            scheduler.load_state_dict(states["scheduler"])
            with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
                step = json.load(f)["step"]
            with open(os.path.join(folder, METRICS_FILE), encoding="utf-8") as f:
                history = [json.loads(line) for line in f if line.strip()]
        logger.info("resumed at step %d", step)
    resumed_from = step
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False) if context.get_world_size() > 1 else model

    shard = ray.train.get_dataset_shard("train")
    rng = np.random.default_rng(cfg.run.seed + rank)
    skipped = too_long = samples = micro = 0
    loss_sum = 0.0
    window_start = time.perf_counter()
    while step < total_steps:
        for batch in shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="pyarrow"):
            inputs, bad = collate(batch, processor, cfg.data.max_text_tokens, cfg.sampling.num_frames,
                                  cfg.sampling.image_size, flip=cfg.augment_flip, rng=rng)
            skipped += bad.videos
            too_long += bad.too_long
            if inputs is None:
                continue
            pixels = processor.pixel_values(inputs.pop("frames"), device=device, dtype=model.dtype)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_gpu):
                out = ddp_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                pixel_values=pixels, labels=inputs["labels"])
            (out.loss / cfg.optim.grad_accum_steps).backward()
            loss_sum += float(out.loss.detach())
            samples += len(inputs["input_ids"])
            micro += 1
            if micro % cfg.optim.grad_accum_steps:
                continue
            if cfg.optim.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - window_start
            metrics = {"step": step, "loss": loss_sum / cfg.optim.grad_accum_steps, "lr": scheduler.get_last_lr()[0],
                       "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
                       "skipped_videos": _sum_over_workers(skipped),
                       "skipped_too_long": _sum_over_workers(too_long), "resumed_from": resumed_from}
            loss_sum, samples, window_start = 0.0, 0, time.perf_counter()
            history.append(metrics)
            if rank == 0:
                logger.info("step %d loss %.4f lr %.2e %.2f samples/s", step, metrics["loss"], metrics["lr"],
                            metrics["samples_per_s"])
            done = step >= total_steps
            if step % cfg.run.checkpoint_every == 0 or done:
                folder = save_checkpoint(model, optimizer, scheduler, step, history) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)  # reported checkpoints are copied to storage
            else:
                ray.train.report(metrics)
            if done:
                break
