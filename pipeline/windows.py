"""Clip windows: a long source video becomes several rows, one per window, each captioned like a clip.

Windows start every ``stride_s`` seconds and last ``window_s`` (the last one ends with the video; a tail
shorter than :data:`MIN_TAIL_S` joins the window before it). With ``scenes``, cuts found by PySceneDetect
are window boundaries too: no window spans a cut. A window row keeps its source's URI and extra columns,
gets ``start_s``/``end_s`` (its bounds in the source), ``source_video`` (the source's id) and an id
derived from both (:func:`window_id`), so a rerun finds the same windows and resume works per window.

Only the container header is read here (the duration); decoding happens in the sampler, window by window.
A source whose duration cannot be read passes through as one row: the sampler then records why.
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


def window_id(source_id: str, start_s: float, end_s: float) -> str:
    """``<source id>_t<start ms>-<end ms>``: stable across runs, readable, safe as a WebDataset key."""
    return f"{source_id}_t{round(start_s * 1000)}-{round(end_s * 1000)}"


def window_bounds(start_s: float, end_s: float, window_s: float, stride_s: float | None = None,
                  cuts: list[float] | None = None) -> list[tuple[float, float]]:
    """The windows of ``[start_s, end_s]``: every ``stride_s`` (default ``window_s``), each ``window_s`` long
    or cut short by the end; scene ``cuts`` inside the span split it first. A span no longer than a window
    is one window."""
    stride_s = stride_s or window_s
    edges = [start_s] + sorted(c for c in (cuts or []) if start_s < c < end_s) + [end_s]
    windows: list[tuple[float, float]] = []
    for lo, hi in zip(edges, edges[1:]):
        spans: list[tuple[float, float]] = []
        begin = lo
        while True:
            spans.append((begin, min(begin + window_s, hi)))
            if begin + window_s >= hi - 1e-9:
                break
            begin += stride_s
        tail = spans[-1]
        if len(spans) > 1 and tail[1] - tail[0] < min(MIN_TAIL_S, window_s / 2):
            spans.pop()
            spans[-1] = (spans[-1][0], hi)
        windows += spans
    return [(round(a, 6), round(b, 6)) for a, b in windows]


def probe_duration(source) -> float | None:
    """Seconds of video a container says it holds (stream duration, else container duration, else frame count
    over rate); None when the header does not say or the file cannot be opened. Reads the header only."""
    import av

    try:
        with av.open(source) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / 1e6
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            return stream.frames / rate if stream.frames and rate else None
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
                 storage_options: dict | None = None, tally=None) -> None:
        self.window_s = window_s or math.inf  # none: scenes alone are the windows
        self.stride_s = stride_s
        self.scenes = scenes
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
        lo, hi = start_s or 0.0, min(end_s, duration) if end_s is not None else duration
        if hi <= lo:
            return None
        return window_bounds(lo, hi, self.window_s, self.stride_s, cuts)

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
