"""A tiny random PLLaVA and tokenizer, built fully offline, saved in the published folder layout.

Used by tests and the demo job. The same arguments and seed always give the same bytes, so a
``weights_dir`` trained on one tiny model applies to a tiny model built later.

Owns the model name ``tiny`` (:func:`resolve_model_dir`, what the pipeline and training resolve a model name
with) and its cached folder. Writing the folder is :mod:`model.loading`'s ``save_published``; loading never
imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

from model.configuration_pllava import PllavaConfig
from model.loading import save_published
from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.prompts import IMAGE_TOKEN, get_template
from model.settings import project_cache_dir
from model.weights import LoraPair

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in the Vicuna/LLaMA vocabulary
# Whole-word tokens so a random model's output reads as (nonsense) words rather than stray bytes.
WORDS = tuple("""
a an the this that of in on at to from with and or while then as over under near behind into across
video clip scene frame camera shot view background foreground sky street road city room table wall floor
water river sea beach forest tree grass field mountain snow light shadow window door car bus bike train
person man woman child people group crowd dog cat bird horse ball hand face hair shirt hat building house
walks runs moves turns looks sits stands jumps rides drives holds opens closes plays talks smiles waves
slowly quickly gently suddenly together left right up down forward away around toward inside outside
bright dark large small tall long wide calm busy static moving close distant sunny cloudy night day
""".split())
TINY_FORMAT_VERSION = 3  # bump when the factory's output changes, so cached tiny models are rebuilt


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Frames stay 336 px / 24x24 patches like the real CLIP-L/14-336."""

    seed: int = 0
    num_frames: int = 4
    pooling_shape: tuple[int, int, int] = (4, 6, 6)
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2  # head_dim 32: the smallest vLLM's CPU attention takes
    text_intermediate: int | None = None  # default: 2 x text_hidden
    vision_heads: int = 2
    image_size: int = 336
    patch_size: int = 14
    template: str = "vicuna"


def build_tokenizer(template: str = "vicuna") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ``<unk> <s> </s>``, the 256 byte symbols, a few hundred whole words, then
    ``<image>`` and ``<pad>`` (plus ``<|im_start|> <|im_end|>`` for ChatML). No training: deterministic."""
    specials = list(SPECIAL_TOKENS)
    added = [IMAGE_TOKEN, "<pad>"] + (["<|im_start|>", "<|im_end|>"] if template == "chatml" else [])
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # sorted: a stable id order
    words = [f"\u0120{w}" for w in dict.fromkeys(WORDS)]  # "\u0120" is byte-level BPE's leading space
    vocab = {tok: i for i, tok in enumerate(specials + byte_symbols + words)}
    for tok in added:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=added[:1] + added[2:],
    )
    return tokenizer


def tiny_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> PllavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate or spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return PllavaConfig(
        vision_config=vision,
        text_config=text,
        pooling_shape=spec.pooling_shape,
        num_frames=spec.num_frames,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
    )


def random_lora(
    model: PllavaForConditionalGeneration, rank: int, targets: tuple[str, ...], seed: int
) -> dict[str, LoraPair]:
    """Non-zero random LoRA halves for every ``targets`` linear of the language model."""
    gen = torch.Generator().manual_seed(seed + 1)
    pairs = {}
    for name, module in model.language_model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear):
            full = f"language_model.{name}"
            a = torch.randn(rank, module.in_features, generator=gen) * 0.2
            b = torch.randn(module.out_features, rank, generator=gen) * 0.2
            pairs[full] = LoraPair(full, a, b)
    return pairs


def build_tiny_model(spec: TinySpec = TinySpec()) -> tuple[PllavaForConditionalGeneration, PllavaProcessor]:
    """The tiny model in memory (float32, CPU), weights drawn from ``spec.seed``."""
    tokenizer = build_tokenizer(spec.template)
    config = tiny_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = PllavaForConditionalGeneration(config)
    # Random init of transformers sub-models depends on their init code; draw every parameter
    # ourselves so the bytes depend on the seed alone.
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            elif "norm" in name:
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.02)
            else:  # unit-variance activations, so outputs depend on the inputs
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
        # Favour whole words over single bytes, so captions of the demo read as words.
        first_byte = len(SPECIAL_TOKENS)
        model.language_model.lm_head.weight[first_byte : first_byte + 256] *= 0.2
    model.eval()
    processor = PllavaProcessor(tokenizer=tokenizer, image_size=spec.image_size, template=get_template(spec.template))
    return model, processor


def save_tiny_pllava(
    out_dir: str,
    spec: TinySpec = TinySpec(),
    lora_rank: int | None = None,
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
    max_shard_size: str | int = "5GB",
) -> str:
    """Build the tiny model and save it like a published PLLaVA folder.

    With ``lora_rank`` the folder carries un-merged random LoRA on ``lora_targets`` under PEFT-wrapped
    names (load it with a ``lora_alpha``), exactly as ``ermu2001/pllava-*`` do.
    """
    model, processor = build_tiny_model(spec)
    lora = random_lora(model, lora_rank, lora_targets, spec.seed) if lora_rank else None
    save_published(model, processor, out_dir, lora=lora, max_shard_size=max_shard_size)
    return os.fspath(out_dir)


def ensure_tiny_pllava(cache_dir: str | None = None, spec: TinySpec = TinySpec()) -> str:
    """The tiny model's folder in a local cache, built once per machine (atomic: built aside, then renamed).

    Every process that asks gets the same weights (same spec, same seed), so Ray actors on different
    nodes agree without shipping files.
    """
    import hashlib
    import shutil
    import tempfile

    root = cache_dir or project_cache_dir()
    tag = hashlib.sha1(f"{TINY_FORMAT_VERSION}{spec!r}".encode()).hexdigest()[:10]
    target = os.path.join(root, f"tiny-{tag}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tiny-", dir=root)
    try:
        save_tiny_pllava(scratch, spec)
        try:
            os.rename(scratch, target)
        except OSError:  # another process finished first: use its copy
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_model_dir(name: str) -> str:
    """``tiny`` -> the offline tiny model's folder (built on first use); anything else as given."""
    if name == "tiny":
        return ensure_tiny_pllava()
    return name
