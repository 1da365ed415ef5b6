"""What frame sampling is, whichever decoder reads the file: its settings, its result, its error, and its rules.

Owns :class:`SamplingConfig`, :class:`SampledVideo` / :class:`VideoInfo`, :class:`VideoDecodeError`, the
reference's frame-index rule (:func:`clip_bounds`, :func:`segment_indices`, :func:`segment_ranges`), the
pixel limit (:func:`check_pixels`) and the size and pixels the model gets (:func:`decode_size`,
:func:`to_model_frames`). The decoders build on it and on nothing of each other's: decord in
:mod:`pipeline.frames` (which also holds the entry point, :func:`pipeline.frames.sample_frames`), PyAV in
:mod:`pipeline.decode_pyav`, image folders in :mod:`pipeline.frame_folders`. Plain functions, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from model.settings import FrozenSettings
from model.image_geometry import center_offsets, reference_prescale_size, reference_scaled_size, short_side_size

SAMPLING_MODES = ("middle", "random")
DECODERS = ("decord", "pyav")
SNAP_MODES = ("exact", "reference_frames")
RESIZE_MODES = ("fast", "reference")


class VideoDecodeError(Exception):
    """A video that cannot be turned into frames. ``reason`` is a short category for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SamplingConfig(FrozenSettings):
    """How frames are picked and sized.

    ``middle`` takes the middle frame of each of ``num_frames`` equal segments (inference);
    ``random`` takes a random frame per segment (training).

    ``decoder``: ``decord`` (default) scales every decoded frame in decord's filter graph (PyAV reads what
    decord cannot open); ``pyav`` decodes in one pass with keyframe seeks and converts only the sampled
    frames (:mod:`pipeline.decode_pyav`), and uses FFmpeg frame threads when ``decode_threads`` > 1. Both pick
    the same frame indices; measured speeds are in ``bench/frame_sampling.py``. ``decode_threads``: decoder
    threads per video (0: the decoder's choice).

    ``resize``: ``fast`` (default) scales in the decoder, straight to the size the reference's two resizes
    reach (597x336 for 16:9), and crops the reference's square (:mod:`model.image_geometry`); ``reference``
    converts the sampled frames at full resolution and runs the reference's chain (PIL bicubic to short side
    360 / long side 640, PIL bicubic to short side 336, centre crop): the reference's pixels, at more CPU.
    Measured gaps and speeds are in ``bench/frame_sampling.py``.

    ``snap``: ``exact`` (default) takes each segment's frame itself; ``reference_frames`` (``decoder: pyav``)
    lets it move to the nearest reference frame (I, P, or a B-frame others refer to) inside its own segment,
    so no non-reference frame is decoded at all; a segment without one keeps its exact frame. The frames used
    are in each row's ``frame_indices``. H.264, HEVC and MPEG-1/2 only; other codecs keep exact frames.
    """

    num_frames: int = Field(16, ge=1, le=1024)
    image_size: int = Field(336, ge=1, le=8192)
    mode: Literal[SAMPLING_MODES] = "middle"
    decoder: Literal[DECODERS] = "decord"
    decode_threads: int = Field(1, ge=0, le=256)
    resize: Literal[RESIZE_MODES] = "fast"
    snap: Literal[SNAP_MODES] = "exact"
    # Hostile or broken headers: a frame larger than this is refused (``too_large``) before anything is
    # decoded (8K UHD is 33.2 M pixels); a header claiming more frames than this is not trusted to size
    # decord's index, and a file that really holds more is refused.
    max_pixels: int = Field(40_000_000, ge=1, le=1_000_000_000)
    max_frames: int = Field(20_000_000, ge=1, le=10**13)  # large enough to trust any header

    @model_validator(mode="after")
    def _snap_needs_pyav(self):
        if self.snap != "exact" and self.decoder != "pyav":
            raise ValueError(f"snap: {self.snap} needs decoder: pyav (decord decodes every frame)")
        return self


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    width: int
    height: int
    frame_count: int
    decoder: str


@dataclass(frozen=True)
class SampledVideo:
    frames: np.ndarray  # uint8 (T, S, S, 3)
    info: VideoInfo
    indices: np.ndarray  # (T,) source frame indices


