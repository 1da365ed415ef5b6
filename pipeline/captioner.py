"""Captioner stage (GPU actor pool; CPU for tests and demos): sampled frames -> captions, batched."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from model import GenerationSettings, VllmSettings, generate_captions, load_pllava
from model.loading import caption_settings
from model.tiny import resolve_model_dir
from model.prompts import PromptText, prompt_id
from pipeline import schema as S
from pipeline.metrics import record_caption_batch
from pipeline.config import ModelConfig
from pipeline.quality import CaptionFlagger, QualityThresholds
from pipeline.sampler import frames_from_bytes

logger = logging.getLogger(__name__)

CAPTION_COLUMNS = {
    S.CAPTION: pa.string(),
    S.MODEL: pa.string(),
    S.PROMPT_ID: pa.string(),
    S.NUM_FRAMES: pa.int32(),
    S.POOLING: pa.string(),
    S.NUM_TOKENS: pa.int32(),
    S.TRUNCATED: pa.bool_(),
    S.CAPTION_S: pa.float64(),
}


def model_label(model_setting: str, name: str, fingerprint: str) -> str:
    """What rows record as ``model``: the folder name(s) (``tiny`` for the tiny model) and the weights'
    fingerprint."""
    return f"{'tiny' if model_setting == 'tiny' else name}@{fingerprint}"


def caption_identity(model_cfg: ModelConfig, prompt: PromptText) -> tuple[str, str]:
    """The ``(model, prompt_id)`` a caption stage with these settings writes, without loading the model
    (weight file headers and the tokenizer only): how a run tells rows it would write from older ones."""
    from transformers import AutoTokenizer

    from model.loading import weights_identity
    from model.prompts import get_template, template_for_tokenizer

    model_dir = resolve_model_dir(model_cfg.model)
    name, fingerprint = weights_identity(model_dir, model_cfg.weights_dir, model_cfg.lora_alpha)
    template = (get_template(model_cfg.template) if model_cfg.template
                else template_for_tokenizer(AutoTokenizer.from_pretrained(model_dir)))
    return model_label(model_cfg.model, name, fingerprint), prompt_id(template, prompt.layout(template))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class CaptionFailure:
    """A video the model failed on: ``reason`` (``out_of_memory`` or ``model_error``) and the row's error text."""

    reason: str
    message: str


def failure(exc: BaseException) -> CaptionFailure:
    """The failure record of a video the model raised ``exc`` on."""
    reason = "out_of_memory" if _is_out_of_memory(exc) else "model_error"
    text = (str(exc).splitlines() or [""])[0][:300]
    return CaptionFailure(reason, f"caption: {type(exc).__name__}: {text}")


def load_for_captioning(model_cfg: ModelConfig, num_frames: int | None = None, device: str | None = None):
    """``load_pllava`` as captioning uses it (the job's caption stage and ``pllava-caption``): the model settings
    mapped in one place, with a published checkpoint's reference frames and pooling where none are given.

    Returns:
        ``(model, processor)``.
    """
    dtype = getattr(torch, model_cfg.dtype) if model_cfg.dtype else None
    model_dir = resolve_model_dir(model_cfg.model)
    num_frames, pooling_shape = caption_settings(model_dir, num_frames, model_cfg.pooling_shape)
    return load_pllava(model_dir, weights_dir=model_cfg.weights_dir, lora_alpha=model_cfg.lora_alpha, device=device,
                       dtype=dtype, attn_implementation=model_cfg.attn_implementation, num_frames=num_frames,
                       pooling_shape=pooling_shape, template=model_cfg.template)


# Room the vllm engine keeps for each row's own query and reply prefix (per-row prompts), beyond the layout.
PER_ROW_PROMPT_TOKENS = 1024


