"""Frame sampling in one PyAV pass: decode what the sampled frames need, convert only those, at reduced size.

Where the time goes when sampling 16 frames of a long-GOP clip: in decoding frames no sample needs, and in
colour-converting and scaling every decoded frame, which is what a loader that asks for full-resolution RGB
frames (or decord's filter graph) pays. Here:

1. A demux pass (no decoding) reads every video packet's timestamp: the frame count (the same count as
   decord's index, so the reference frame-index rule picks the same frames) and where the keyframes are.
2. The sampled frames are visited in order. Before each, when a keyframe lies between the current position
   and the target, the decoder seeks to it instead of decoding the frames in between.
3. On the way to a sampled frame, the packets that hold no sampled frame are decoded under FFmpeg's
   ``skip_frame=NONREF`` (H.264, HEVC, MPEG-1/2): a non-reference frame (most B-frames) is used by no other
   frame, so it is never decoded unless it is a sample itself; every other frame's pixels are unchanged.
   Decoding stops at the last sampled frame.
4. ``snap: reference_frames``: ``skip_frame=NONREF`` for every packet, so only the frames others refer to
   (I, P, and B-frames used as references) are decoded; each sampled frame moves to the nearest of them
   within its own segment (the frames nearer to it than to its neighbours). A segment with none keeps its
   exact frame (a second, exact pass for those only). Not ``BIDIR``: with x264's default b-pyramid and
   several reference frames, P-frames refer to B-frames, and skipping those corrupts them.
5. Where a seek by presentation time lands after the keyframe (MPEG-TS seeks by decode time), it goes to the
   keyframe's decode timestamp instead and drops packets up to the first keyframe; a frame is taken only by
   its exact timestamp. Files whose packets repeat a timestamp, or whose decoder
   passes a sampled frame without giving it, are decoded in order, counting frames.
6. Frames are decoded with FFmpeg's frame threads; only the sampled ones are converted, straight from YUV
   to RGB at the target size in one ``sws_scale`` call (bilinear, an antialiased downscale in swscale: of
   its filters the closest to the reference's two PIL bicubic resizes, see ``bench/frame_sampling.py``).

Containers without packet timestamps fall back to decoding every frame in order.

This is the one PyAV implementation: ``decoder: pyav`` runs it as above, and :mod:`pipeline.frames` runs it
with ``trust_header=False`` for what decord cannot open (no demux index, no header cross-check: frames are
counted by decoding and decoded in order). The sampling rules it applies (clip bounds, frame indices, pixel
limit, sizes) are :mod:`pipeline.sampling`'s.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

import numpy as np

from pipeline.sampling import (SampledVideo, VideoDecodeError, VideoInfo, check_pixels, clip_bounds, decode_size,
                               segment_indices, segment_ranges, to_model_frames)

RESIZE_FILTER = "BILINEAR"


class NoTimestamps(Exception):
    """The stream's packets carry no timestamps to index frames by."""


def _open(source):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)


@dataclass(frozen=True)
class FrameIndex:
    """What one demux pass (no decoding) knows: every frame's presentation timestamp in display order
    (``stamps``), the keyframes' (``keys``), and where to seek for each keyframe (``seek_to``: its decode
    timestamp, which MPEG-TS seeks by; seeking there by its presentation time can land after it)."""

    stamps: list[int]
    keys: list[int]
    seek_to: dict[int, int]

    def index_of(self, pts: int | None) -> int | None:
        """The display index of the frame with this exact timestamp, or None."""
        if pts is None:
            return None
        i = bisect.bisect_left(self.stamps, pts)
        return i if i < len(self.stamps) and self.stamps[i] == pts else None

    def last_key_index(self, index: int) -> int:
        """Display index of the last keyframe at or before frame ``index`` (0 where none is)."""
        position = bisect.bisect_right(self.keys, self.stamps[index]) - 1
        return bisect.bisect_left(self.stamps, self.keys[position]) if position >= 0 else 0


def frame_timestamps(source, max_frames: int) -> FrameIndex:
    """The :class:`FrameIndex` of the first video stream, from one demux pass (no decoding).

    Raises:
        NoTimestamps: a packet without a timestamp, or two packets with the same one (the caller decodes in
            order instead).
        OverflowError: more than ``max_frames`` packets.
    """
    stamps, keys, seek_to = [], [], {}
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
                seek_to[packet.pts] = packet.dts if packet.dts is not None else packet.pts
            if len(stamps) > max_frames:
                raise OverflowError(f"more than {max_frames} frames")
    stamps.sort()
    keys.sort()
    if any(a == b for a, b in zip(stamps, stamps[1:])):
        raise NoTimestamps("two video packets have the same timestamp")
    return FrameIndex(stamps, keys, seek_to)


# Codecs whose decoders honour ``skip_frame=NONREF`` by the bitstream's own reference flags, so skipping
# never changes another frame's pixels: a non-reference frame is by definition used by no other frame. (Not
# ``BIDIR``: with x264's defaults, b-pyramid and several references, P-frames do reference B-frames.) Other
# codecs decode every frame on the way to a sampled one.
SKIPPING_CODECS = frozenset({"h264", "hevc", "mpeg2video", "mpeg1video"})


