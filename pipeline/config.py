"""Typed configuration of a recaption job, validated as a whole before the cluster starts.

Only ``jobs/`` parses flags and YAML; they build a :class:`JobConfig` with :meth:`JobConfig.from_dict`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainSerializer, field_validator, model_validator

from model.prompts import TEMPLATES, PromptText, read_prompt, read_system_prompt
from model.settings import (ENGINES, MAX_BATCH, MAX_WAIT_S, MAX_WORKERS, GenerationSettings, Settings, VllmSettings,
                            load_settings)
from pipeline.frames import SamplingConfig
from pipeline.io.masking import StorageOptions, redacted_config
from pipeline.io.storage import SPOOL_ABOVE_MB, RetryPolicy
from pipeline.io.storage_options import storage_option_problems
from pipeline.quality import QualityThresholds

# Storage options hold credentials: typed so that showing them (repr, str, logs, a config's repr) masks them.
SecretOptions = Annotated[dict[str, Any], AfterValidator(StorageOptions), PlainSerializer(dict)]

LIST_FORMATS = ("auto", "txt", "csv", "jsonl", "parquet", "annotations", "prefix")
OUTPUT_FORMATS = ("parquet", "webdataset")
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "gif")
# Clip windows shorter than this are refused: a few frames each, and a tiny value (1e-300) would make a
# practically endless number of them. The longest window or stride: a week (a video shorter than a window
# is one row).
MIN_WINDOW_S = 0.5
MAX_WINDOW_S = MAX_WAIT_S


class SourceConfig(Settings):
    """Where the list of videos comes from.

    ``input`` is a list file (txt, csv, jsonl, parquet, or an Inter4K-style ``annotations.json``) or a
    prefix to list. ``videos_prefix`` resolves annotation names and relative paths in lists (default:
    the list's folder). ``extensions``: candidates tried in order for annotation names, and the
    files kept when listing a prefix.
    """

    input: str = Field(min_length=1, description="a list file or a prefix")
    format: Literal[LIST_FORMATS] = "auto"
    videos_prefix: str | None = None
    extensions: tuple[str, ...] = Field(("mp4", "mkv", "webm"), min_length=1)
    uri_column: str | None = None
    id_column: str = "video_id"
    name_key: str = "video_name"
    limit: int | None = Field(None, ge=1, le=10**12)
    allow_empty: bool = False  # an empty list is a finished run, not an error
    # Clip windows (pipeline.windows): each video becomes rows of window_s seconds every window_stride_s
    # (default: back to back, at most window_s: windows never leave gaps); window_scenes also cuts at scene
    # changes (PySceneDetect).
    window_s: float | None = Field(None, ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    window_stride_s: float | None = Field(None, ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    window_scenes: bool = False

    @model_validator(mode="after")
    def _windows_consistent(self) -> "SourceConfig":
        if self.window_stride_s is not None and self.window_s is None:
            raise ValueError("window_stride_s needs window_s")
        if self.window_stride_s is not None and self.window_stride_s > self.window_s:
            # The seconds between one window's end and the next start would never be captioned, and the last
            # window would stretch to the end of the video: refused rather than done silently.
            raise ValueError(f"window_stride_s ({self.window_stride_s:g}) must not exceed window_s "
                             f"({self.window_s:g}): the seconds between windows would never be captioned")
        if self.window_scenes:
            import importlib.util

            if importlib.util.find_spec("scenedetect") is None:
                raise ValueError("window_scenes needs PySceneDetect: pip install scenedetect (or this project's [scenes] extra)")
        return self

    @property
    def windows(self) -> bool:
        return self.window_s is not None or self.window_scenes


PoolingSize = Annotated[int, Field(ge=1, le=1024)]


class ModelConfig(Settings):
    """``model`` is a model folder or ``tiny`` (an offline random model built on the spot).

    ``engine``: ``hf`` (transformers ``generate``, the reference path), ``vllm`` (the language model on vLLM,
    tuned in the ``vllm`` section) or ``auto`` (vllm on a GPU where it is installed, else hf).
    """

    model: str = Field("tiny", min_length=1)
    weights_dir: str | None = None
    lora_alpha: float | None = Field(None, ge=0, le=10_000)
    pooling_shape: tuple[PoolingSize, PoolingSize, PoolingSize] | None = None
    template: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    engine: Literal[ENGINES] = "auto"

    @field_validator("pooling_shape")
    @classmethod
    def _positive_pooling(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError(f"must be 3 positive ints, got {list(value)}")
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value):
        if value is not None and value not in TEMPLATES:
            raise ValueError(f"must be one of {sorted(TEMPLATES)} (or null: from the tokenizer), got {value!r}")
        return value


class ResourceConfig(Settings):
    """How many actors and what each reserves. ``None`` means: sized from the cluster at start
    (:func:`pipeline.resources.plan_pipeline`): one caption actor per GPU (one on CPU otherwise), decode
    actors on the CPUs that are left. Explicit values that the cluster cannot hold stop the job at once.
    """

    batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    decode_concurrency: int | None = Field(None, ge=1, le=MAX_WORKERS)
    decode_num_cpus: float | None = Field(None, ge=0, le=1024)
    decode_io_threads: int = Field(4, ge=1, le=256)
    # Larger objects are streamed to a local file before decoding (0: always).
    decode_max_in_memory_mb: float = Field(SPOOL_ABOVE_MB, ge=0, le=65536)
    # One video's decode past this: decode/timeout (None: none).
    decode_timeout_s: float | None = Field(600.0, gt=0, le=MAX_WAIT_S)
    caption_concurrency: int | None = Field(None, ge=1, le=MAX_WORKERS)
    caption_num_gpus: float | None = Field(None, ge=0, le=64)
    caption_num_cpus: float | None = Field(None, ge=0, le=1024)
    rows_per_file: int = Field(256, ge=1, le=1_000_000)
    # A list with more rows to do than this runs in segments of about this many, each its own Ray Data execution
    # (rows split by a hash of their id, so a repeated id stays in one segment): Ray Data keeps bookkeeping in the
    # driver for every block it makes, and it is freed after each segment. Each segment starts the actor pools
    # again (one model load per caption actor).
    segment_rows: int = Field(1_000_000, ge=1, le=10**12)
    ray_num_cpus: int | None = Field(None, ge=1, le=MAX_WORKERS)
    stall_warn_s: float = Field(300.0, gt=0, le=MAX_WAIT_S)  # no output for this long: log what the cluster
    # waits on (again each period)
    stall_fail_s: float | None = Field(None, gt=0, le=MAX_WAIT_S)  # no output for this long: stop the job with
    # that diagnosis
    # An autoscaling cluster grows when actors wait: skip the fit checks (the stall watchdog still reports waits).
    autoscaling: bool = False


class OutputConfig(Settings):
    """``output``: a folder or object-store prefix. Parquet is always written (the system of record);
    ``formats`` may add ``webdataset`` shards of the captioned rows."""

    output: str = Field(min_length=1, description="a folder or object-store prefix")
    formats: tuple[Literal[OUTPUT_FORMATS], ...] = ("parquet",)
    keyframes: bool = True
    retry_errors: bool = False
    # A video counts as done only when its row was written with this run's model and prompt_id: rerunning into
    # the same output with a new checkpoint, LoRA, template or prompt captions it again (newest row kept).
    recaption_changed: bool = False
    # The output's lease (pipeline.lease): a job whose heartbeat is older than this is taken over; writers stop
    # writing once their own heartbeat is half this old.
    lease_ttl_s: float = Field(120.0, ge=1.0, le=86400.0)
    # After a run, merge small batch files into files of about compact_target_mb (pipeline.compaction).
    compact_after: bool = False
    compact_target_mb: float = Field(256.0, ge=0.001, le=4096.0)

    @field_validator("formats")
    @classmethod
    def _parquet_always(cls, value):
        if "parquet" not in value:
            raise ValueError("must include parquet (the system of record; webdataset is written beside it)")
        return tuple(dict.fromkeys(value))


class JobConfig(Settings):
    """A recaption job, validated as a whole before the cluster starts."""

    source: SourceConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)
    output: OutputConfig
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    quality: QualityThresholds = Field(default_factory=QualityThresholds)
    prompt: str | None = None
    prompt_file: str | None = None
    system_prompt: str | None = None  # None: the project's default; "": no system prompt
    system_prompt_file: str | None = None
    # Per-row prompts: list columns with each row's own query (blank: the job's prompt) and the text its reply
    # is made to start with (evaluation questions; see jobs/evaluate.py).
    prompt_column: str | None = None
    reply_prefix_column: str | None = None
    storage_options: SecretOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _consistent(self) -> "JobConfig":
        problems = []
        if self.model.engine == "vllm" and self.generation.num_beams != 1:
            problems.append("the vllm engine does not do beam search: set generation.num_beams to 1 or use "
                            "model.engine hf")
        if self.prompt is not None and self.prompt_file is not None:
            problems.append("give prompt or prompt_file, not both")
        if self.system_prompt is not None and self.system_prompt_file is not None:
            problems.append("give system_prompt or system_prompt_file, not both")
        # Options the list's or the output's filesystem would refuse (s3fs hands unknown ones to aiobotocore).
        problems += storage_option_problems(self.storage_options, [self.source.input, self.source.videos_prefix,
                                                                   self.output.output])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def prompt_text(self) -> PromptText:
        """What the caption stage asks (prompt and system prompt read from their files where given)."""
        return PromptText(read_prompt(self.prompt, self.prompt_file),
                          read_system_prompt(self.system_prompt, self.system_prompt_file),
                          self.prompt_column, self.reply_prefix_column)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *more: dict[str, Any]) -> "JobConfig":
        """Build from nested sections (``source:``, ``sampling:``, ...), later dicts overriding earlier ones key
        by key (preset < YAML < flags).

        Raises:
            ValueError: every problem at once, each with its key path (unknown sections and keys included).
        """
        return load_settings(cls, raw, *more, label="job config")

    def to_dict(self, redacted: bool = True) -> dict[str, Any]:
        """Plain data. ``redacted`` (the default) masks credentials: ``storage_options`` by key and value, every
        other string (``source.input``, ``output.output``, ...) by value shape (URL user info, signed URLs)."""
        return redacted_config(self) if redacted else self.model_dump(mode="json")
