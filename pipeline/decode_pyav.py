"""Frame sampling in one PyAV pass: decode what the sampled frames need, convert only those, at reduced size.

Where the time goes when sampling 16 frames of a long-GOP clip: not in decoding (FFmpeg decodes 4K H.264
far faster than it converts it), but in colour-converting and scaling every decoded frame, which is
what a loader that asks for full-resolution RGB frames (or decord's filter graph) pays. Here:

1. A demux pass (no decoding) reads every video packet's timestamp: the frame count (the same count as
   decord's index, so the reference frame-index rule picks the same frames) and where the keyframes are.
2. The sampled frames are visited in order. Before each, when a keyframe lies between the current position
   and the target, the decoder seeks to it instead of decoding the frames in between.
3. Frames are decoded with FFmpeg's frame threads; only the sampled ones are converted, straight from YUV
   to RGB at the target size in one ``sws_scale`` call (bilinear, an antialiased downscale in swscale: of
   its filters the closest to the reference's two PIL bicubic resizes, see ``bench/frame_sampling.py``).

Containers without packet timestamps fall back to decoding every frame in order.
"""

from __future__ import annotations

import bisect
import io

import numpy as np

RESIZE_FILTER = "BILINEAR"


class NoTimestamps(Exception):
    """The stream's packets carry no timestamps to index frames by."""


def _open(source):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def frame_timestamps(source, max_frames: int) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every video frame in display order, and those of the keyframes, from
    one demux pass (no decoding).

    Raises:
        NoTimestamps: a packet without a timestamp (the caller decodes in order instead).
        OverflowError: more than ``max_frames`` packets.
    """
    stamps, keys = [], []
    with _open(source) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if packet.pts is None:
                raise NoTimestamps("a video packet has no timestamp")
            stamps.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
            if len(stamps) > max_frames:
                raise OverflowError(f"more than {max_frames} frames")
    stamps.sort()
    keys.sort()
    return stamps, keys


def decode_at(source, stamps: list[int], keys: list[int], wanted: list[int], size: tuple[int, int],
              threads: int) -> dict[int, np.ndarray]:
    """``{index: uint8 (h, w, 3)}`` for the ``wanted`` frame indices (display order) at ``size`` (w, h).

    Seeks to the last keyframe at or before a target whenever that keyframe is ahead of the decoder.
    """
    targets = sorted(set(wanted))
    out: dict[int, np.ndarray] = {}
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        frames = None
        position = -1  # display index of the last frame decoded
        for target in targets:
            key = keys[bisect.bisect_right(keys, stamps[target]) - 1] if keys and keys[0] <= stamps[target] else None
            key_index = bisect.bisect_left(stamps, key) if key is not None else 0
            if frames is None or key_index > position + 1:
                container.seek(key if key is not None else stamps[0], stream=stream, backward=True)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    continue
                position = bisect.bisect_left(stamps, frame.pts)
                if frame.pts >= stamps[target]:
                    out[target] = _convert(frame, size)
                    break
            else:
                break  # the stream ended early: the caller reports the missing frames
    return out


def decode_in_order(source, wanted: list[int], last: int, size: tuple[int, int], threads: int) -> dict[int, np.ndarray]:
    """The fallback: decode frames in order up to ``last``, converting the ``wanted`` ones."""
    targets = set(wanted)
    out: dict[int, np.ndarray] = {}
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for i, frame in enumerate(container.decode(stream)):
            if i in targets:
                out[i] = _convert(frame, size)
            if i >= last:
                break
    return out


def _convert(frame, size: tuple[int, int]) -> np.ndarray:
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=RESIZE_FILTER)


def sample_with_pyav(source, cfg, start_s, end_s, rng):
    """:func:`pipeline.frames.sample_frames` on the one-pass PyAV path (``SamplingConfig.decoder = "pyav"``).

    Raises:
        VideoDecodeError: no video stream, too large, empty, bad clip bounds, or frames that cannot be decoded.
    """
    from pipeline.frames import (SampledVideo, VideoDecodeError, VideoInfo, _bounds, _check_pixels, decode_size,
                                 segment_indices, to_model_frames)

    with _open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        claimed = int(stream.frames or 0)  # the container's frame count, where it keeps one (mp4)
    if not width or not height:
        raise VideoDecodeError("bad_header", "the video stream has no frame size")
    _check_pixels(width, height, cfg)
    fps = float(rate) if rate else 0.0
    try:
        stamps, keys = frame_timestamps(source, cfg.max_frames)
    except NoTimestamps:
        stamps, keys = None, []
    except OverflowError as exc:
        raise VideoDecodeError("too_large", str(exc)) from exc
    if stamps is None:
        num_total = _count_frames(source, cfg.max_frames)
    else:
        num_total = len(stamps)
        if claimed and num_total < claimed:
            raise VideoDecodeError("decode_failed", f"pyav: truncated: the header lists {claimed} frames, the file "
                                                    f"holds {num_total}")
    if fps <= 0:
        fps = 25.0  # GIFs without timing: assume 25 fps as the reference does
    first, last = _bounds(fps, num_total, start_s, end_s)
    indices = segment_indices(num_total, cfg.num_frames, first, last, cfg.mode, rng)
    size = decode_size(width, height, cfg)
    wanted = [int(i) for i in indices]
    if stamps is None:
        picked = decode_in_order(source, wanted, max(wanted), size, cfg.decode_threads)
    else:
        picked = decode_at(source, stamps, keys, wanted, size, cfg.decode_threads)
    missing = sorted(set(wanted) - set(picked))
    if missing:
        raise VideoDecodeError("decode_failed", f"pyav: frames {missing[:4]} of {num_total} could not be decoded")
    frames = np.stack([picked[i] for i in wanted])
    info = VideoInfo(num_total / fps, fps, width, height, num_total, "pyav")
    return SampledVideo(to_model_frames(frames, cfg), info, indices)


def _count_frames(source, max_frames: int) -> int:
    from pipeline.frames import VideoDecodeError

    count = 0
    with _open(source) as container:
        for _ in container.decode(container.streams.video[0]):
            count += 1
            if count > max_frames:
                raise VideoDecodeError("too_large", f"more than max_frames {max_frames} frames")
    return count
