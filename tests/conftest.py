"""Shared fixtures: tiny models saved to disk through the real writers, and generated video files."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from model.tiny import TinySpec, save_tiny_pllava  # noqa: E402
from pipeline.sample_videos import write_video  # noqa: E402

LORA_RANK = 4


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A published-layout tiny PLLaVA without LoRA."""
    return save_tiny_pllava(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory) -> str:
    """A published-layout tiny PLLaVA with un-merged LoRA (r=4) under PEFT names, in two shards."""
    return save_tiny_pllava(str(tmp_path_factory.mktemp("tiny_lora")), lora_rank=LORA_RANK, max_shard_size="300KB")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("videos")
    write_video(str(folder / "a.mp4"), 320, 240, 48, 24, seed=1)
    write_video(str(folder / "b.mp4"), 480, 270, 30, 30, seed=2)
    write_video(str(folder / "c.mkv"), 256, 256, 20, 10, seed=3)
    return str(folder)


@pytest.fixture()
def frames_batch() -> np.ndarray:
    """Three different uint8 videos (B=3, T=4, 336x336)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, TinySpec().num_frames, 336, 336, 3), dtype=np.uint8)
    frames[1] = 20
    frames[2] = np.linspace(0, 255, 336, dtype=np.uint8)[None, None, :, None]
    return frames
