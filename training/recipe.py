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
from dataclasses import dataclass, field

import numpy as np
import ray.train
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from model import load_pllava
from model.tiny import resolve_model_dir
from training.config import TrainConfig
from training.data import collate

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.jsonl"


class NoUsableSamples(RuntimeError):
    """A whole pass over a worker's training data gave not one sample to train on (every video failed to
    decode, or every prompt was too long): the loop would otherwise read the data again forever."""


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


@dataclass
class _Window:
    """What accumulates between two optimiser steps (and between two reports)."""

    loss_sum: float = 0.0
    samples: int = 0
    micro_batches: int = 0
    skipped: int = 0
    too_long: int = 0
    started: float = field(default_factory=time.perf_counter)


class LoraRecipe:
    """One worker's fine-tuning run, in the shape of a torchtune recipe: :meth:`setup` (model, LoRA, optimiser,
    schedule), :meth:`restore` (from the run's latest checkpoint), :meth:`train_step` (one micro-batch),
    :meth:`optimizer_step` (one step: clip, step, metrics, report and checkpoint) and :meth:`train` (the loop)."""

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.context = ray.train.get_context()
        self.rank = self.context.get_world_rank()
        self.step = 0
        self.resumed_from = 0
        self.history: list[dict] = []
        self.window = _Window()

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        self.use_gpu = cfg.run.use_gpu and torch.cuda.is_available()
        self.device = ray.train.torch.get_device() if self.use_gpu else torch.device("cpu")
        self.model, self.processor = load_pllava(
            resolve_model_dir(cfg.model), weights_dir=cfg.weights_dir, lora_alpha=cfg.lora_alpha_of_weights,
            device=self.device, dtype=torch.bfloat16 if self.use_gpu else torch.float32,
            num_frames=cfg.sampling.num_frames)
        add_lora(self.model, cfg)
        if cfg.optim.gradient_checkpointing:
            self.model.language_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                           betas=cfg.optim.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, self.total_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio))
        self.rng = np.random.default_rng(cfg.run.seed + self.rank)

    def restore(self, checkpoint: ray.train.Checkpoint | None) -> None:
        """Trainable weights, optimiser and scheduler state, step and metric history from ``checkpoint``."""
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                saved = load_file(os.path.join(folder, TRAINABLE_FILE))
                expected = set(trainable_state(self.model))
                if set(saved) != expected:
                    raise ValueError(f"checkpoint {checkpoint.path} does not match this run's trainable weights: "
                                     f"{sorted(expected ^ set(saved))[:8]} (changed LoRA settings?)")
                self.model.load_state_dict(saved, strict=False)  # only the trainable part; checked just above
                states = torch.load(os.path.join(folder, "optim.pt"), weights_only=False)
                self.optimizer.load_state_dict(states["optimizer"])
                self.scheduler.load_state_dict(states["scheduler"])
                with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
                    self.step = json.load(f)["step"]
                with open(os.path.join(folder, METRICS_FILE), encoding="utf-8") as f:
                    self.history = [json.loads(line) for line in f if line.strip()]
            logger.info("resumed at step %d", self.step)
        self.resumed_from = self.step
        self.ddp_model = (ray.train.torch.prepare_model(self.model, move_to_device=False)
                          if self.context.get_world_size() > 1 else self.model)

    # -- steps -----------------------------------------------------------------------------------------
    def train_step(self, batch) -> bool:
        """Forward and backward on one micro-batch (its undecodable or too-long rows counted and left out);
        False when no row of it could train."""
        cfg = self.cfg
        inputs, bad = collate(batch, self.processor, cfg.data.max_text_tokens, cfg.sampling.num_frames,
                              cfg.sampling.image_size, flip=cfg.augment_flip, rng=self.rng)
        self.window.skipped += bad.videos
        self.window.too_long += bad.too_long
        if inputs is None:
            return False
        pixels = self.processor.pixel_values(inputs.pop("frames"), device=self.device, dtype=self.model.dtype)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_gpu):
            out = self.ddp_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 pixel_values=pixels, labels=inputs["labels"])
        (out.loss / cfg.optim.grad_accum_steps).backward()
        self.window.loss_sum += float(out.loss.detach())
        self.window.samples += len(inputs["input_ids"])
        self.window.micro_batches += 1
        return True

    def optimizer_step(self) -> None:
        """Clip, step the optimiser and the schedule, then report the step's metrics (with a checkpoint every
        ``run.checkpoint_every`` steps and at the end)."""
        cfg, window = self.cfg, self.window
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        elapsed = time.perf_counter() - window.started
        metrics = {"step": self.step, "loss": window.loss_sum / cfg.optim.grad_accum_steps,
                   "lr": self.scheduler.get_last_lr()[0],
                   "samples_per_s": window.samples / elapsed if elapsed > 0 else 0.0,
                   "skipped_videos": _sum_over_workers(window.skipped),
                   "skipped_too_long": _sum_over_workers(window.too_long), "resumed_from": self.resumed_from}
        # Skip counts add up over the run; the loss and the throughput are per step.
        self.window = _Window(micro_batches=window.micro_batches, skipped=window.skipped, too_long=window.too_long)
        self.history.append(metrics)
        if self.rank == 0:
            logger.info("step %d loss %.4f lr %.2e %.2f samples/s", self.step, metrics["loss"], metrics["lr"],
                        metrics["samples_per_s"])
        if self.step % cfg.run.checkpoint_every == 0 or self.done:
            folder = (save_checkpoint(self.model, self.optimizer, self.scheduler, self.step, self.history)
                      if self.rank == 0 else None)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
            if folder:
                shutil.rmtree(folder, ignore_errors=True)  # reported checkpoints are copied to storage
        else:
            ray.train.report(metrics)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    # -- the loop --------------------------------------------------------------------------------------
    def train(self) -> None:
        """Passes over the shard until ``total_steps`` optimiser steps have run.

        Raises:
            NoUsableSamples: a whole pass trained on nothing (it would never reach a step).
        """
        shard = ray.train.get_dataset_shard("train")
        while not self.done:
            rows = usable = 0
            skipped, too_long = self.window.skipped, self.window.too_long
            for batch in shard.iter_batches(batch_size=self.cfg.optim.batch_size, batch_format="pyarrow"):
                rows += batch.num_rows
                if not self.train_step(batch):
                    continue
                usable += 1
                if self.window.micro_batches % self.cfg.optim.grad_accum_steps:
                    continue  # gradients accumulate until grad_accum_steps micro-batches have run
                self.optimizer_step()
                if self.done:
                    break
            if not usable and not self.done:
                raise NoUsableSamples(
                    f"worker {self.rank}: a whole pass over its {rows} training examples gave no sample to train "
                    f"on ({self.window.skipped - skipped} videos could not be decoded, "
                    f"{self.window.too_long - too_long} prompts left no room for the answer in "
                    f"data.max_text_tokens={self.cfg.data.max_text_tokens}); check the videos and their paths")


def train_func(raw_config: dict) -> None:
    """Runs on every worker (``TorchTrainer(train_loop_per_worker=train_func)``)."""
    recipe = LoraRecipe(raw_config["train"], raw_config["total_steps"])
    recipe.setup()
    recipe.restore(ray.train.get_checkpoint())
    recipe.train()
