"""Clip windows: a long source video becomes several rows, one per window, each captioned like a clip.

Windows start every ``stride_s`` seconds and last ``window_s`` (the last one ends with the video; a tail
shorter than :data:`MIN_TAIL_S` joins the window before it). With ``scenes``, cuts found by PySceneDetect
are window boundaries too: no window spans a cut. A window row keeps its source's URI and extra columns,
gets ``start_s``/``end_s`` (its bounds in the source), ``source_video`` (the source's id) and an id
derived from both (:func:`window_id`), so a rerun finds the same windows and resume works per window.

Only the container is read here, not decoded: its header's duration, checked against the stream itself
(:func:`probe_duration`); decoding happens in the sampler, window by window. A source whose duration cannot
be read passes through as one row: the sampler then records why. A source that would make more than
``max_windows`` windows (:data:`MAX_WINDOWS_PER_VIDEO`) becomes one error row (stage ``source``, reason
``too_many_windows``) instead of a flood of rows.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile

import pyarrow as pa
import ray

from pipeline import schema as S
from pipeline.io.masking import mask_text
from pipeline.io.storage import get_fs, is_local, local_path

logger = logging.getLogger(__name__)

MIN_TAIL_S = 1.0  # a last window shorter than this (and than half a window) is merged into the one before
# A day of video in 10 s windows is 8640: more than this is a mistake or a lying header, and would flood the
# job with rows (and the sampler with seeks) for hours.
MAX_WINDOWS_PER_VIDEO = 10_000
MAX_SCENE_WINDOW_S = 1e12  # scenes alone: the span between two cuts, however long (finite, so it can be counted)
# Reading a stream's last packets to find where it really ends stops after this much: past it the stream is
# long indeed, and the header is believed (the window cap still applies).
MAX_END_PACKETS = 5_000
MAX_END_BYTES = 64 << 20


class WindowError(Exception):
    """A source that cannot be split into windows. ``reason`` is a short category for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def window_id(source_id: str, start_s: float, end_s: float) -> str:
    """``<source id>_t<start ms>-<end ms>``: stable across runs, readable, safe as a WebDataset key."""
    return f"{source_id}_t{round(start_s * 1000)}-{round(end_s * 1000)}"


def _span_starts(lo: float, hi: float, window_s: float, stride_s: float) -> int:
    """How many windows start in ``[lo, hi]`` (the last one reaching ``hi``), counted without listing them."""
    if hi - lo <= window_s + 1e-9:
        return 1
    return math.ceil((hi - lo - window_s - 1e-9) / stride_s) + 1


def window_bounds(start_s: float, end_s: float, window_s: float, stride_s: float | None = None,
                  cuts: list[float] | None = None,
                  max_windows: int = MAX_WINDOWS_PER_VIDEO) -> list[tuple[float, float]]:
    """The windows of ``[start_s, end_s]``: every ``stride_s`` (default ``window_s``), each ``window_s`` long
    or cut short by the end; scene ``cuts`` inside the span split it first. A span no longer than a window
    is one window.

    Raises:
        ValueError: ``window_s`` or ``stride_s`` not finite and positive, or the stride longer than the window
            (the job's config refuses these first).
        WindowError: ``bad_clip`` for bounds that are not finite numbers in order; ``too_many_windows`` when
            there would be more than ``max_windows`` (counted before any is made).
    """
    stride_s = stride_s or window_s
    if not (math.isfinite(window_s) and math.isfinite(stride_s) and 0 < stride_s <= window_s):
        raise ValueError(f"windows need 0 < stride_s <= window_s, both finite; got {stride_s}, {window_s}")
    if not (math.isfinite(start_s) and math.isfinite(end_s) and start_s <= end_s):
        raise WindowError("bad_clip", f"cannot split [{start_s}, {end_s}] s into windows")
    edges = [start_s] + sorted(c for c in (cuts or []) if start_s < c < end_s) + [end_s]
    count = sum(_span_starts(lo, hi, window_s, stride_s) for lo, hi in zip(edges, edges[1:]))
    if count > max_windows:
        cut_note = f" and {len(edges) - 2} scene cuts" if len(edges) > 2 else ""
        raise WindowError("too_many_windows", f"{end_s - start_s:g} s in {window_s:g} s windows every "
                          f"{stride_s:g} s{cut_note} would make {count} windows, more than the cap of "
                          f"{max_windows} per video (use longer windows, or split the list row with "
                          "start_s/end_s)")
    windows: list[tuple[float, float]] = []
    for lo, hi in zip(edges, edges[1:]):
        # Starts by multiplication, not by adding the stride up: no drift over thousands of windows.
        spans = [(lo + k * stride_s, min(lo + k * stride_s + window_s, hi))
                 for k in range(_span_starts(lo, hi, window_s, stride_s))]
        spans[-1] = (spans[-1][0], hi)
        tail = spans[-1]
        if len(spans) > 1 and tail[1] - tail[0] < min(MIN_TAIL_S, window_s / 2):
            spans.pop()
            spans[-1] = (spans[-1][0], hi)
        windows += spans
    return [(round(a, 6), round(b, 6)) for a, b in windows]


