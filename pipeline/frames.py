"""Decode a video and sample T frames at the vision tower's size: :func:`sample_frames`, the one entry point.

Owns the decord decoder and the choice between decoders. decord decodes first, scaling in the decoder (the
short side goes straight to S, so a 4K frame is never converted to RGB at full size); PyAV
(:mod:`pipeline.decode_pyav`, the one PyAV implementation) takes over where decord cannot open a file
(animated GIF, some webm, a header claiming more than ``max_frames`` frames), or decodes everything with
``decoder: pyav``. What sampling is, whichever decoder reads the file (settings, result, error, frame-index
rule, sizes), is :mod:`pipeline.sampling`'s; its names are re-exported here. Plain functions, no Ray.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from pipeline.decode_pyav import sample_with_pyav
from pipeline.sampling import (DECODERS, RESIZE_MODES, SAMPLING_MODES, SNAP_MODES, SampledVideo, SamplingConfig,
                               VideoDecodeError, VideoInfo, center_crop, check_pixels, clip_bounds, decode_size,
                               reference_pixels, segment_indices, segment_ranges, to_model_frames)

__all__ = ["DECODERS", "RESIZE_MODES", "SAMPLING_MODES", "SNAP_MODES", "SampledVideo", "SamplingConfig",
           "VideoDecodeError", "VideoInfo", "center_crop", "decode_size", "reference_pixels", "sample_frames",
           "segment_indices", "segment_ranges", "to_model_frames"]

logger = logging.getLogger(__name__)


class _CannotOpen(Exception):
    """decord could not open the container at all (the PyAV fallback gets a try)."""


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
        check_pixels(*header.size, cfg)
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
        first, last = clip_bounds(fps, num_total, start_s, end_s)
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
    # decord cannot open it (animated GIF, some webm, a header claiming too many frames): PyAV reads what FFmpeg
    # can, trusting nothing of the header's (frames counted by decoding, decoded in order).
    try:
        return sample_with_pyav(source, cfg, start_s, end_s, rng, trust_header=False)
    except VideoDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises av.FFmpegError subclasses, OSError, ValueError
        raise VideoDecodeError("undecodable", f"decord: {decord_error}; pyav: {_first_line(exc)}") from exc
