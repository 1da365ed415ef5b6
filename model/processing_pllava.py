"""PLLaVA processor: prompts -> left-padded token ids, uint8 frames -> normalised pixel values.

Workers can ship ``uint8`` frames (4x smaller than float32) and let :meth:`PllavaProcessor.pixel_values`
resize/normalise them on the model's device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from model.image_geometry import center_offsets, short_side_size
from model.prompts import DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN, PromptTemplate, get_template, template_for_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


def _read_preprocessor(model_dir: str) -> dict:
    path = os.path.join(model_dir, PREPROCESSOR_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _crop_side(pre: dict) -> int | None:
    crop = pre.get("crop_size")
    if isinstance(crop, dict):
        return int(crop.get("height") or crop.get("shortest_edge"))
    return int(crop) if crop else None


@dataclass
class PllavaProcessor:
    """Turns (prompt, frames) into model inputs and generated ids back into text."""

    tokenizer: object
    image_size: int = 336
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    template: PromptTemplate = field(default_factory=lambda: get_template("vicuna"))
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batched generation needs one")

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, model_dir: str, image_size: int | None = None, template: str | None = None
    ) -> "PllavaProcessor":
        """Tokenizer and image statistics from a model folder (``preprocessor_config.json`` when present,
        CLIP statistics otherwise). The template defaults to what the tokenizer suggests (ChatML for Yi)."""
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pre = _read_preprocessor(model_dir)
        side = image_size or _crop_side(pre) or 336
        chosen = get_template(template) if template else template_for_tokenizer(tokenizer)
        return cls(
            tokenizer=tokenizer,
            image_size=side,
            image_mean=tuple(pre.get("image_mean", CLIP_MEAN)),
            image_std=tuple(pre.get("image_std", CLIP_STD)),
            template=chosen,
        )

    def save_pretrained(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.tokenizer.save_pretrained(out_dir)
        pre = {
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": self.image_size, "width": self.image_size},
            "size": {"shortest_edge": self.image_size},
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": 3,
            "rescale_factor": 1 / 255,
        }
        with open(os.path.join(out_dir, PREPROCESSOR_FILE), "w", encoding="utf-8") as f:
            json.dump(pre, f, indent=2, sort_keys=True)

    # -- text ------------------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        return None if token_id == self.tokenizer.unk_token_id else token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end an answer: EOS plus the template's end-of-turn tokens."""
        ids = {self.tokenizer.eos_token_id}
        for stop in self.template.stop_strings:
            token_id = self.tokenizer.convert_tokens_to_ids(stop)
            if token_id is not None and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if i is not None)

    def render(self, query: str, reply_prefix: str = "") -> str:
        """The full prompt for one video with the processor's template and system prompt; ``reply_prefix``
        opens the assistant's reply."""
        return self.template.render(query, system=self.system_prompt, reply_prefix=reply_prefix)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` ``(B, L)``."""
        return dict(self.tokenizer(list(prompts), return_tensors="pt", padding=True))

    def decode(self, token_ids: torch.Tensor | Sequence[Sequence[int]],
               reply_prefixes: Sequence[str] | None = None) -> list[str]:
        """Generated ids (a ``(B, n)`` tensor or one list per answer) -> answers: cut at the first
        end-of-answer token, special tokens and stop strings removed.

        Without a reply prefix an answer is stripped at both ends. With one (the text the prompt made the reply
        start with, per answer), the reference's rule: the prefix and the generated text are stripped together,
        then split at the prefix; so the generated text keeps its leading white space and loses the trailing,
        and a prefix the model writes again is dropped with it.
        """
        stops = set(self.stop_token_ids)
        rows = []
        for row in token_ids.tolist() if isinstance(token_ids, torch.Tensor) else token_ids:
            row = list(row)
            cut = next((i for i, token in enumerate(row) if token in stops), len(row))
            rows.append(row[:cut])
        prefixes = list(reply_prefixes) if reply_prefixes is not None else [""] * len(rows)
        if len(prefixes) != len(rows):
            raise ValueError(f"{len(prefixes)} reply prefixes for {len(rows)} answers")
        answers = []
        for text, prefix in zip(self._texts(rows, keep_leading_space=any(prefixes)), prefixes):
            for stop in self.template.stop_strings:
                text = text.split(stop, 1)[0]
            answers.append("".join((prefix + text).strip().split(prefix)[1:]) if prefix else text.strip())
        return answers

    def _texts(self, rows: list[list[int]], keep_leading_space: bool) -> list[str]:
        """Decoded rows. SentencePiece tokenizers drop the space that starts a decoded text (the first token's
        word-start mark); with ``keep_leading_space`` each row is decoded after a plain anchor token and the
        anchor's text cut off, so the text reads as it does after the prompt (as the reference decodes it)."""
        if not keep_leading_space:
            return self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        anchor = self.tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
        head = self.tokenizer.decode(anchor, skip_special_tokens=True)
        texts = []
        for text in self.tokenizer.batch_decode([anchor + row for row in rows], skip_special_tokens=True):
            texts.append(text[len(head):] if text.startswith(head) else text)
        return texts

    # -- pixels ----------------------------------------------------------------------------------------
    def pixel_values(
        self,
        frames: np.ndarray | torch.Tensor,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``uint8 (B, T, H, W, 3)`` -> normalised ``(B, T, 3, S, S)`` on ``device``.

        Frames not already ``S x S`` are resized (short side to S, long side truncated, bicubic with
        antialiasing) and centre-cropped at the CLIP processor's offsets (:mod:`model.image_geometry`).
        """
        video = torch.as_tensor(frames)
        if video.dim() != 5 or video.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (B, T, H, W, 3), got shape {tuple(video.shape)}")
        if video.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {video.dtype}")
        batch, num_frames, height, width, _ = video.shape
        x = video.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).flatten(0, 1).float()  # (B*T, 3, H, W)
        side = self.image_size
        if (height, width) != (side, side):
            new_w, new_h = short_side_size(width, height, side)
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
            top, left = center_offsets(new_w, new_h, side)
            x = x[:, :, top : top + side, left : left + side].clamp(0, 255)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1) * 255
        x = (x - mean) / std
        return x.view(batch, num_frames, 3, side, side).to(dtype)

    def __call__(
        self,
        prompts: Sequence[str],
        frames: np.ndarray | torch.Tensor,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Rendered prompts (each with one ``<image>``) and frames -> model inputs."""
        if len(prompts) != len(frames):
            raise ValueError(f"{len(prompts)} prompts for {len(frames)} videos")
        inputs = self.tokenize(prompts)
        inputs["pixel_values"] = self.pixel_values(frames, device=device, dtype=dtype)
        return inputs
