"""PLLaVA: configuration, model, processor, prompt templates, weight loading and a tiny offline model."""

from model.captioning import CaptionResult, caption_videos, generate_captions
from model.settings import GenerationSettings, VllmSettings
from model.configuration_pllava import PllavaConfig
from model.loading import WeightMismatchError, load_pllava, save_merged, save_published, save_weights_dir
from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.prompts import DEFAULT_RECAPTION_QUERY, TEMPLATES, get_template, read_prompt

__all__ = [
    "CaptionResult",
    "GenerationSettings",
    "VllmSettings",
    "caption_videos",
    "generate_captions",
    "PllavaConfig",
    "PllavaForConditionalGeneration",
    "PllavaProcessor",
    "WeightMismatchError",
    "load_pllava",
    "save_merged",
    "save_published",
    "save_weights_dir",
    "DEFAULT_RECAPTION_QUERY",
    "TEMPLATES",
    "get_template",
    "read_prompt",
]