class _CaptionStage:
    """What both engines share: the model load, the names recorded per row, and the row assembly."""

    ENGINE = "hf"

    def __init__(self, model_cfg: ModelConfig, generation: GenerationSettings, prompt: PromptText, num_frames: int,
                 image_size: int, device: str | None = None, quality: QualityThresholds = QualityThresholds()) -> None:
        self.model, self.processor = load_for_captioning(model_cfg, num_frames, device)
        if image_size != self.model.config.image_size:
            raise ValueError(f"frames are sampled at {image_size}px but the vision tower takes "
                             f"{self.model.config.image_size}px")
        self.generation = generation
        self.prompt = prompt
        self.processor.system_prompt = prompt.system
        self.num_frames = num_frames
        self.image_size = image_size
        self.model_name = model_label(model_cfg.model, self.model.name_or_path, self.model.fingerprint)
        self.rendered = prompt.layout(self.processor.template)
        self.prompt_id = prompt_id(self.processor.template, self.rendered)
        self.pooling = "x".join(str(x) for x in self.model.config.pooling_shape)
        self.flagger = CaptionFlagger([t for t in (self.rendered, prompt.system, prompt.query) if t], quality)

    def _good_frames(self, batch: pa.Table) -> tuple[list[int], list[np.ndarray]]:
        S.require_columns(batch.column_names, [S.FRAMES, S.ERROR], "Captioner")
        good = [i for i, e in enumerate(batch.column(S.ERROR).to_pylist()) if e is None]
        blobs = batch.column(S.FRAMES).to_pylist()
        return good, [frames_from_bytes(blobs[i], self.num_frames, self.image_size) for i in good]

    def _asks(self, batch: pa.Table, good: list[int]) -> tuple[str | list[str], str | list[str]]:
        """The query and reply prefix of the good rows: the run's, or each row's own (per-row prompts)."""
        columns = [c for c in (self.prompt.query_column, self.prompt.reply_prefix_column) if c]
        if not columns:
            return self.prompt.query, ""
        S.require_columns(batch.column_names, columns, "Captioner (per-row prompts)")
        return (_row_texts(batch, self.prompt.query_column, good, self.prompt.query),
                _row_texts(batch, self.prompt.reply_prefix_column, good, ""))

    def _rows(self, batch: pa.Table, good: list[int], outcomes: list) -> pa.Table:
        """The batch with caption columns; ``outcomes`` holds per good row ``(CaptionResult, seconds)`` or
        ``(CaptionFailure, 0.0)`` for a video the model failed on."""
        errors = batch.column(S.ERROR).to_pylist()
        stages = batch.column(S.ERROR_STAGE).to_pylist()
        reasons = batch.column(S.ERROR_REASON).to_pylist()
        new = {name: [None] * batch.num_rows for name in CAPTION_COLUMNS}
        if good:
            record_caption_batch(self.ENGINE, len(good))
        for i, (result, seconds) in zip(good, outcomes):
            if isinstance(result, CaptionFailure):
                reasons[i], errors[i] = result.reason, result.message
                stages[i] = S.STAGE_CAPTION
                continue
            new[S.CAPTION][i] = result.text
            new[S.NUM_TOKENS][i] = result.num_tokens
            new[S.TRUNCATED][i] = result.truncated
            new[S.CAPTION_S][i] = seconds
        for i in range(batch.num_rows):
            new[S.MODEL][i] = self.model_name
            new[S.PROMPT_ID][i] = self.prompt_id
            new[S.NUM_FRAMES][i] = self.num_frames
            new[S.POOLING][i] = self.pooling
        columns = S.error_columns(errors, stages, reasons)
        columns.update({name: (kind, new[name]) for name, kind in CAPTION_COLUMNS.items()})
        return self.flagger.add_columns(S.with_columns(batch.drop_columns([S.FRAMES]), columns))


def _row_texts(batch: pa.Table, column: str | None, rows: list[int], default: str) -> list[str]:
    """The text of ``column`` in each of ``rows``; ``default`` where it is blank (or there is no column)."""
    values = batch.column(column).to_pylist() if column else [None] * batch.num_rows
    return [default if values[i] is None or not str(values[i]).strip() else str(values[i]) for i in rows]


