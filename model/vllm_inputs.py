"""What the vllm engine hands vLLM: the language-model export, mixed prompts, sampling parameters, KV size.

Plain functions, tested without starting an engine (see :mod:`model.vllm_engine` for the engine itself).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Sequence

import torch

from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.settings import GenerationSettings, project_cache_dir

logger = logging.getLogger(__name__)

EXPORT_FORMAT_VERSION = 1  # bump when the export's layout changes, so cached exports are rewritten
CPU_KV_CACHE_MAX_SEQS = 16  # sequences the derived CPU KV cache holds at full length
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def default_cache_dir() -> str:
    return project_cache_dir("vllm")


def export_language_model(
    model: PllavaForConditionalGeneration, processor: PllavaProcessor, cache_dir: str | None = None
) -> str:
    """The language model (LoRA merged, as loaded) and tokenizer as a plain transformers folder vLLM loads.

    Written once per weights fingerprint and dtype: built aside, then renamed, under a file lock, so the
    actors of one node share one copy and a killed writer leaves no half folder behind.
    """
    from filelock import FileLock

    if model.language_model is None:
        raise ValueError("this model's language model was already handed to vLLM and dropped")
    if not model.fingerprint:
        raise ValueError("the model has no weights fingerprint to key the export by: load it with load_pllava")
    root = cache_dir or default_cache_dir()
    os.makedirs(root, exist_ok=True)
    dtype = DTYPE_NAMES[model.dtype]
    target = os.path.join(root, f"lm-{model.fingerprint}-{dtype}-v{EXPORT_FORMAT_VERSION}")
    done = os.path.join(target, "config.json")
    if os.path.isfile(done):
        return target
    with FileLock(target + ".lock"):
        if os.path.isfile(done):
            return target
        scratch = tempfile.mkdtemp(prefix=".lm-", dir=root)
        try:
            model.language_model.save_pretrained(scratch, safe_serialization=True)
            processor.tokenizer.save_pretrained(scratch)
            os.rename(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info("wrote the language model for vLLM to %s", target)
    return target


def mixed_prompt(token_ids: Sequence[int], image_token_id: int, video_embeds: torch.Tensor) -> dict:
    """One vLLM ``EmbedsPrompt`` for a tokenized prompt holding one ``<image>`` and its video's embeddings.

    Args:
        token_ids: the rendered prompt's ids (no padding), with exactly one ``image_token_id``.
        video_embeds: ``(N, D)`` pooled video tokens.

    Returns:
        ``prompt_token_ids`` (L+N-1), ``prompt_is_token_ids`` (True at text positions) and ``prompt_embeds``
        ``(L+N-1, D)`` (the video rows in place of ``<image>``, zeros where vLLM uses the token ids).

    Raises:
        ValueError: the prompt does not hold exactly one ``<image>`` token.
    """
    ids = list(token_ids)
    if ids.count(image_token_id) != 1:
        raise ValueError(f"each prompt must hold exactly one <image> token (id {image_token_id}), "
                         f"found {ids.count(image_token_id)}")
    pos, num_video = ids.index(image_token_id), video_embeds.shape[0]
    expanded = ids[:pos] + [image_token_id] * num_video + ids[pos + 1 :]
    is_token = [True] * pos + [False] * num_video + [True] * (len(ids) - pos - 1)
    embeds = video_embeds.new_zeros((len(expanded), video_embeds.shape[1]))
    embeds[pos : pos + num_video] = video_embeds
    return {"prompt_token_ids": expanded, "prompt_is_token_ids": is_token, "prompt_embeds": embeds}


def sampling_params(generation: GenerationSettings, stop_ids: Sequence[int]):
    """vLLM ``SamplingParams`` equal to ``generation`` on the ``hf`` engine: the same stop set (EOS plus the
    template's end-of-turn tokens, and nothing else), forced tokens, greedy or sampled."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if generation.num_beams != 1:
        raise ValueError("the vllm engine does not do beam search: set generation.num_beams to 1 or use engine hf")
    return SamplingParams(
        n=1,
        temperature=generation.temperature if generation.do_sample else 0.0,
        top_p=generation.top_p if generation.do_sample else 1.0,
        seed=generation.seed if generation.do_sample else None,
        repetition_penalty=generation.repetition_penalty,
        max_tokens=generation.max_new_tokens,
        min_tokens=generation.min_new_tokens,
        stop_token_ids=list(stop_ids),
        ignore_eos=True,  # the checkpoint's EOS stops only through stop_ids, exactly as on hf
        detokenize=False,  # decoded by the processor, like hf
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def kv_cache_bytes(text_config, max_model_len: int, dtype: torch.dtype, max_num_seqs: int | None) -> int:
    """A KV cache holding ``min(max_num_seqs, 16)`` full-length sequences, capped at a quarter of the RAM
    (vLLM's CPU backend otherwise asks for most of it)."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    per_token = 2 * text_config.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8
    seqs = min(max_num_seqs or CPU_KV_CACHE_MAX_SEQS, CPU_KV_CACHE_MAX_SEQS)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(max(per_token * max_model_len, min(per_token * max_model_len * seqs, ram // 4)))
