"""Weight files: read safetensors folders, normalise key names across layouts, merge LoRA, write shards.

Key layouts understood (all normalised to this project's names, which equal the published ones):

* published PLLaVA / LLaVA 4.37: ``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
  ``language_model.model.*``, ``language_model.lm_head.weight``;
* the same wrapped by PEFT (how ``ermu2001/pllava-*`` store LoRA un-merged):
  ``language_model.base_model.model.<...>.q_proj.base_layer.weight`` and ``...q_proj.lora_{A,B}.default.weight``;
* transformers >= 4.52 LLaVA(-NeXT) saves: ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
  ``model.language_model.*``, ``lm_head.weight``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file

# Keys a LLaVA-NeXT base carries that PLLaVA deliberately does not use (anyres newline embedding).
UNUSED_BASE_KEYS = ("image_newline", "model.image_newline")

_PEFT_PREFIX = "language_model.base_model.model."
_VISION = "vision_tower."
_VISION_WRAPPED = "vision_tower.vision_model."
_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
_HF_NEW_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


@dataclass
class LoraPair:
    """One un-merged LoRA update ``delta = (alpha / r) * B @ A`` for the module named ``module``."""

    module: str
    a: torch.Tensor | None = None  # (r, in)
    b: torch.Tensor | None = None  # (out, r)

    @property
    def rank(self) -> int:
        assert self.a is not None
        return int(self.a.shape[0])


@dataclass
class WeightSet:
    """Normalised tensors of one folder: plain weights plus LoRA pairs keyed by target module."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, LoraPair] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def lora_rank(self) -> int | None:
        ranks = {pair.rank for pair in self.lora.values()}
        if len(ranks) > 1:
            raise ValueError(f"LoRA pairs have different ranks {sorted(ranks)}")
        return ranks.pop() if ranks else None


def normalise_key(key: str) -> str:
    """Map any supported layout's key to the published name (LoRA suffixes kept)."""
    if key.startswith(_PEFT_PREFIX):
        key = "language_model." + key[len(_PEFT_PREFIX) :]
        key = key.replace(".base_layer.", ".")
    for old, new in _HF_NEW_PREFIXES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    return published_key(key)


def lora_half(key: str) -> tuple[str, str] | None:
    """A LoRA tensor's key in any supported layout -> ``(target module, "a" | "b")`` under this project's names
    (``language_model.base_model.model.<m>.lora_A.default.weight`` -> ``("language_model.<m>", "a")``); None for
    any other key."""
    match = _LORA_RE.match(normalise_key(key))
    return (match["module"], match["which"].lower()) if match else None


def published_key(key: str) -> str:
    """A model parameter name -> its published name.

    transformers 5 builds ``CLIPVisionModel`` without the ``vision_model`` wrapper that checkpoints
    (and older transformers) use; the published name always has it.
    """
    if key.startswith(_VISION) and not key.startswith(_VISION_WRAPPED):
        return _VISION_WRAPPED + key[len(_VISION) :]
    return key


