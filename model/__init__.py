"""PLLaVA: configuration, model, processor, prompt templates, weight loading and a tiny offline model.

Names are imported on first use, so torch-free modules (``model.settings``, ``model.prompts``,
``model.image_geometry``) load without torch or transformers.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "CaptionResult": "model.captioning",
    "caption_videos": "model.captioning",
    "generate_captions": "model.captioning",
    "GenerationSettings": "model.settings",
    "VllmSettings": "model.settings",
    "PllavaConfig": "model.configuration_pllava",
    "PllavaForConditionalGeneration": "model.modeling_pllava",
    "PllavaProcessor": "model.processing_pllava",
    "WeightMismatchError": "model.loading",
    "load_pllava": "model.loading",
    "save_merged": "model.loading",
    "save_published": "model.loading",
    "save_weights_dir": "model.loading",
    "DEFAULT_RECAPTION_QUERY": "model.prompts",
    "TEMPLATES": "model.prompts",
    "get_template": "model.prompts",
    "read_prompt": "model.prompts",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
