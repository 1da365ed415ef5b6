"""The ``vllm`` caption engine: the vision path in torch, the language model on vLLM.

PLLaVA is not a vLLM architecture, so the work is split at the prompt. The CLIP tower, projector and 3-D
pool run in torch (:meth:`PllavaForConditionalGeneration.encode_videos`); each prompt goes to vLLM as one
mixed prompt: text positions as token ids (vLLM embeds them with the same embedding table), the ``<image>``
token's expansion as the video's pooled embeddings. That is the sequence ``merge_video_tokens`` builds for
``generate``, so greedy captions in float32 are the same on both engines. Text stays token ids so the
system prompt before the video is a prefix vLLM can cache.

vLLM loads the language model alone, with any LoRA already merged, from a folder written once
(:func:`model.vllm_inputs.export_language_model`) per checkpoint fingerprint and dtype into a local cache (atomic, under a file lock, shared by every actor on
the node). After the export the torch copy of the language model is dropped: the actor holds only the
vision path beside vLLM.

Requests run on vLLM's async engine in a background event loop, so several batches are in flight at once
and continuous batching fills the slots a finished caption frees. Everything after generation (stop
handling, token counts, truncation) is :func:`model.captioning.results_from_token_ids`, shared with ``hf``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from model.captioning import per_video, results_from_token_ids
from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.settings import GenerationSettings, VllmSettings
from model.vllm_inputs import DTYPE_NAMES, export_language_model, kv_cache_bytes, mixed_prompt, sampling_params

logger = logging.getLogger(__name__)

MODEL_LEN_MARGIN = 32  # tokens of slack over the derived prompt + answer length


class EngineDied(RuntimeError):
    """vLLM's engine died again after one rebuild; the caller should let its process be restarted."""


