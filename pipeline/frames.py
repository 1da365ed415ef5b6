"""Decode a video and sample T frames at the vision tower's size. Plain functions, no Ray.

decord decodes first, scaling in the decoder (the short side goes straight to S, so a 4K frame is never
converted to RGB at full size); PyAV takes over where decord cannot open a file (animated GIF, some webm).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
from pydantic import Field, model_validator

from model.settings import FrozenSettings
from model.image_geometry import center_offsets, reference_prescale_size, reference_scaled_size, short_side_size

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("middle", "random")
DECODERS = ("decord", "pyav")
SNAP_MODES = ("exact", "reference_frames")
RESIZE_MODES = ("fast", "reference")


class _CannotOpen(Exception):
    """decord could not open the container at all (the PyAV fallback gets a try)."""


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


def _bounds(fps: float, num_total: int, start_s: float | None, end_s: float | None) -> tuple[int, int]:
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


def _check_pixels(width: int, height: int, cfg: SamplingConfig) -> None:
    if width * height > cfg.max_pixels:
        raise VideoDecodeError("too_large", f"frames of {width}x{height} exceed max_pixels {cfg.max_pixels}")


@dataclass(frozen=True)
class _Header:
    size: tuple[int, int] | None  # (width, height)
    claimed_frames: float  # what the container says: frame count or duration x rate (0 when unknown)


def _probe(source: str | bytes) -> _Header:
    """Size and claimed length from the container header, without decoding a frame (PyAV)."""
    import av

    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
            if not container.streams.video:
                return _Header(None, 0.0)
            stream = container.streams.video[0]
            context = stream.codec_context
            size = (context.width, context.height) if context.width and context.height else None
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            by_duration = (container.duration or 0) / 1e6 * rate
            return _Header(size, max(float(stream.frames or 0), by_duration))
    except Exception:  # noqa: BLE001 - a failed probe only means decord opens the file first
        return _Header(None, 0.0)


def _decoder_size(size: tuple[int, int], cfg: SamplingConfig) -> dict[str, int]:
    """decord's reader arguments: scaled in its filter graph, or none at all (full resolution)."""
    if cfg.resize == "reference":
        return {}
    width, height = decode_size(size[0], size[1], cfg)
    return {"width": width, "height": height}


def _decode_decord(
    source: str | bytes, cfg: SamplingConfig, start_s, end_s, rng
) -> SampledVideo:
    import decord

    def open_reader(**size):
        uri = io.BytesIO(source) if isinstance(source, bytes) else source
        return decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=cfg.decode_threads, **size)

    # The size comes from the header, so decord opens (and indexes) the file once, already scaling.
    header = _probe(source)
    if header.size:
        _check_pixels(*header.size, cfg)
    # decord sizes its frame index from the header (duration x fps) before reading any data: a container that
    # claims billions of frames makes it allocate gigabytes and abort the process (std::bad_alloc). PyAV,
    # which counts the frames it actually decodes, reads such a file instead.
    if header.claimed_frames > cfg.max_frames:
        raise _CannotOpen(f"the header claims {header.claimed_frames:.3g} frames (over max_frames {cfg.max_frames})")
    size = header.size
    try:
        reader = open_reader(**_decoder_size(size, cfg)) if size else open_reader()
    except Exception as exc:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError on open
        raise _CannotOpen(_first_line(exc)) from exc
    try:
        num_total = len(reader)
        fps = float(reader.get_avg_fps())
        first, last = _bounds(fps, num_total, start_s, end_s)
        indices = segment_indices(num_total, cfg.num_frames, first, last, cfg.mode, rng)
        if size is None:  # no header size: learn it from a frame, then reopen scaled
            size = reader[0].shape[1::-1]
            if cfg.resize != "reference":
                reader = open_reader(**_decoder_size(size, cfg))
        frames = reader.get_batch(list(indices)).asnumpy()  # (T, h, w, 3), decoded at reduced size
    except VideoDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - opened, then failed: corrupt or truncated data
        raise VideoDecodeError("decode_failed", f"decord: {_first_line(exc)}") from exc
    width, height = size
    info = VideoInfo(num_total / fps if fps else 0.0, fps, width, height, num_total, "decord")
    return SampledVideo(to_model_frames(frames, cfg), info, indices)


def _decode_pyav(source: str | bytes, cfg: SamplingConfig, start_s, end_s, rng) -> SampledVideo:
    import av

    def open_container():
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    with open_container() as container:
        if not container.streams.video:
            raise VideoDecodeError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, cfg)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        num_total = 0  # exact count: GIF/webm headers often lack it
        for _ in container.decode(stream):
            num_total += 1
            if num_total > cfg.max_frames:
                raise VideoDecodeError("too_large", f"more than max_frames {cfg.max_frames} frames")
    if fps <= 0:
        fps = 25.0  # GIFs without timing: assume 25 fps as the reference does
    first, last = _bounds(fps, num_total, start_s, end_s)
    indices = segment_indices(num_total, cfg.num_frames, first, last, cfg.mode, rng)
    wanted = {int(i) for i in indices}
    out_w, out_h = decode_size(width, height, cfg)
    picked: dict[int, np.ndarray] = {}
    with open_container() as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                picked[i] = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
            if i >= last:
                break
    frames = np.stack([picked[int(i)] for i in indices])
    info = VideoInfo(num_total / fps, fps, width, height, num_total, "pyav")
    return SampledVideo(to_model_frames(frames, cfg), info, indices)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def sample_frames(
    source: str | bytes | BinaryIO,
    cfg: SamplingConfig = SamplingConfig(),
    start_s: float | None = None,
    end_s: float | None = None,
    rng: np.random.Generator | None = None,
) -> SampledVideo:
    """Decode ``source`` (a local path or the object's bytes) and sample ``cfg.num_frames`` frames.

    Raises:
        VideoDecodeError: empty, unreadable, truncated or frame-less input, or clip bounds outside the video.
    """
    if not isinstance(source, (str, bytes)):
        source = source.read()
    if isinstance(source, bytes) and not source or isinstance(source, str) and os.path.getsize(source) == 0:
        raise VideoDecodeError("empty", "the file is empty (0 bytes)")
    if cfg.decoder == "pyav":
        from pipeline.decode_pyav import sample_with_pyav

        try:
            return sample_with_pyav(source, cfg, start_s, end_s, rng)
        except (VideoDecodeError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV raises av.FFmpegError subclasses, OSError, ValueError
            raise VideoDecodeError("undecodable", f"pyav: {_first_line(exc)}") from exc
    try:
        return _decode_decord(source, cfg, start_s, end_s, rng)
    except _CannotOpen as exc:
        decord_error = str(exc)
    # decord cannot open it (animated GIF, some webm): PyAV reads what FFmpeg can.
    try:
        return _decode_pyav(source, cfg, start_s, end_s, rng)
    except VideoDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises av.FFmpegError subclasses, OSError, ValueError
        raise VideoDecodeError("undecodable", f"decord: {decord_error}; pyav: {_first_line(exc)}") from exc
