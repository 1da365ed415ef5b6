"""Typed configuration of a LoRA + projector fine-tuning run (defaults: the PLLaVA recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import config_from_dict
from pipeline.frames import SamplingConfig
from pipeline.io.masking import redact

DATA_KINDS = ("videochat2", "captions")


@dataclass
class DataConfig:
    """``videochat2``: a JSON list of ``{"video": rel_path, "QA": [{"i", "q", "a"}, ...]}`` with videos under
    ``video_root``; ``captions``: the recaption pipeline's Parquet output (rows with a caption)."""

    uri: str = ""
    kind: str = "auto"
    video_root: str | None = None
    max_text_tokens: int = 512

    def problems(self) -> list[str]:
        out = []
        if not self.uri:
            out.append("data.uri is required")
        if self.kind not in DATA_KINDS + ("auto",):
            out.append(f"data.kind must be one of {DATA_KINDS} or auto, got {self.kind!r}")
        if self.max_text_tokens < 16:
            out.append("data.max_text_tokens must be >= 16")
        return out


@dataclass
class LoraSettings:
    r: int = 128
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            out.append(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            out.append("lora.target_modules must not be empty")
        return out


@dataclass
class OptimConfig:
    """AdamW with no decay on biases and 1-D parameters; cosine schedule with linear warmup and a floor."""

    lr: float = 2e-5
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.25
    max_grad_norm: float | None = None
    grad_accum_steps: int = 1
    batch_size: int = 1  # per worker, per micro-step
    gradient_checkpointing: bool = False

    def problems(self) -> list[str]:
        out = []
        if self.lr <= 0:
            out.append("optim.lr must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            out.append("optim.warmup_ratio must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append("optim.min_lr_ratio must be in [0, 1]")
        if self.grad_accum_steps < 1 or self.batch_size < 1:
            out.append("optim.grad_accum_steps and optim.batch_size must be >= 1")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            out.append("optim.max_grad_norm must be > 0 (or null for no clipping)")
        return out


@dataclass
class RunConfig:
    """Where checkpoints and the exported ``weights_dir`` go; ``max_steps`` wins over ``epochs``."""

    output: str = ""
    name: str = "pllava-lora"
    max_steps: int | None = None
    epochs: int = 1
    checkpoint_every: int = 50
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: sized from the cluster beside the decode actor
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if not self.output:
            out.append("run.output is required")
        if self.max_steps is not None and self.max_steps < 1:
            out.append("run.max_steps must be >= 1")
        if self.epochs < 1 or self.checkpoint_every < 1 or self.num_workers < 1:
            out.append("run.epochs, run.checkpoint_every and run.num_workers must be >= 1")
        return out


@dataclass
class TrainConfig:
    model: str = "tiny"
    weights_dir: str | None = None
    lora_alpha_of_weights: float | None = None  # to load a published folder's un-merged LoRA as the start
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(num_frames=16, mode="random"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    augment_flip: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        problems = self.data.problems() + self.lora.problems() + self.optim.problems() + self.run.problems()
        if problems:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """Nested sections like :class:`pipeline.config.JobConfig`; every problem reported at once."""
        return config_from_dict(cls, raw, "training config")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["storage_options"] = redact(data["storage_options"])
        return data
