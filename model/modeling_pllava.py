"""PLLaVA: CLIP vision tower -> MLP projector -> 3-D average pooling -> causal LM, one ``<image>`` per video.

Parameter names follow the published checkpoints (``vision_tower.vision_model.*``,
``multi_modal_projector.linear_{1,2}.*``, ``language_model.model.*``, ``language_model.lm_head.*``), so
weights load by name after the key normalisation in :mod:`model.weights`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel

from model.configuration_pllava import PllavaConfig
from model.prompts import IGNORE_INDEX

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class PllavaMultiModalProjector(nn.Module):
    """linear -> GELU -> linear, from vision width to language-model width (applied before pooling)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class PllavaForConditionalGeneration(nn.Module):
    """Pooled LLaVA for video.

    ``forward(input_ids, attention_mask, pixel_values)`` with ``pixel_values`` shaped ``(B, T, 3, H, W)``
    (normalised floats) and exactly one ``<image>`` token per row returns the language model's output
    (``.logits``, ``.loss`` when ``labels`` are given). ``generate`` takes the same inputs and returns
    only the newly generated token ids ``(B, num_new)``.
    """

    def __init__(self, config: PllavaConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        self.config = config
        dtype = torch.get_default_dtype()
        self.vision_tower = CLIPVisionModel._from_config(
            config.vision_config, attn_implementation=attn_implementation, dtype=dtype
        )
        self.multi_modal_projector = PllavaMultiModalProjector(config.vision_config.hidden_size, config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(
            config.text_config, attn_implementation=attn_implementation, dtype=dtype
        )
        self.pool = nn.AdaptiveAvgPool3d(config.pooling_shape)
        # Filled in by the loader: where the weights came from and a short fingerprint of them.
        self.name_or_path = ""
        self.fingerprint = ""

    # -- properties used by callers ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.multi_modal_projector.linear_1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.multi_modal_projector.linear_1.weight.dtype

    # -- vision path ---------------------------------------------------------------------------------
    def encode_videos(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled visual tokens for a batch of videos.

        Args:
            pixel_values: ``(B, T, 3, H, W)`` normalised frames.

        Returns:
            ``(B, T'*h'*w', D)`` embeddings, frame by frame, raster order within a frame.
        """
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (B, T, 3, H, W), got shape {tuple(pixel_values.shape)}")
        batch, frames = pixel_values.shape[:2]
        side = self.config.image_size
        if tuple(pixel_values.shape[-3:]) != (3, side, side):
            raise ValueError(
                f"frames must be 3x{side}x{side} (the vision tower's input), got {tuple(pixel_values.shape[-3:])}; "
                "the processor resizes and centre-crops uint8 frames to this size"
            )
        grid_h, grid_w = self.config.frame_shape
        flat = pixel_values.flatten(0, 1).to(device=self.device, dtype=self.dtype)  # (B*T, 3, H, W)
        hidden = self.vision_tower(flat, output_hidden_states=True).hidden_states
        features = hidden[self.config.vision_feature_layer][:, 1:]  # (B*T, P, Dv), CLS dropped
        if features.shape[1] != grid_h * grid_w:
            raise ValueError(f"vision tower gave {features.shape[1]} patches per frame, expected {grid_h}x{grid_w}")
        features = self.multi_modal_projector(features)  # (B*T, P, D)
        features = features.view(batch, frames, grid_h, grid_w, -1).permute(0, 4, 1, 2, 3)  # (B, D, T, h, w)
        pooled = self.pool(features)  # (B, D, T', h', w')
        return pooled.flatten(2).transpose(1, 2)  # (B, N, D)

    def merge_video_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_embeds: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Replace each row's single ``<image>`` token by that row's N video embeddings.

        Every row grows by N-1, so left padding stays on the left and rows stay aligned.

        Returns:
            ``inputs_embeds (B, L+N-1, D)``, ``attention_mask (B, L+N-1)``, ``labels`` (video positions
            set to -100) or None.

        Raises:
            ValueError: a row without exactly one ``<image>`` token, or a batch-size mismatch.
        """
        image_id = self.config.image_token_index
        is_image = input_ids == image_id  # (B, L)
        counts = is_image.sum(dim=1)
        if input_ids.shape[0] != video_embeds.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts but {video_embeds.shape[0]} videos")
        if not bool((counts == 1).all()):
            raise ValueError(
                f"each prompt must hold exactly one <image> token (id {image_id}) per video; "
                f"per-row counts: {counts.tolist()}"
            )
        text_ids = input_ids.masked_fill(is_image, 0)
        text_embeds = self.language_model.get_input_embeddings()(text_ids)  # (B, L, D)
        video_embeds = video_embeds.to(text_embeds.dtype)
        positions = is_image.int().argmax(dim=1).tolist()
        num_video = video_embeds.shape[1]
        embeds, masks, new_labels = [], [], []
        for row, pos in enumerate(positions):
            embeds.append(torch.cat([text_embeds[row, :pos], video_embeds[row], text_embeds[row, pos + 1 :]]))
            ones = attention_mask.new_ones(num_video)
            masks.append(torch.cat([attention_mask[row, :pos], ones, attention_mask[row, pos + 1 :]]))
            if labels is not None:
                ignore = labels.new_full((num_video,), IGNORE_INDEX)
                new_labels.append(torch.cat([labels[row, :pos], ignore, labels[row, pos + 1 :]]))
        merged_labels = torch.stack(new_labels) if labels is not None else None
        return torch.stack(embeds), torch.stack(masks), merged_labels

    def _prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        if labels is not None:
            labels = labels.to(self.device).masked_fill(attention_mask == 0, IGNORE_INDEX)
        video_embeds = self.encode_videos(pixel_values)
        return self.merge_video_tokens(input_ids, attention_mask, video_embeds, labels)

    # -- public entry points ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **lm_kwargs,
    ):
        if pixel_values is None:
            return self.language_model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **lm_kwargs
            )
        embeds, mask, labels = self._prepare_inputs(input_ids, attention_mask, pixel_values, labels)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels, **lm_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate after the prompt; returns only the new tokens ``(B, num_new)``.

        Position ids follow the (left-padded) attention mask, so a batch decodes like its rows one by one.
        """
        if pixel_values is None:
            out = self.language_model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                **generate_kwargs,
            )
            return out[:, input_ids.shape[1] :]
        embeds, mask, _ = self._prepare_inputs(input_ids, attention_mask, pixel_values)
        # With inputs_embeds and no input_ids, transformers returns only the generated ids.
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