def segment_indices(
    num_total: int,
    num_segments: int,
    first: int = 0,
    last: int | None = None,
    mode: str = "middle",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices for ``num_segments`` equal segments of ``[first, last]``.

    ``middle``: ``first + seg/2 + round(seg*i)`` with ``seg = (last-first)/T`` (the reference's rule);
    videos shorter than T frames repeat frames. ``random``: a uniform pick inside each segment.
    """
    if num_total < 1:
        raise VideoDecodeError("empty", "the video has no frames")
    last = num_total - 1 if last is None else min(last, num_total - 1)
    first = max(0, min(first, last))
    seg = (last - first) / num_segments
    if mode == "middle":
        idx = np.array([int(first + seg / 2 + round(seg * i)) for i in range(num_segments)])
    elif mode == "random":
        rng = rng or np.random.default_rng()
        edges = np.linspace(first, last + 1, num_segments + 1)
        lows = np.floor(edges[:-1]).astype(int)
        highs = np.maximum(np.floor(edges[1:]).astype(int), lows + 1)
        idx = rng.integers(lows, highs)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}")
    return np.clip(idx, first, last).astype(np.int64)


def segment_ranges(indices, first: int, last: int) -> list[tuple[int, int]]:
    """``[low, high]`` per sampled frame: the frames of ``[first, last]`` nearer to it than to its neighbours
    (a frame halfway between two goes to the earlier one), so the ranges of increasing ``indices`` partition
    the clip. A frame sampled twice (a clip shorter than T frames) gets ``(index, index)``."""
    indices = [int(i) for i in indices]
    ranges = []
    for i, target in enumerate(indices):
        low = first if i == 0 else (indices[i - 1] + target) // 2 + 1
        high = last if i == len(indices) - 1 else (target + indices[i + 1]) // 2
        ranges.append((low, high) if low <= target <= high else (target, target))
    return ranges


def decode_size(width: int, height: int, cfg: SamplingConfig) -> tuple[int, int]:
    """``(w, h)`` the decoder converts sampled frames to: the reference's pre-crop size (``fast``) or the full
    frame (``reference``)."""
    if cfg.resize == "reference":
        return width, height
    return reference_scaled_size(width, height, cfg.image_size)


def center_crop(frames: np.ndarray, side: int) -> np.ndarray:
    """``(T, H, W, 3)`` -> ``(T, side, side, 3)`` from the centre, at the CLIP processor's offsets."""
    height, width = frames.shape[1:3]
    top, left = center_offsets(width, height, side)
    return np.ascontiguousarray(frames[:, top : top + side, left : left + side])


def reference_pixels(frames: np.ndarray, side: int) -> np.ndarray:
    """Full-resolution ``(T, H, W, 3)`` frames through the reference's chain: PIL bicubic to the
    pre-processor size, PIL bicubic to short side ``side`` (uint8 between the two, as there), centre crop."""
    from PIL import Image

    height, width = frames.shape[1:3]
    first = reference_prescale_size(width, height, side)
    second = short_side_size(*first, side)
    out = [np.asarray(Image.fromarray(f).resize(first, Image.BICUBIC).resize(second, Image.BICUBIC)) for f in frames]
    return center_crop(np.stack(out), side)


def to_model_frames(frames: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Decoded frames (at :func:`decode_size`) -> ``uint8 (T, S, S, 3)``."""
    if cfg.resize == "reference":
        return reference_pixels(frames, cfg.image_size)
    return center_crop(frames, cfg.image_size)


def clip_bounds(fps: float, num_total: int, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """First and last frame index of a clip, by the reference's rule: ``round(start_s * fps)`` and
    ``min(round(end_s * fps), N - 1)`` (so a clip's last index is the frame at ``end_s``, not the one before)."""
    if num_total < 1:
        raise VideoDecodeError("empty" if num_total == 0 else "bad_header", f"the video has {num_total} frames")
    first = int(round(start_s * fps)) if start_s is not None and fps > 0 else 0
    last = int(round(end_s * fps)) if end_s is not None and fps > 0 else num_total - 1
    if first >= num_total:
        raise VideoDecodeError("bad_clip", f"clip start {start_s}s is past the end of the video "
                                           f"({num_total} frames at {fps:g} fps)")
    if last < first:
        raise VideoDecodeError("bad_clip", f"clip [{start_s}, {end_s}]s holds no frames")
    return first, min(last, num_total - 1)


def check_pixels(width: int, height: int, cfg: SamplingConfig) -> None:
    """Raises ``too_large`` for frames over ``cfg.max_pixels`` (checked from the header, before decoding)."""
    if width * height > cfg.max_pixels:
        raise VideoDecodeError("too_large", f"frames of {width}x{height} exceed max_pixels {cfg.max_pixels}")
