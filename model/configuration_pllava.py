"""PLLaVA configuration: read from a published PLLaVA or LLaVA-NeXT ``config.json``; written in the published layout."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import CLIPVisionConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# What the published ermu2001/pllava-* checkpoints and the LLaVA-NeXT bases declare.
ACCEPTED_MODEL_TYPES = ("llava", "llava_next", "pllava")
ARCHITECTURE_NAME = "PllavaForConditionalGeneration"

# A LLaVA-NeXT base leaves these to CLIP ViT-L/14-336 defaults when absent.
_DEFAULT_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
}


@dataclass
class PllavaConfig:
    """Everything that shapes a PLLaVA model.

    ``pooling_shape`` is (T', h', w'): the 3-D average pooling output per video, so a video becomes
    ``T' * h' * w'`` language-model tokens. ``frame_shape`` is the vision tower's patch grid (24x24 for
    CLIP-L/14 at 336 px). ``vision_feature_layer`` indexes the tower's hidden states (-2: penultimate).
    """

    vision_config: CLIPVisionConfig
    text_config: PretrainedConfig
    pooling_shape: tuple[int, int, int] = (16, 12, 12)
    num_frames: int = 16
    image_token_index: int = 32000
    pad_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    source_model_type: str = "llava"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pooling_shape = tuple(int(x) for x in self.pooling_shape)  # type: ignore[assignment]
        problems = []
        if len(self.pooling_shape) != 3 or any(x <= 0 for x in self.pooling_shape):
            problems.append(f"pooling_shape must be 3 positive ints (T', h', w'), got {self.pooling_shape}")
        if self.num_frames <= 0:
            problems.append(f"num_frames must be positive, got {self.num_frames}")
        grid = self.frame_shape
        if len(self.pooling_shape) == 3 and (self.pooling_shape[1] > grid[0] or self.pooling_shape[2] > grid[1]):
            problems.append(f"spatial pooling {self.pooling_shape[1:]} is larger than the patch grid {grid}")
        if self.vision_feature_select_strategy != "default":
            problems.append(
                f"vision_feature_select_strategy {self.vision_feature_select_strategy!r} is not supported "
                "(PLLaVA drops the CLS token: 'default')"
            )
        num_layers = self.vision_config.num_hidden_layers
        if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            problems.append(
                f"vision_feature_layer {self.vision_feature_layer} is out of range for {num_layers} vision layers"
            )
        if not 0 <= self.image_token_index:
            problems.append(f"image_token_index must be >= 0, got {self.image_token_index}")
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.text_config, "pad_token_id", None)
        if self.projector_hidden_act != "gelu":
            problems.append(f"projector_hidden_act {self.projector_hidden_act!r} is not supported (PLLaVA uses gelu)")
        if problems:
            raise ValueError("invalid PLLaVA config:\n  - " + "\n  - ".join(problems))

    # -- derived sizes -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def frame_shape(self) -> tuple[int, int]:
        side = self.vision_config.image_size // self.vision_config.patch_size
        return (side, side)

    @property
    def num_video_tokens(self) -> int:
        """Language-model tokens that one ``<image>`` placeholder expands into."""
        t, h, w = self.pooling_shape
        return t * h * w

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    # -- reading and writing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], **overrides: Any) -> "PllavaConfig":
        """Build from a parsed ``config.json`` (PLLaVA ``llava`` or LLaVA-NeXT ``llava_next``).

        ``overrides`` replace top-level fields (``pooling_shape``, ``num_frames``, ...). Fields of
        LLaVA-NeXT that PLLaVA does not use (``image_grid_pinpoints``, ``image_newline``) are ignored.

        Raises:
            ValueError: unknown ``model_type`` or invalid values.
        """
        raw = copy.deepcopy(raw)
        model_type = raw.get("model_type")
        if model_type not in ACCEPTED_MODEL_TYPES:
            raise ValueError(
                f"config model_type {model_type!r} is not a PLLaVA / LLaVA-NeXT config; expected one of "
                f"{ACCEPTED_MODEL_TYPES}"
            )
        vision_raw = {**_DEFAULT_VISION, **(raw.get("vision_config") or {})}
        vision_raw.pop("model_type", None)
        vision_config = CLIPVisionConfig(**vision_raw)

        text_raw = dict(raw.get("text_config") or {"model_type": "llama"})
        text_type = text_raw.pop("model_type", "llama")
        if text_type not in CONFIG_MAPPING:
            raise ValueError(f"text_config model_type {text_type!r} is not known to transformers")
        text_config = CONFIG_MAPPING[text_type](**text_raw)

        kwargs: dict[str, Any] = {
            "vision_config": vision_config,
            "text_config": text_config,
            "source_model_type": model_type,
        }
        for name in (
            "pooling_shape",
            "num_frames",
            "image_token_index",
            "pad_token_id",
            "vision_feature_layer",
            "vision_feature_select_strategy",
            "projector_hidden_act",
        ):
            if raw.get(name) is not None:
                kwargs[name] = raw[name]
        if model_type == "llava_next":
            # A LLaVA-NeXT base has no video settings: use the PLLaVA inference defaults.
            kwargs.setdefault("pooling_shape", (16, 12, 12))
            kwargs.setdefault("num_frames", 16)
        if "frame_shape" in raw:
            declared = tuple(raw["frame_shape"])
            side = vision_config.image_size // vision_config.patch_size
            if declared != (side, side):
                raise ValueError(
                    f"frame_shape {declared} does not match the vision tower's patch grid ({side}, {side})"
                )
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **overrides: Any) -> "PllavaConfig":
        """Read ``model_dir/config.json``.

        Raises:
            FileNotFoundError: no ``config.json`` in ``model_dir``.
        """
        path = os.path.join(os.fspath(model_dir), "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json in {model_dir}")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The published PLLaVA layout (``model_type`` "llava", top-level pooling fields)."""
        vision = self.vision_config.to_dict()
        vision["model_type"] = "clip_vision_model"
        text = self.text_config.to_dict()
        text["model_type"] = self.text_config.model_type
        return {
            "model_type": "llava",
            "architectures": [ARCHITECTURE_NAME],
            "pooling_shape": list(self.pooling_shape),
            "num_frames": self.num_frames,
            "frame_shape": list(self.frame_shape),
            "use_pooling": True,
            "pooling_method": "avg",
            "image_token_index": self.image_token_index,
            "pad_token_id": self.pad_token_id,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "projector_hidden_act": self.projector_hidden_act,
            "vision_config": vision,
            "text_config": text,
            **self.extra,
        }

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(os.fspath(out_dir), "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True, default=str)
