"""Typed configuration of a recaption job, validated as a whole before the cluster starts.

Only ``jobs/`` parses flags and YAML; they build a :class:`JobConfig` with :meth:`JobConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from model.prompts import TEMPLATES
from model.settings import ENGINES, GenerationSettings, VllmSettings
from pipeline.frames import SamplingConfig
from pipeline.quality import QualityThresholds
from pipeline.io.masking import mask_values, redact
from pipeline.io.storage import RetryPolicy

LIST_FORMATS = ("auto", "txt", "csv", "jsonl", "parquet", "annotations", "prefix")
OUTPUT_FORMATS = ("parquet", "webdataset")
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "gif")


@dataclass
class SourceConfig:
    """Where the list of videos comes from.

    ``input`` is a list file (txt, csv, jsonl, parquet, or an Inter4K-style ``annotations.json``) or a
    prefix to list. ``videos_prefix`` resolves annotation names and relative paths in lists (default:
    the list's folder). ``extensions``: candidates tried in order for annotation names, and the
    files kept when listing a prefix.
    """

    input: str = ""
    format: str = "auto"
    videos_prefix: str | None = None
    extensions: tuple[str, ...] = ("mp4", "mkv", "webm")
    uri_column: str | None = None
    id_column: str = "video_id"
    name_key: str = "video_name"
    limit: int | None = None
    allow_empty: bool = False  # an empty list is a finished run, not an error

    def problems(self) -> list[str]:
        out = []
        if not self.input:
            out.append("source.input is required (a list file or a prefix)")
        if self.format not in LIST_FORMATS:
            out.append(f"source.format must be one of {LIST_FORMATS}, got {self.format!r}")
        if not self.extensions:
            out.append("source.extensions must not be empty")
        if self.limit is not None and self.limit < 1:
            out.append(f"source.limit must be >= 1, got {self.limit}")
        return out


@dataclass
class ModelConfig:
    """``model`` is a model folder or ``tiny`` (an offline random model built on the spot).

    ``engine``: ``hf`` (transformers ``generate``, the reference path), ``vllm`` (the language model on vLLM,
    tuned in the ``vllm`` section) or ``auto`` (vllm on a GPU where it is installed, else hf).
    """

    model: str = "tiny"
    weights_dir: str | None = None
    lora_alpha: float | None = None
    pooling_shape: tuple[int, int, int] | None = None
    template: str | None = None
    dtype: str | None = None
    attn_implementation: str = "sdpa"
    engine: str = "auto"

    def problems(self) -> list[str]:
        out = []
        if self.engine not in ENGINES:
            out.append(f"model.engine must be one of {ENGINES}, got {self.engine!r}")
        if not self.model:
            out.append("model.model is required (a model folder or 'tiny')")
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            out.append(f"model.dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            out.append("model.attn_implementation must be sdpa, eager or flash_attention_2, "
                       f"got {self.attn_implementation!r}")
        if self.pooling_shape is not None and (len(self.pooling_shape) != 3 or min(self.pooling_shape) < 1):
            out.append(f"model.pooling_shape must be 3 positive ints, got {self.pooling_shape}")
        return out


@dataclass
class ResourceConfig:
    """How many actors and what each reserves. ``None`` means: sized from the cluster at start
    (:func:`pipeline.resources.plan_pipeline`): one caption actor per GPU (one on CPU otherwise), decode
    actors on the CPUs that are left. Explicit values that the cluster cannot hold stop the job at once.
    """

    batch_size: int = 8
    decode_concurrency: int | None = None
    decode_num_cpus: float | None = None
    decode_io_threads: int = 4
    decode_max_in_memory_mb: float = 64  # larger objects are streamed to a local file before decoding
    decode_timeout_s: float | None = 600.0  # one video's decode past this: decode/timeout (None: no limit)
    caption_concurrency: int | None = None
    caption_num_gpus: float | None = None
    caption_num_cpus: float | None = None
    rows_per_file: int = 256
    ray_num_cpus: int | None = None
    stall_warn_s: float = 300.0  # no output for this long: log what the cluster waits on (again each period)
    stall_fail_s: float | None = None  # no output for this long: stop the job with that diagnosis
    # An autoscaling cluster grows when actors wait: skip the fit checks (the stall watchdog still reports waits).
    autoscaling: bool = False

    def problems(self) -> list[str]:
        out = []
        for name in ("batch_size", "decode_io_threads", "rows_per_file"):
            if getattr(self, name) < 1:
                out.append(f"resources.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("decode_concurrency", "caption_concurrency", "ray_num_cpus"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                out.append(f"resources.{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_timeout_s is not None and self.decode_timeout_s <= 0:
            out.append(f"resources.decode_timeout_s must be > 0 or null, got {self.decode_timeout_s}")
        if self.stall_warn_s <= 0 or (self.stall_fail_s is not None and self.stall_fail_s <= 0):
            out.append("resources.stall_warn_s and resources.stall_fail_s must be > 0")
        for name in ("decode_num_cpus", "caption_num_cpus", "caption_num_gpus"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                out.append(f"resources.{name} must be >= 0, got {getattr(self, name)}")
        return out


@dataclass
class OutputConfig:
    output: str = ""
    formats: tuple[str, ...] = ("parquet",)
    keyframes: bool = True
    retry_errors: bool = False
    # A video counts as done only when its row was written with this run's model and prompt_id: rerunning into
    # the same output with a new checkpoint, LoRA, template or prompt captions it again (newest row kept).
    recaption_changed: bool = False

    def problems(self) -> list[str]:
        out = []
        if not self.output:
            out.append("output.output is required (a folder or object-store prefix)")
        bad = [f for f in self.formats if f not in OUTPUT_FORMATS]
        if bad or not self.formats:
            out.append(f"output.formats must be a non-empty subset of {OUTPUT_FORMATS}, got {list(self.formats)}")
        return out


@dataclass
class JobConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    vllm: VllmSettings = field(default_factory=VllmSettings)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    prompt: str | None = None
    prompt_file: str | None = None
    system_prompt: str | None = None  # None: the project's default; "": no system prompt
    system_prompt_file: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "JobConfig":
        """Raises ValueError listing every problem at once."""
        problems = []
        for part in (self.source, self.model, self.resources, self.output, self.vllm):
            problems += part.problems()
        if self.model.engine == "vllm" and self.generation.num_beams != 1:
            problems.append("the vllm engine does not do beam search: set generation.num_beams to 1 or use "
                            "model.engine hf")
        if self.prompt is not None and self.prompt_file is not None:
            problems.append("give prompt or prompt_file, not both")
        if self.system_prompt is not None and self.system_prompt_file is not None:
            problems.append("give system_prompt or system_prompt_file, not both")
        if self.model.template is not None and self.model.template not in TEMPLATES:
            problems.append(f"model.template must be one of {sorted(TEMPLATES)} (or null: from the tokenizer), "
                            f"got {self.model.template!r}")
        if problems:
            raise ValueError("invalid job config:\n  - " + "\n  - ".join(problems))
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JobConfig":
        """Build from nested sections (``source:``, ``sampling:``, ...); every problem reported at once.

        Raises:
            ValueError: unknown sections or keys, invalid values.
        """
        return config_from_dict(cls, raw, "job config")

    def to_dict(self, redacted: bool = True) -> dict[str, Any]:
        """Plain data. ``redacted`` (the default) masks credentials: ``storage_options`` by key and value, every
        other string (``source.input``, ``output.output``, ...) by value shape (URL user info, signed URLs)."""
        data = dataclasses.asdict(self)
        if redacted:
            data = mask_values(data)
            data["storage_options"] = redact(self.storage_options)
        return data


def config_from_dict(cls, raw: dict[str, Any], label: str):
    """Build the dataclass ``cls`` from nested sections: each dataclass section starts from its defaults and
    takes the given keys; unknown sections or keys, construction errors and ``validate()`` problems are
    all collected and raised together as one ValueError."""
    problems: list[str] = []
    known = {f.name: f for f in fields(cls)}
    built: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key not in known:
            problems.append(f"unknown config section {key!r}; known: {sorted(known)}")
            continue
        factory = known[key].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        if not dataclasses.is_dataclass(default):
            built[key] = value
            continue
        names = {f.name for f in fields(default)}
        unknown = sorted(set(value or {}) - names)
        if unknown:
            problems.append(f"unknown keys in {key}: {unknown}; known: {sorted(names)}")
            continue
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in (value or {}).items()}
        try:
            built[key] = type(default)(**{**dataclasses.asdict(default), **given})
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: {exc}")
    config = cls(**built)
    try:
        config.validate()
    except ValueError as exc:
        problems += [line.strip()[2:] for line in str(exc).splitlines()[1:]]
    if problems:
        raise ValueError(f"invalid {label}:\n  - " + "\n  - ".join(problems))
    return config