def to_model_keys(tensors: dict[str, torch.Tensor], model_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Rename published-name tensors to the names the installed transformers gives the model's parameters."""
    rename = {published_key(k): k for k in model_keys}
    return {rename.get(k, k): v for k, v in tensors.items()}


def safetensors_files(folder: str) -> list[str]:
    """The safetensors files of a folder: the shards named by an index, else ``*.safetensors``.

    Raises:
        FileNotFoundError: no safetensors weights in ``folder``.
    """
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    else:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(
            f"no *.safetensors weights in {folder} (PyTorch .bin checkpoints are not supported; convert them first)"
        )
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{folder}: shards listed in the index are missing: {missing}")
    return [os.path.join(folder, n) for n in names]


def lora_keys(folder: str) -> str | None:
    """How ``folder``'s weights hold un-merged LoRA, from key names alone (no tensors read): ``"peft"`` under
    PEFT-wrapped names, as the published ``ermu2001/pllava-*`` checkpoints do; ``"plain"`` under this
    project's names (a ``weights_dir``); ``None`` when there is none or no weights at all."""
    try:
        paths = safetensors_files(folder)
    except (FileNotFoundError, OSError):
        return None
    style = None
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if lora_half(key):
                    if key.startswith(_PEFT_PREFIX):
                        return "peft"
                    style = "plain"
    return style


def read_weights(folder: str, device: str | torch.device = "cpu") -> WeightSet:
    """Read every tensor of a folder, normalising names and splitting out LoRA pairs."""
    out = WeightSet()
    for path in safetensors_files(folder):
        with safe_open(path, framework="pt", device=str(device)) as f:
            for raw_key in f.keys():
                if raw_key in UNUSED_BASE_KEYS:
                    out.ignored.append(raw_key)
                    continue
                half = lora_half(raw_key)
                if half:
                    module, which = half
                    pair = out.lora.setdefault(module, LoraPair(module))
                    setattr(pair, which, f.get_tensor(raw_key))
                    continue
                key = normalise_key(raw_key)
                if key in out.tensors:
                    raise ValueError(f"{folder}: two tensors map to the same name {key!r}")
                out.tensors[key] = f.get_tensor(raw_key)
    incomplete = [m for m, p in out.lora.items() if p.a is None or p.b is None]
    if incomplete:
        raise ValueError(f"{folder}: LoRA pairs missing their A or B half: {incomplete[:5]}")
    return out


def merge_lora(tensors: dict[str, torch.Tensor], lora: dict[str, LoraPair], lora_alpha: float) -> list[str]:
    """Merge in place: ``W <- W + (alpha / r) * B @ A`` for each pair (computed in float32).

    Returns the merged weight names.

    Raises:
        KeyError: a LoRA pair whose base weight is absent.
    """
    merged = []
    for module, pair in sorted(lora.items()):
        name = f"{module}.weight"
        if name not in tensors:
            raise KeyError(f"LoRA targets {module!r} but the weights have no {name!r}")
        base = tensors[name]
        scale = float(lora_alpha) / pair.rank
        delta = (pair.b.float() @ pair.a.float().to(pair.b.device)) * scale  # (out, in)
        tensors[name] = (base.float() + delta.to(base.device)).to(base.dtype)
        merged.append(name)
    return merged


def write_shards(state: dict[str, torch.Tensor], out_dir: str, max_shard_size: str | int = "5GB") -> list[str]:
    """Write ``state`` as safetensors (one file, or shards plus ``model.safetensors.index.json``).

    Each file is written to a temporary name and renamed, so a reader never sees half a shard.
    """
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    written = []
    for filename, keys in split.filename_to_tensors.items():
        path = os.path.join(out_dir, filename)
        save_file({k: state[k] for k in keys}, path + ".tmp", metadata={"format": "pt"})
        os.replace(path + ".tmp", path)
        written.append(path)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
    return written


def peft_published_key(key: str, lora_targets: tuple[str, ...]) -> str:
    """This project's name -> the PEFT-wrapped name the published LoRA checkpoints use."""
    if not key.startswith("language_model."):
        return published_key(key)
    rest = key[len("language_model.") :]
    for target in lora_targets:
        suffix = f".{target}.weight"
        if rest.endswith(suffix):
            rest = rest[: -len(".weight")] + ".base_layer.weight"
            break
        if rest.endswith(f".{target}.bias"):
            rest = rest[: -len(".bias")] + ".base_layer.bias"
            break
    return _PEFT_PREFIX + rest


def files_fingerprint(paths: list[str], extra: str = "") -> str:
    """A short, cheap fingerprint of weight files: their safetensors headers (names, shapes, offsets),
    sizes and a sample of their bytes; enough to tell checkpoints apart without hashing gigabytes."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        size = os.path.getsize(path)
        digest.update(f"{os.path.basename(path)}:{size}".encode())
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            digest.update(f.read(min(header_len, 1 << 24)))
            for offset in (size // 3, (2 * size) // 3, max(size - 65536, 0)):
                f.seek(offset)
                digest.update(f.read(65536))
    return digest.hexdigest()[:12]
