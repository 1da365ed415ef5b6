"""Typed configuration of a LoRA + projector fine-tuning run (defaults: the PLLaVA recipe)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from model.settings import MAX_BATCH, MAX_SEED, MAX_TOKENS, MAX_WORKERS, Settings, load_settings
from pipeline.config import SecretOptions
from pipeline.frames import SamplingConfig
from pipeline.io.masking import StorageOptions, redacted_config

DATA_KINDS = ("videochat2", "captions")


class DataConfig(Settings):
    """``videochat2``: a JSON list of ``{"video": rel_path, "QA": [{"i", "q", "a"}, ...]}`` with videos under
    ``video_root``; ``captions``: the recaption pipeline's Parquet output (rows with a caption)."""

    uri: str = Field(min_length=1)
    kind: Literal[DATA_KINDS + ("auto",)] = "auto"
    video_root: str | None = None
    max_text_tokens: int = Field(512, ge=16, le=MAX_TOKENS)


class LoraSettings(Settings):
    r: int = Field(128, ge=1, le=4096)
    alpha: float = Field(32.0, gt=0, le=10_000)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), min_length=1)


Beta = Annotated[float, Field(ge=0, lt=1)]  # an AdamW beta: 1 or more never forgets, and diverges


class OptimConfig(Settings):
    """AdamW with no decay on biases and 1-D parameters; cosine schedule with linear warmup and a floor."""

    lr: float = Field(2e-5, gt=0, le=1)
    weight_decay: float = Field(0.02, ge=0, le=10)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.25, ge=0, le=1)
    max_grad_norm: float | None = Field(None, gt=0, le=1e6)  # None: no clipping
    grad_accum_steps: int = Field(1, ge=1, le=65536)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)  # per worker, per micro-step
    gradient_checkpointing: bool = False


class TrainRunConfig(Settings):
    """The ``run`` section: where checkpoints and the exported ``weights_dir`` go; ``max_steps`` wins over
    ``epochs``. (Not ``ray.train.RunConfig``, which the trainer builds from it.)"""

    output: str = Field(min_length=1)
    name: str = "pllava-lora"
    max_steps: int | None = Field(None, ge=1, le=10**9)
    epochs: int = Field(1, ge=1, le=100_000)
    checkpoint_every: int = Field(50, ge=1, le=10**9)
    num_workers: int = Field(1, ge=1, le=MAX_WORKERS)
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, le=1024)  # None: sized from the cluster beside the decode
    # actor
    seed: int = Field(0, ge=0, le=MAX_SEED)


class TrainConfig(Settings):
    model: str = "tiny"
    weights_dir: str | None = None
    lora_alpha_of_weights: float | None = Field(None, ge=0, le=10_000)  # to load a published folder's un-merged LoRA as the start
    data: DataConfig
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(num_frames=16, mode="random"))
    lora: LoraSettings = Field(default_factory=LoraSettings)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: TrainRunConfig
    augment_flip: bool = False
    storage_options: SecretOptions = Field(default_factory=StorageOptions)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *more: dict[str, Any]) -> "TrainConfig":
        """Nested sections like :class:`pipeline.config.JobConfig` (later dicts win); every problem at once."""
        return load_settings(cls, raw, *more, label="training config")

    def to_dict(self, redacted: bool = True) -> dict[str, Any]:
        """Plain data. ``redacted`` (the default) masks credentials as :meth:`pipeline.config.JobConfig.to_dict`
        does: ``storage_options`` by key and value, every other string (``data.uri``, ``run.output``, ...) by
        value shape (URL user info, signed URLs)."""
        return redacted_config(self) if redacted else self.model_dump(mode="json")