class Captioner(_CaptionStage):
    """The ``hf`` engine: loads the model once per actor; each call captions the batch's good rows in one
    transformers ``generate``.

    A batch that runs out of GPU memory is split in halves and retried, one that fails otherwise is
    retried video by video; a single video that still fails becomes an error row of stage ``caption``.
    """

    def _caption(self, frames_list: list, queries: str | list[str], prefixes: str | list[str]) -> list:
        """``(CaptionResult, seconds)`` per video, or ``(CaptionFailure, 0.0)`` for a video that failed.

        Out of memory: the batch is halved and retried. Any other model error: the videos are retried one
        by one, so one bad input cannot take its batch (or the job) down with it.
        """
        started = time.perf_counter()
        try:
            results = generate_captions(self.model, self.processor, torch.from_numpy(np.stack(frames_list)),
                                        queries, self.generation, prefixes)
            elapsed = (time.perf_counter() - started) / len(frames_list)
            return [(r, elapsed) for r in results]
        except (RuntimeError, ValueError) as exc:
            oom = _is_out_of_memory(exc)
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(frames_list) == 1:
                return [(failure(exc), 0.0)]
            half = len(frames_list) // 2 if oom else 1
            logger.warning("%s at batch %d; retrying in parts", "out of memory" if oom else type(exc).__name__,
                           len(frames_list))
            def part(values, i):
                return values if isinstance(values, str) else values[i : i + half]
            return [item for i in range(0, len(frames_list), half)
                    for item in self._caption(frames_list[i : i + half], part(queries, i), part(prefixes, i))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, frames = self._good_frames(batch)
        return self._rows(batch, good, self._caption(frames, *self._asks(batch, good)) if frames else [])


class VllmCaptioner(_CaptionStage):
    """The ``vllm`` engine: the vision path in torch, the language model on vLLM's async engine.

    ``__call__`` is a coroutine, so one actor holds several batches in flight (the stage's
    ``max_concurrency``) and vLLM's continuous batching keeps the GPU busy past each batch's longest
    caption. A video vLLM rejects or fails on becomes an error row; an engine that died twice (it is
    rebuilt once) ends the actor's process so Ray restarts it and resends the batch.
    """

    ENGINE = "vllm"

    def __init__(
        self,
        model_cfg: ModelConfig,
        generation: GenerationSettings,
        prompt: PromptText,
        num_frames: int,
        image_size: int,
        device: str | None = None,
        quality: QualityThresholds = QualityThresholds(),
        vllm_settings: VllmSettings = VllmSettings(),
    ) -> None:
        from model.vllm_engine import VllmCaptionEngine

        super().__init__(model_cfg, generation, prompt, num_frames, image_size, device, quality)
        prompt_tokens = len(self.processor.tokenizer(self.rendered)["input_ids"])
        if prompt.query_column or prompt.reply_prefix_column:  # each row's text is only known per batch
            prompt_tokens += PER_ROW_PROMPT_TOKENS
        self.engine = VllmCaptionEngine(self.model, self.processor, generation, vllm_settings,
                                        max_prompt_tokens=prompt_tokens)

    def __del__(self) -> None:
        # Ray Data drops its stage object when the actor exits gracefully (the end of a segment, or of the job):
        # stop vLLM's engine process now, so the GPU memory is free for the next segment's actor.
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - the actor is going away; the process exit frees the rest
                logger.warning("the vLLM engine did not shut down cleanly", exc_info=True)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        from model.vllm_engine import EngineDied

        good, frames = self._good_frames(batch)
        outcomes: list = []
        if frames:
            started = time.perf_counter()
            try:
                results = await self.engine.acaption(np.stack(frames), *self._asks(batch, good))
            except EngineDied:
                logger.critical("the vLLM engine died twice; ending this actor so Ray restarts it")
                os._exit(1)
            elapsed = (time.perf_counter() - started) / len(frames)
            outcomes = [((failure(r), 0.0) if isinstance(r, BaseException) else (r, elapsed)) for r in results]
        return self._rows(batch, good, outcomes)