def _claimed_duration(container, stream) -> float | None:
    """What the header says: stream duration, else container duration, else frame count over rate."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    rate = _frame_rate(stream)
    return stream.frames / rate if stream.frames and rate else None


def _frame_rate(stream) -> float:
    # The rate guessed from timestamps first: a forged duration also skews the average rate (frames / duration).
    return float(stream.guessed_rate or stream.base_rate or stream.average_rate or 0)


def _measured_end_s(container, stream, claimed_s: float) -> float | None:
    """Where the stream's packets really end, in seconds from its start: seek to the keyframe before the
    claimed end and read the packets after it (demuxed, not decoded). None when the seek or the read fails,
    nothing is read, or the stream goes on past :data:`MAX_END_PACKETS` / :data:`MAX_END_BYTES`."""
    import av

    time_base = stream.time_base
    first = stream.start_time or 0
    try:
        container.seek(first + int(claimed_s / time_base), stream=stream, backward=True, any_frame=False)
        end, read = None, 0
        for number, packet in enumerate(container.demux(stream)):
            if number >= MAX_END_PACKETS or read > MAX_END_BYTES:
                return None
            read += packet.size
            if packet.pts is not None:
                end = max(end or packet.pts, packet.pts + (packet.duration or 0))
    except (av.error.FFmpegError, OSError, OverflowError, ValueError):
        return None
    return float((end - first) * time_base) if end is not None else None


def probe_duration(source) -> float | None:
    """Seconds of video ``source`` holds: the header's duration (stream duration, else container duration,
    else frame count over rate), checked against the stream. A header can claim anything (a 40-frame file
    saying 1e6 s): unless the frame count over the frame rate bears the claim out, the stream's last packets
    are read (no decoding) and their end wins when it comes sooner. None when the header does not say or
    the file cannot be opened."""
    import av

    try:
        with av.open(source) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            claimed = _claimed_duration(container, stream)
            if claimed is None or not math.isfinite(claimed) or claimed <= 0:
                return claimed
            rate = _frame_rate(stream)
            if stream.frames and rate and claimed <= 1.5 * stream.frames / rate + 1:
                return claimed  # the frame count bears it out: no need to read the stream's end
            measured = _measured_end_s(container, stream, claimed)
            return min(claimed, measured) if measured is not None and measured > 0 else claimed
    except Exception:  # noqa: BLE001 - any failure here means "unknown": the sampler reports the real error
        return None


def scene_cuts(source) -> list[float]:
    """Seconds at which PySceneDetect's content detector (its defaults) finds a cut, in a local file."""
    from scenedetect import ContentDetector, detect

    return [start.get_seconds() for start, _ in detect(source, ContentDetector())[1:]]


class SplitWindows:
    """Stage: each video row becomes its windows (see the module). Rows that carry an error pass through.

    With a ``tally``, the rows added are counted (``windows_added``), so the run can still check that every
    row it read was accounted for.
    """

    def __init__(self, window_s: float | None, stride_s: float | None = None, scenes: bool = False,
                 storage_options: dict | None = None, tally=None, max_windows: int = MAX_WINDOWS_PER_VIDEO) -> None:
        # No window_s: scenes alone are the windows (one window as long as any video can be).
        self.window_s = window_s or MAX_SCENE_WINDOW_S
        self.stride_s = stride_s
        self.scenes = scenes
        self.max_windows = max_windows
        self.storage_options = storage_options or {}
        self.tally = tally

    def _windows(self, uri: str, start_s: float | None, end_s: float | None) -> list[tuple[float, float]] | None:
        if is_local(uri):
            duration, cuts = self._probe(local_path(uri))
        else:
            fs, path = get_fs(uri, self.storage_options)
            if not self.scenes:
                with fs.open(path, "rb") as remote:
                    duration, cuts = self._probe(remote)
            else:  # the detector decodes every frame from a path: one local copy
                with tempfile.TemporaryDirectory(prefix="pllava-scenes-") as folder:
                    copy = os.path.join(folder, "video" + os.path.splitext(path)[1])
                    fs.get(path, copy)
                    duration, cuts = self._probe(copy)
        if duration is None or not math.isfinite(duration) or duration <= 0:
            return None
        if any(x is not None and math.isnan(x) for x in (start_s, end_s)):
            raise WindowError("bad_clip", f"start_s/end_s must be numbers, got {start_s}, {end_s}")
        lo = max(0.0, start_s or 0.0)
        hi = min(end_s, duration) if end_s is not None else duration
        if hi <= lo:
            return None
        return window_bounds(lo, hi, self.window_s, self.stride_s, cuts, self.max_windows)

    def _probe(self, source) -> tuple[float | None, list[float]]:
        duration = probe_duration(source)
        if not self.scenes or duration is None:
            return duration, []
        return duration, scene_cuts(source)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = []
        for row in rows:
            row[S.SOURCE_VIDEO] = row[S.VIDEO_ID]
            windows = None
            if row[S.ERROR] is None:
                try:
                    windows = self._windows(row[S.URI], row[S.START_S], row[S.END_S])
                except WindowError as exc:
                    logger.warning("%s: %s", mask_text(row[S.URI]), exc)
                    row.update({S.ERROR: f"{S.STAGE_SOURCE}: {exc}", S.ERROR_STAGE: S.STAGE_SOURCE,
                                S.ERROR_REASON: exc.reason})
                    out.append(row)
                    continue
                except Exception as exc:  # noqa: BLE001 - unreadable here: the sampler reads it and records why
                    logger.debug("no windows for %s: %s", mask_text(row[S.URI]), exc)
                if windows is None:
                    logger.warning("could not read the duration of %s: captioned as one video",
                                   mask_text(row[S.URI]))
            if not windows:
                out.append(row)
                continue
            out += [{**row, S.VIDEO_ID: window_id(row[S.SOURCE_VIDEO], start, end), S.START_S: start, S.END_S: end}
                    for start, end in windows]
        if self.tally is not None:
            ray.get(self.tally.add.remote(windows_added=len(out) - len(rows)))
        schema = batch.schema if S.SOURCE_VIDEO in batch.column_names else batch.schema.append(
            pa.field(S.SOURCE_VIDEO, pa.string()))
        return pa.Table.from_pylist(out, schema=schema)