def skip_mode(codec_name: str) -> str:
    """The ``skip_frame`` setting for the packets that hold no sampled frame: ``NONREF`` where the codec
    honours it, else ``DEFAULT`` (decode everything)."""
    return "NONREF" if codec_name in SKIPPING_CODECS else "DEFAULT"


def _packets_from(container, stream, index: FrameIndex, key: int):
    """The stream's packets from the keyframe with timestamp ``key`` on (or an earlier one). A seek by
    presentation time lands on it in most containers; in MPEG-TS, which seeks by decode time, it can land
    after it: then the seek goes to the keyframe's decode timestamp and the packets up to the first keyframe
    are dropped."""
    container.seek(key, stream=stream, backward=True)
    packets = container.demux(stream)
    first = next(packets, None)
    landed = first is None or not first.size or not index.keys or (first.is_keyframe and first.pts is not None
                                                                    and first.pts <= key)
    if not landed:
        container.seek(index.seek_to.get(key, key), stream=stream, backward=True)
        packets = container.demux(stream)
        first = next(packets, None)
        while first is not None and first.size and not first.is_keyframe:
            first = next(packets, None)
    if first is not None:
        yield first
    yield from packets


def _frames(container, stream, index: FrameIndex, key_index: int, keep: set[int], skip: str):
    """Decoded frames from the keyframe at ``key_index`` on, in display order: packets whose timestamp is in
    ``keep`` are always decoded, the others under ``skip`` (an FFmpeg ``skip_frame`` setting). With frame
    threads, FFmpeg copies the setting into each frame's thread when its packet is sent, so it holds per
    packet."""
    codec = stream.codec_context
    for packet in _packets_from(container, stream, index, index.stamps[key_index]):
        codec.skip_frame = "DEFAULT" if packet.pts in keep else skip
        yield from codec.decode(packet)  # the demuxer's empty end packet flushes the decoder


def _open_stream(container, threads: int | None):
    """The first video stream, with FFmpeg's frame threads at ``threads`` (None: PyAV's defaults)."""
    stream = container.streams.video[0]
    if threads is not None:
        stream.thread_type = "AUTO"
        stream.thread_count = threads
    return stream


class FrameMissed(Exception):
    """The decoder passed a sampled frame without giving it (a seek or timestamps it cannot be trusted on)."""


def decode_at(source, index: FrameIndex, wanted: list[int], size: tuple[int, int], threads: int,
              skip: str = "DEFAULT") -> dict[int, np.ndarray]:
    """``{index: uint8 (h, w, 3)}`` for the ``wanted`` frame indices (display order) at ``size`` (w, h).

    Seeks to the last keyframe at or before a target whenever that keyframe is ahead of the decoder; the
    packets that hold no wanted frame are decoded under ``skip`` (see :func:`skip_mode`). A frame is taken
    only by its exact timestamp.

    Raises:
        FrameMissed: a later frame came out where a wanted one should have (the caller decodes in order).
    """
    targets = sorted(set(wanted))
    keep = {index.stamps[t] for t in targets}
    out: dict[int, np.ndarray] = {}
    with _open(source) as container:
        stream = _open_stream(container, threads)
        frames = None
        position = -1  # display index of the last frame decoded
        for target in targets:
            key_index = index.last_key_index(target)
            if frames is None or key_index > position + 1:
                frames = _frames(container, stream, index, key_index, keep, skip)
            for frame in frames:
                found = index.index_of(frame.pts)
                if found is None:
                    continue
                position = found
                if found == target:
                    out[target] = _convert(frame, size)
                    break
                if found > target:
                    raise FrameMissed(f"frame {target} did not come out of the decoder")
            else:
                break  # the stream ended early: the caller reports the missing frames
    return out


def decode_nearest_reference(source, index: FrameIndex, segments: list[tuple[int, int, int]],
                             size: tuple[int, int], threads: int) -> dict[int, tuple[int, np.ndarray]]:
    """``{segment: (index, uint8 (h, w, 3))}``: for each ``(low, target, high)`` segment (display indices,
    in increasing order), the reference frame (I, P, or a B-frame others refer to) inside ``[low, high]``
    nearest ``target`` (the earlier one on a tie): every non-reference frame is skipped (``NONREF``), so what
    the decoder gives are exactly the frames it must decode anyway. Segments holding none are left out: the
    caller decodes their exact frame.
    """
    out: dict[int, tuple[int, np.ndarray]] = {}
    with _open(source) as container:
        stream = _open_stream(container, threads)
        frames, pending = None, None
        position = -1
        for number, (low, target, high) in enumerate(segments):
            key_index = index.last_key_index(low)
            if frames is None or key_index > position + 1:
                frames, pending = _frames(container, stream, index, key_index, set(), "NONREF"), None
            best = None
            while True:
                frame, pending = (pending, None) if pending is not None else (next(frames, None), None)
                if frame is None:
                    break
                found = index.index_of(frame.pts)
                if found is None:
                    continue
                position = found
                if found > high:
                    pending = frame  # the next segment's, maybe
                    break
                if found >= low and (best is None or abs(found - target) < abs(best[0] - target)):
                    best = (found, frame)
                elif best is not None and found > target:
                    break  # later frames of this segment lie farther from its middle
            if best is not None:
                out[number] = (best[0], _convert(best[1], size))
            if frame is None:
                break  # the stream ended early: the later segments get their exact frames, or are reported
    return out


