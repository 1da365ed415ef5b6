"""``load_pllava``: one loader for published PLLaVA folders, LLaVA-NeXT base + ``weights_dir``, and merged exports.

LoRA is always merged into the weights for inference. Missing or unexpected weights and a tokenizer whose
``<image>`` id disagrees with the config fail loudly instead of producing a half-random model (the
reference's most reported failure: blank or garbage captions).

Owns reading a model folder (``load_pllava``, ``weights_identity``, ``caption_settings``) and writing the three
layouts (``save_published``, ``save_weights_dir``, ``save_merged``). It knows nothing of the tiny model: the
name ``tiny`` is resolved to a folder by :func:`model.tiny.resolve_model_dir`, which builds it with
``save_published`` (so the dependency runs one way, tiny -> loading).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager

import torch
from transformers.initialization import no_init_weights

from model.configuration_pllava import PllavaConfig
from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.prompts import IMAGE_TOKEN
from model.weights import (
    LoraPair,
    WeightSet,
    files_fingerprint,
    lora_keys,
    merge_lora,
    safetensors_files,
    peft_published_key,
    published_key,
    read_weights,
    to_model_keys,
    write_shards,
)

logger = logging.getLogger(__name__)

WEIGHTS_META_FILE = "pllava_weights.json"
_SHOW_KEYS = 12


class WeightMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from its config."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@contextmanager
def _building(device: torch.device, dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _read_meta(weights_dir: str) -> dict:
    path = os.path.join(weights_dir, WEIGHTS_META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    more = f" ... and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else ""
    return f"{shown}{more}"


def check_image_token(processor: PllavaProcessor, config: PllavaConfig, model_dir: str) -> None:
    """Raises ValueError when the tokenizer's ``<image>`` id is not ``config.image_token_index``."""
    token_id = processor.image_token_id
    if token_id != config.image_token_index:
        found = "is not in the tokenizer's vocabulary" if token_id is None else f"has id {token_id}"
        raise ValueError(
            f"{model_dir}: the tokenizer's {IMAGE_TOKEN!r} token {found}, but config.image_token_index is "
            f"{config.image_token_index}. Prompts would carry no video and the model would caption nothing. "
            "Use the tokenizer that was published with these weights, or fix image_token_index in config.json."
        )


def _collect_weights(
    model_dir: str, weights_dir: str | None, lora_alpha: float | None
) -> tuple[dict[str, torch.Tensor], dict]:
    base = read_weights(model_dir)
    extra = WeightSet()
    meta: dict = {}
    if weights_dir is not None:
        extra = read_weights(weights_dir)
        meta = _read_meta(weights_dir)
        if base.lora and extra.lora:
            raise WeightMismatchError(
                f"both {model_dir} and {weights_dir} hold LoRA weights; give the LoRA in one place only "
                "(for a published PLLaVA folder, pass it as model_dir alone)"
            )
        base.tensors.update(extra.tensors)  # projector (and anything else trained) replaces the base copy
    lora: dict[str, LoraPair] = base.lora or extra.lora
    info: dict = {"ignored_keys": base.ignored + extra.ignored}
    if lora:
        alpha = lora_alpha if lora_alpha is not None else meta.get("lora_alpha")
        if alpha is None:
            raise ValueError(
                "these weights hold un-merged LoRA but no lora_alpha is recorded with them: pass lora_alpha "
                "(the published PLLaVA checkpoints were evaluated with lora_alpha=4 for r=128)"
            )
        rank = WeightSet(lora=lora).lora_rank
        merged = merge_lora(base.tensors, lora, float(alpha))
        info.update(lora_rank=rank, lora_alpha=float(alpha), lora_merged=len(merged))
        logger.info("merged %d LoRA updates (r=%d, alpha=%s)", len(merged), rank, alpha)
    elif lora_alpha is not None:
        raise ValueError("lora_alpha was given but the weights hold no un-merged LoRA (already merged export?)")
    return base.tensors, info