class VllmCaptionEngine:
    """Captions batches of uint8 videos with the vision path in torch and the language model on vLLM.

    ``caption`` (blocking) and ``acaption`` (from any event loop) return, per video, a ``CaptionResult`` or
    the exception that video failed with; a vision error on a chunk is retried video by video. An engine
    that dies is rebuilt once and the affected videos are resent; a second death raises :class:`EngineDied`.
    """

    def __init__(
        self,
        model: PllavaForConditionalGeneration,
        processor: PllavaProcessor,
        generation: GenerationSettings,
        settings: VllmSettings = VllmSettings(),
        max_prompt_tokens: int = 256,
    ) -> None:
        self.processor = processor
        self.settings = settings
        self.image_token_id = model.config.image_token_index
        self.sampling = sampling_params(generation, processor.stop_token_ids)
        self.folder = export_language_model(model, processor, settings.cache_dir)
        text_config = model.config.text_config
        num_video = model.config.num_video_tokens
        limit = getattr(text_config, "max_position_embeddings", None) or 4096
        self.max_model_len = settings.max_model_len or min(
            limit, num_video + max_prompt_tokens + generation.max_new_tokens + MODEL_LEN_MARGIN)
        self._kv_bytes = None
        if settings.kv_cache_memory_gb is not None:
            self._kv_bytes = int(settings.kv_cache_memory_gb * 2**30)
        elif model.device.type == "cpu":
            self._kv_bytes = kv_cache_bytes(text_config, self.max_model_len, model.dtype, settings.max_num_seqs)
        # The actor keeps the vision path only; vLLM holds the language model.
        model.language_model = None
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        self.model = model
        self.dtype_name = DTYPE_NAMES[model.dtype]
        self._vision = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pllava-vision")
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="pllava-vllm-loop", daemon=True).start()
        self._rebuilt = False
        self._lock = asyncio.Lock()
        self._engine = self._on_loop(self._start_engine())

    # -- engine lifecycle --------------------------------------------------------------------------------
    def _engine_args(self):
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        kwargs = dict(
            model=self.folder,
            tokenizer=self.folder,
            dtype=self.dtype_name,
            enable_prompt_embeds=True,
            max_model_len=self.max_model_len,
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            kv_cache_dtype=s.kv_cache_dtype,
            enforce_eager=s.enforce_eager,
            disable_log_stats=True,
            seed=self.sampling.seed or 0,
        )
        if self._kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = self._kv_bytes
        if s.max_num_seqs is not None:
            kwargs["max_num_seqs"] = s.max_num_seqs
        if s.enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = s.enable_prefix_caching
        if s.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "mp"  # inside the actor, on the GPUs Ray gave it
        return AsyncEngineArgs(**kwargs)

    async def _start_engine(self):
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.model.device.type == "cpu":
            # Inside a Ray actor the thread budget is OMP_NUM_THREADS (Ray sets it from num_cpus); vLLM's own
            # binding would pin every core of the machine. Users may still set it explicitly.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        return AsyncLLM.from_engine_args(self._engine_args())

    def _on_loop(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _replace(self, dead_engine) -> None:
        """Rebuild a dead engine once; batches that saw the same death share that one rebuild."""
        async with self._lock:
            if self._engine is not dead_engine:
                return
            if self._rebuilt:
                raise EngineDied("the vLLM engine died again after one rebuild")
            self._rebuilt = True
            logger.error("the vLLM engine died; rebuilding it once")
            try:
                dead_engine.shutdown()
            except Exception:  # noqa: BLE001 - a dead engine may fail to shut down; the new one replaces it
                logger.exception("shutting down the dead vLLM engine failed")
            self._engine = await self._start_engine()

    def shutdown(self) -> None:
        """Stop the engine's processes and the loop thread (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            del engine
            gc.collect()  # vLLM's own finaliser runs now, not at interpreter exit
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._vision.shutdown(wait=False)

    # -- vision path ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, frames: np.ndarray | torch.Tensor) -> list:
        """``(B, T, H, W, 3)`` uint8 -> per video ``(N, D)`` CPU embeddings, or the exception it failed with."""
        out: list = []
        step = self.settings.vision_batch_size
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            try:
                out += list(self._encode_chunk(chunk))
            except (RuntimeError, ValueError) as exc:
                if len(chunk) == 1:
                    out.append(exc)
                    continue
                logger.warning("vision path failed on %d videos (%s); retrying one by one", len(chunk), exc)
                for i in range(len(chunk)):
                    try:
                        out += list(self._encode_chunk(chunk[i : i + 1]))
                    except (RuntimeError, ValueError) as one:
                        out.append(one)
        return out

    def _encode_chunk(self, chunk) -> torch.Tensor:
        pixels = self.processor.pixel_values(chunk, device=self.model.device, dtype=self.model.dtype)
        return self.model.encode_videos(pixels).cpu()  # (b, N, D)

    # -- generation ------------------------------------------------------------------------------------------
    def caption(self, frames: np.ndarray | torch.Tensor, queries: str | Sequence[str],
                reply_prefix: str | Sequence[str] = "") -> list:
        """Blocking: per video a ``CaptionResult`` or the exception that video failed with. ``reply_prefix``:
        text each reply starts with (one for all or one per video), as in :func:`generate_captions`."""
        return self._on_loop(self._run(frames, queries, reply_prefix))

    async def acaption(self, frames: np.ndarray | torch.Tensor, queries: str | Sequence[str],
                       reply_prefix: str | Sequence[str] = "") -> list:
        """:meth:`caption` from any event loop; many calls can be in flight at once."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._run(frames, queries, reply_prefix),
                                                                          self._loop))

    async def _run(self, frames, queries, reply_prefix) -> list:
        """On the engine's loop: vision work on its worker thread, then every video's request at once."""
        loop = asyncio.get_running_loop()
        prompts = await loop.run_in_executor(self._vision, self._prepare, frames, queries, reply_prefix)
        engine = self._engine
        tokens = await self._generate_all(engine, prompts)
        if any(_engine_dead(t) for t in tokens):
            await self._replace(engine)
            again = await self._generate_all(self._engine, [p if _engine_dead(t) else _Finished()
                                                            for p, t in zip(prompts, tokens)])
            tokens = [new if _engine_dead(old) else old for old, new in zip(tokens, again)]
            if any(_engine_dead(t) for t in tokens):
                raise EngineDied("the vLLM engine died again after one rebuild")
        return self._results(tokens, per_video(reply_prefix, len(tokens), "reply prefixes"))

    async def _generate_all(self, engine, prompts: list) -> list:
        """Token ids (or the exception) per prompt; prompts that are already exceptions pass through."""
        jobs = [self._generate_one(engine, p) for p in prompts if not isinstance(p, BaseException)]
        done = iter(await asyncio.gather(*jobs, return_exceptions=True))
        return [p if isinstance(p, BaseException) else next(done) for p in prompts]

    async def _generate_one(self, engine, prompt: dict) -> list[int]:
        final = None
        async for output in engine.generate(prompt, self.sampling, uuid.uuid4().hex):
            final = output
        return list(final.outputs[0].token_ids)

    def _prepare(self, frames, queries, reply_prefix) -> list:
        asks = list(zip(per_video(queries, len(frames), "prompts"), per_video(reply_prefix, len(frames),
                                                                               "reply prefixes")))
        embeds = self._encode(frames)
        token_ids = {ask: self.processor.tokenizer(self.processor.render(*ask))["input_ids"] for ask in set(asks)}
        prompts = []
        for query, video in zip(asks, embeds):
            if isinstance(video, BaseException):
                prompts.append(video)
                continue
            try:
                prompts.append(mixed_prompt(token_ids[query], self.image_token_id, video))
            except ValueError as exc:
                prompts.append(exc)
        return prompts

    def _results(self, tokens: list, prefixes: list[str]) -> list:
        good = [t for t in tokens if not isinstance(t, BaseException)]
        kept = [p for t, p in zip(tokens, prefixes) if not isinstance(t, BaseException)]
        results = iter(results_from_token_ids(self.processor, good, kept))
        return [t if isinstance(t, BaseException) else next(results) for t in tokens]


class _Finished(Exception):
    """Stands in for a video that needs no resend after a rebuild."""


def _engine_dead(item) -> bool:
    if not isinstance(item, BaseException):
        return False
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(item, EngineDeadError)