def decode_in_order(source, wanted: list[int], last: int, size: tuple[int, int], threads: int | None
                    ) -> dict[int, np.ndarray]:
    """The fallback: decode frames in order up to ``last``, converting the ``wanted`` ones."""
    targets = set(wanted)
    out: dict[int, np.ndarray] = {}
    with _open(source) as container:
        stream = _open_stream(container, threads)
        for i, frame in enumerate(container.decode(stream)):
            if i in targets:
                out[i] = _convert(frame, size)
            if i >= last:
                break
    return out


def _convert(frame, size: tuple[int, int]) -> np.ndarray:
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=RESIZE_FILTER)


def sample_with_pyav(source, cfg, start_s, end_s, rng, *, trust_header: bool = True) -> SampledVideo:
    """:func:`pipeline.frames.sample_frames` with PyAV: the one-pass path of ``SamplingConfig.decoder = "pyav"``,
    or with ``trust_header=False`` the path for files decord cannot open.

    ``trust_header=False`` trusts nothing of the header: no demux index (frames are counted by decoding them,
    then decoded in order, at PyAV's default threads), no check of the frame count it claims, and a stream
    whose header gives no frame size is not refused as ``bad_header`` up front.

    Raises:
        VideoDecodeError: no video stream, too large, empty, bad clip bounds, or frames that cannot be decoded.
    """
    with _open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        claimed = int(stream.frames or 0)  # the container's frame count, where it keeps one (mp4)
        skip = skip_mode(stream.codec_context.name)
    if trust_header and (not width or not height):
        raise VideoDecodeError("bad_header", "the video stream has no frame size")
    check_pixels(width, height, cfg)
    fps = float(rate) if rate else 0.0
    index = None
    if trust_header:
        try:
            index = frame_timestamps(source, cfg.max_frames)
        except NoTimestamps:
            pass
        except OverflowError as exc:
            raise VideoDecodeError("too_large", str(exc)) from exc
    if index is None:
        num_total = _count_frames(source, cfg.max_frames)
    else:
        num_total = len(index.stamps)
        if claimed and num_total < claimed:
            raise VideoDecodeError("decode_failed", f"pyav: truncated: the header lists {claimed} frames, the file "
                                                    f"holds {num_total}")
    if fps <= 0:
        fps = 25.0  # GIFs without timing: assume 25 fps as the reference does
    first, last = clip_bounds(fps, num_total, start_s, end_s)
    indices = segment_indices(num_total, cfg.num_frames, first, last, cfg.mode, rng)
    size = decode_size(width, height, cfg)
    wanted = [int(i) for i in indices]
    snapped: dict[int, tuple[int, np.ndarray]] = {}
    picked: dict[int, np.ndarray] = {}
    if index is not None:
        try:
            if cfg.snap == "reference_frames" and skip == "NONREF":
                segments = [(low, t, high) for t, (low, high) in zip(wanted, segment_ranges(wanted, first, last))]
                snapped = decode_nearest_reference(source, index, segments, size, cfg.decode_threads)
            rest = [t for n, t in enumerate(wanted) if n not in snapped]
            picked = decode_at(source, index, rest, size, cfg.decode_threads, skip) if rest else {}
        except FrameMissed:
            index, snapped = None, {}  # timestamps the decoder does not keep to: count frames instead
    if index is None:
        threads = cfg.decode_threads if trust_header else None
        picked = decode_in_order(source, wanted, max(wanted), size, threads)
    missing = sorted({t for n, t in enumerate(wanted) if n not in snapped} - set(picked))
    if missing:
        raise VideoDecodeError("decode_failed", f"pyav: frames {missing[:4]} of {num_total} could not be decoded")
    frames = np.stack([snapped[n][1] if n in snapped else picked[t] for n, t in enumerate(wanted)])
    used = np.array([snapped[n][0] if n in snapped else t for n, t in enumerate(wanted)], dtype=np.int64)
    info = VideoInfo(num_total / fps, fps, width, height, num_total, "pyav")
    return SampledVideo(to_model_frames(frames, cfg), info, used)


def _count_frames(source, max_frames: int) -> int:
    count = 0
    with _open(source) as container:
        for _ in container.decode(container.streams.video[0]):
            count += 1
            if count > max_frames:
                raise VideoDecodeError("too_large", f"more than max_frames {max_frames} frames")
    return count
