"""Batched captioning: a batch of sampled videos + one prompt -> one caption per video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.settings import GenerationSettings


@dataclass(frozen=True)
class CaptionResult:
    text: str
    num_tokens: int  # generated tokens, end-of-answer token included
    truncated: bool  # stopped by max_new_tokens rather than by an end-of-answer token


def finished_rows(new_ids: torch.Tensor, stop_ids: Sequence[int]) -> list[list[int]]:
    """``generate``'s padded ``(B, n)`` new ids -> each row's own tokens: up to and including its first
    end-of-answer token, or the whole row when it has none (it ran to ``max_new_tokens``)."""
    stops = set(stop_ids)
    rows = []
    for row in new_ids.tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:cut])
    return rows


def results_from_token_ids(processor: PllavaProcessor, rows: Sequence[Sequence[int]],
                           reply_prefixes: Sequence[str] | None = None) -> list[CaptionResult]:
    """Generated token ids (one list per video, the end-of-answer token included when one was generated) ->
    caption results. The one code path after generation for every engine: text (after each video's reply
    prefix, :meth:`PllavaProcessor.decode`), token counts, truncation."""
    stops = set(processor.stop_token_ids)
    texts = processor.decode(rows, reply_prefixes)
    return [CaptionResult(text, len(row), not (len(row) and row[-1] in stops)) for text, row in zip(texts, rows)]


def per_video(value: str | Sequence[str], num_videos: int, what: str) -> list[str]:
    """One text for every video, or the given list (which must have one per video)."""
    values = [value] * num_videos if isinstance(value, str) else list(value)
    if len(values) != num_videos:
        raise ValueError(f"{len(values)} {what} for {num_videos} videos")
    return values


def generate_captions(
    model: PllavaForConditionalGeneration,
    processor: PllavaProcessor,
    frames_batch: np.ndarray | torch.Tensor,
    prompt: str | Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
    reply_prefix: str | Sequence[str] = "",
) -> list[CaptionResult]:
    """Caption B videos in one ``generate`` call.

    Args:
        frames_batch: ``uint8 (B, T, H, W, 3)``; normalised on the model's device.
        prompt: the user query (rendered with the processor's template), one for all or one per video.
        reply_prefix: text each reply starts with (the result holds what the model wrote after it), one for
            all or one per video.
    """
    count = len(frames_batch)
    prefixes = per_video(reply_prefix, count, "reply prefixes")
    rendered = [processor.render(q, p) for q, p in zip(per_video(prompt, count, "prompts"), prefixes)]
    inputs = processor(rendered, frames_batch, device=model.device, dtype=model.dtype)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    stop_ids = processor.stop_token_ids
    new_ids = model.generate(
        **inputs, eos_token_id=stop_ids, pad_token_id=processor.tokenizer.pad_token_id,
        **settings.generate_kwargs()
    )
    return results_from_token_ids(processor, finished_rows(new_ids, stop_ids), prefixes)


def caption_videos(
    model: PllavaForConditionalGeneration,
    processor: PllavaProcessor,
    frames_batch: np.ndarray | torch.Tensor,
    prompt: str | Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
    reply_prefix: str | Sequence[str] = "",
) -> list[str]:
    """Caption texts of a batch of videos (see :func:`generate_captions`)."""
    return [r.text for r in generate_captions(model, processor, frames_batch, prompt, settings, reply_prefix)]
