"""Batched captioning: a batch of sampled videos + one prompt -> one caption per video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor


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


@dataclass(frozen=True)
class CaptionResult:
    text: str
    num_tokens: int  # generated tokens, end-of-answer token included
    truncated: bool  # stopped by max_new_tokens rather than by an end-of-answer token


def _count_tokens(new_ids: torch.Tensor, stop_ids: list[int], pad_id: int) -> tuple[list[int], list[bool]]:
    counts, truncated = [], []
    stops = torch.tensor(stop_ids, device=new_ids.device)
    for row in new_ids:
        hit = torch.isin(row, stops).nonzero()
        if len(hit):
            counts.append(int(hit[0]) + 1)
            truncated.append(False)
        else:
            counts.append(int((row != pad_id).sum()))
            truncated.append(True)
    return counts, truncated


def generate_captions(
    model: PllavaForConditionalGeneration,
    processor: PllavaProcessor,
    frames_batch: np.ndarray | torch.Tensor,
    prompt: str | Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
) -> list[CaptionResult]:
    """Caption B videos in one ``generate`` call.

    Args:
        frames_batch: ``uint8 (B, T, H, W, 3)``; normalised on the model's device.
        prompt: the user query (rendered with the processor's template), one for all or one per video.
    """
    num_videos = len(frames_batch)
    queries = [prompt] * num_videos if isinstance(prompt, str) else list(prompt)
    rendered = [processor.render(q) for q in queries]
    inputs = processor(rendered, frames_batch, device=model.device, dtype=model.dtype)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    stop_ids = processor.stop_token_ids
    pad_id = processor.tokenizer.pad_token_id
    new_ids = model.generate(
        **inputs, eos_token_id=stop_ids, pad_token_id=pad_id, **settings.generate_kwargs()
    )
    texts = processor.decode(new_ids)
    counts, truncated = _count_tokens(new_ids, stop_ids, pad_id)
    return [CaptionResult(t, n, cut) for t, n, cut in zip(texts, counts, truncated)]


def caption_videos(
    model: PllavaForConditionalGeneration,
    processor: PllavaProcessor,
    frames_batch: np.ndarray | torch.Tensor,
    prompt: str | Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
) -> list[str]:
    """Caption texts of a batch of videos (see :func:`generate_captions`)."""
    return [r.text for r in generate_captions(model, processor, frames_batch, prompt, settings)]