def _load_into(model: PllavaForConditionalGeneration, tensors: dict[str, torch.Tensor], where: str) -> None:
    tensors = to_model_keys(tensors, model.state_dict().keys())
    known = set(model.state_dict().keys())
    required = set(known)
    text_config = model.config.text_config
    if getattr(text_config, "tie_word_embeddings", False):
        required.discard("language_model.lm_head.weight")
    provided = set(tensors)
    missing = sorted(required - provided)
    unexpected = sorted(provided - known)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights: {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weights: {_list_keys(unexpected)}")
        raise WeightMismatchError(f"{where}: " + "; ".join(parts))
    state = model.state_dict()
    for key in sorted(provided):
        if tuple(tensors[key].shape) != tuple(state[key].shape):
            raise WeightMismatchError(
                f"{where}: {key} has shape {tuple(tensors[key].shape)} in the checkpoint but the config "
                f"builds {tuple(state[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    if getattr(text_config, "tie_word_embeddings", False):
        model.language_model.tie_weights()


# What the reference's loader captions a published checkpoint with, whatever its config.json says.
PUBLISHED_NUM_FRAMES = 16
PUBLISHED_POOLING_SHAPE = (16, 12, 12)


def caption_settings(
    model_dir: str, num_frames: int | None = None, pooling_shape: tuple[int, int, int] | None = None
) -> tuple[int | None, tuple[int, int, int] | None]:
    """``(num_frames, pooling_shape)`` to caption with: the values given; for a published PLLaVA checkpoint
    (a folder that keeps its LoRA un-merged under PEFT names, as ``ermu2001/pllava-*`` do) the reference's
    recaption values, 16 frames and 16x12x12 pooling, where none is given; otherwise ``None`` (config.json's).
    """
    if (num_frames is None or pooling_shape is None) and lora_keys(os.fspath(model_dir)) == "peft":
        chosen = (num_frames or PUBLISHED_NUM_FRAMES, tuple(pooling_shape or PUBLISHED_POOLING_SHAPE))
        logger.info("%s is a published PLLaVA checkpoint: %d frames, pooling %s (the reference's recaption "
                    "settings%s)", model_dir, chosen[0], "x".join(map(str, chosen[1])),
                    "" if num_frames is None and pooling_shape is None else "; the rest as given")
        return chosen
    return num_frames, pooling_shape


def weights_identity(model_dir: str, weights_dir: str | None = None, lora_alpha: float | None = None
                     ) -> tuple[str, str]:
    """``(name, fingerprint)`` that :func:`load_pllava` gives a model loaded with these arguments, from file
    headers and samples alone (no tensors read): what a run records as its ``model``, known before any load."""
    model_dir = os.fspath(model_dir)
    if weights_dir is not None and _same_dir(model_dir, weights_dir):
        weights_dir = None
    folders = [model_dir] + ([weights_dir] if weights_dir is not None else [])
    files = [path for folder in folders for path in safetensors_files(folder)]
    alpha = None
    if any(lora_keys(folder) for folder in folders):
        alpha = lora_alpha if lora_alpha is not None else (_read_meta(weights_dir).get("lora_alpha")
                                                           if weights_dir is not None else None)
    name = "+".join(os.path.basename(os.path.normpath(folder)) for folder in folders)
    return name, files_fingerprint(files, extra=f"alpha={None if alpha is None else float(alpha)}")


def load_pllava(
    model_dir: str,
    weights_dir: str | None = None,
    lora_alpha: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    num_frames: int | None = None,
    pooling_shape: tuple[int, int, int] | None = None,
    template: str | None = None,
) -> tuple[PllavaForConditionalGeneration, PllavaProcessor]:
    """Load a PLLaVA model and its processor, ready for inference (eval mode, LoRA merged).

    Args:
        model_dir: a published PLLaVA folder, a LLaVA-NeXT base folder, or a merged export.
        weights_dir: LoRA + projector weights (what ``training/`` writes) applied on top of ``model_dir``.
        lora_alpha: LoRA scale numerator; required for published folders (they do not record it),
            optional when ``weights_dir`` records it.
        device, dtype: default to CUDA/bf16 when a GPU is present, else CPU/float32.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2" (needs flash-attn).
        num_frames, pooling_shape: override the config's values.
        template: prompt template name; by default chosen from the tokenizer.

    Raises:
        WeightMismatchError: missing, unexpected or wrongly shaped weights (names listed).
        ValueError: ``<image>`` id mismatch, missing ``lora_alpha``, invalid config values.
    """
    model_dir = os.fspath(model_dir)
    if weights_dir is not None and _same_dir(model_dir, weights_dir):
        weights_dir = None  # the reference's habit of passing a published folder twice
    device = torch.device(device or default_device())
    dtype = dtype or default_dtype(device)
    config = PllavaConfig.from_pretrained(model_dir, num_frames=num_frames, pooling_shape=pooling_shape)
    processor = PllavaProcessor.from_pretrained(model_dir, image_size=config.image_size, template=template)
    check_image_token(processor, config, model_dir)

    tensors, info = _collect_weights(model_dir, weights_dir, lora_alpha)
    with _building(device, dtype):
        model = PllavaForConditionalGeneration(config, attn_implementation=attn_implementation)
    where = model_dir if weights_dir is None else f"{model_dir} + {weights_dir}"
    _load_into(model, tensors, where)
    del tensors
    model.eval().requires_grad_(False)
    model.name_or_path, model.fingerprint = weights_identity(model_dir, weights_dir, lora_alpha)
    model.load_info = info
    logger.info("%s: %d frames, pooling %s, %d video tokens", model.name_or_path, config.num_frames,
                "x".join(map(str, config.pooling_shape)), config.num_video_tokens)
    if info["ignored_keys"]:
        logger.info("not used by PLLaVA (LLaVA-NeXT only): %s", info["ignored_keys"])
    return model, processor


# -- writing ----------------------------------------------------------------------------------------------
def save_merged(
    model: PllavaForConditionalGeneration, processor: PllavaProcessor, out_dir: str, max_shard_size: str = "5GB"
) -> None:
    """Write an inference-ready export (layout 3): config, merged weights, tokenizer, image statistics."""
    model.config.extra = {**model.config.extra, "pllava_export": {"source": model.name_or_path, "merged": True}}
    model.config.save_pretrained(out_dir)
    write_shards(_published_state(model), out_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(out_dir)


def _published_state(model: PllavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    return {published_key(k): v for k, v in model.state_dict().items()}


def save_published(
    model: PllavaForConditionalGeneration,
    processor: PllavaProcessor,
    out_dir: str,
    lora: dict[str, LoraPair] | None = None,
    max_shard_size: str | int = "5GB",
) -> None:
    """Write the layout of the published ``ermu2001/pllava-*`` folders (layout 1).

    With ``lora`` the language-model keys get PEFT's wrapped names and the LoRA halves are stored
    un-merged next to their ``base_layer`` weights, as the reference saves them.
    """
    model.config.save_pretrained(out_dir)
    state = _published_state(model)
    if lora:
        targets = tuple(sorted({module.rsplit(".", 1)[-1] for module in lora}))
        state = {peft_published_key(k, targets): v for k, v in state.items()}
        for module, pair in lora.items():
            wrapped = peft_published_key(f"{module}.weight", targets)[: -len(".base_layer.weight")]
            state[f"{wrapped}.lora_A.default.weight"] = pair.a
            state[f"{wrapped}.lora_B.default.weight"] = pair.b
    write_shards(state, out_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(out_dir)


def save_weights_dir(
    out_dir: str,
    projector_state: dict[str, torch.Tensor],
    lora: dict[str, LoraPair],
    lora_settings: dict,
) -> None:
    """Write a ``weights_dir`` (layout 2): projector + LoRA halves under this project's names, and the LoRA
    settings (``r``, ``lora_alpha``, ``target_modules``, ...) in ``pllava_weights.json``."""
    os.makedirs(out_dir, exist_ok=True)
    state = {f"multi_modal_projector.{k}" if not k.startswith("multi_modal_projector.") else k: v
             for k, v in projector_state.items()}
    for module, pair in lora.items():
        state[f"{module}.lora_A.weight"] = pair.a
        state[f"{module}.lora_B.weight"] = pair.b
    write_shards(state, out_dir)
    tmp = os.path.join(out_dir, WEIGHTS_META_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(lora_settings, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, WEIGHTS_META_FILE))
