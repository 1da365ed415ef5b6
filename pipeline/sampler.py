"""FrameSampler stage (CPU actors): object bytes -> sampled uint8 frames + video metadata, or an error row."""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipeline import schema as S
from pipeline.crash_journal import CrashJournal
from pipeline.frame_folders import FrameFolder, sample_frame_folder
from pipeline.frames import SampledVideo, SamplingConfig, VideoDecodeError, sample_frames
from pipeline.io.masking import mask_text
from pipeline.io.storage import (SPOOL_ABOVE_MB, StorageError, RetryPolicy, check_local_file, is_local, local_path,
                                 read_or_spool)

logger = logging.getLogger(__name__)

DECODE_TIMEOUT_EXIT_CODE = 86  # a decode process that ended itself at its time limit

# Columns this stage adds, with their Arrow types.
SAMPLED_COLUMNS = {
    S.FRAMES: pa.large_binary(),
    S.KEYFRAME_JPEG: pa.binary(),
    S.DURATION_S: pa.float64(),
    S.FPS: pa.float64(),
    S.WIDTH: pa.int32(),
    S.HEIGHT: pa.int32(),
    S.FRAME_COUNT: pa.int64(),
    S.DECODER: pa.string(),
    S.DECODE_S: pa.float64(),
    S.DECODE_CPU_S: pa.float64(),
    S.FRAME_INDICES: pa.list_(pa.int64()),
}


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def frames_from_bytes(data: bytes, num_frames: int, image_size: int) -> np.ndarray:
    """Inverse of the stage's packing: raw bytes -> ``uint8 (T, S, S, 3)``."""
    return np.frombuffer(data, dtype=np.uint8).reshape(num_frames, image_size, image_size, 3)


def fetch_video(uri: str, spool_dir: str, max_in_memory_bytes: int, storage_options: dict | None = None,
                retry: RetryPolicy = RetryPolicy(), on_retry=None) -> str | bytes:
    """What a decoder reads: a local file's path (checked: a readable regular file), or an object's bytes, or
    a local copy of an object larger than ``max_in_memory_bytes`` under ``spool_dir`` (bounded retries).

    Raises:
        StorageError: missing, forbidden, not a file, or transient failures that outlasted the retries.
    """
    if is_local(uri):
        path = local_path(uri)
        check_local_file(path)  # a folder, a refused or impossible path: a read error, not a decode one
        return path  # decoders read local files directly
    return read_or_spool(uri, spool_dir, max_in_memory_bytes, storage_options, retry, on_retry=on_retry)


class FrameSampler:
    """Reads each video (bounded retries), samples ``num_frames`` frames at ``image_size``, records metadata.

    Rows that already carry an error pass through untouched; read and decode failures set ``error``,
    ``error_stage`` and ``error_reason`` and the job goes on.
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        storage_options: dict | None = None,
        retry: RetryPolicy = RetryPolicy(),
        keyframes: bool = False,
        io_threads: int = 4,
        max_in_memory_mb: float = SPOOL_ABOVE_MB,
        journal_dir: str | None = None,
        max_crashes: int = 2,
        decode_timeout_s: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.sampling = sampling
        # Random frame picks (training) follow the run's seed: the same run draws the same frames.
        self.rng = np.random.default_rng(seed) if seed is not None else None
        self.storage_options = storage_options or {}
        self.retry = retry
        self.keyframes = keyframes
        self.pool = ThreadPoolExecutor(max_workers=io_threads)
        # Objects above this size are streamed to local files, so an actor's memory does not grow with them.
        self.max_in_memory_bytes = int(max_in_memory_mb * 1024 * 1024)
        self.spool_dir = tempfile.mkdtemp(prefix="pllava-spool-")
        # A video that kills this process (a native decoder crash) is counted by the next incarnation.
        self.journal = CrashJournal(journal_dir, max_crashes) if journal_dir else None
        # A native decode cannot be interrupted: past the limit the process notes the video and ends itself;
        # Ray restarts the actor and the video becomes a decode/timeout row (needs the journal).
        self.decode_timeout_s = decode_timeout_s if self.journal else None
        self._current: tuple[str, float] | None = None  # (video_id, deadline) of the decode in progress
        if self.decode_timeout_s:
            threading.Thread(target=self._enforce_time_limit, name="decode-time-limit", daemon=True).start()

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "spool_dir", ""), ignore_errors=True)

    def _fetch(self, uri: str, retries: list[int]) -> str | bytes | StorageError:
        """The video's local path or bytes, or its read error; ``retries[0]`` counts transient failures."""
        try:
            return fetch_video(uri, self.spool_dir, self.max_in_memory_bytes, self.storage_options, self.retry,
                               on_retry=lambda: retries.__setitem__(0, retries[0] + 1))
        except StorageError as exc:
            return exc

    def _enforce_time_limit(self) -> None:
        while True:
            time.sleep(min(1.0, self.decode_timeout_s / 4))
            current = self._current
            if current is not None and time.monotonic() > current[1]:
                logger.error("decoding %s ran past %g s: ending this decode process", current[0],
                             self.decode_timeout_s)
                self.journal.mark_timeout(current[0])
                os._exit(DECODE_TIMEOUT_EXIT_CODE)

    def _release(self, source) -> None:
        if isinstance(source, str) and source.startswith(self.spool_dir + os.sep):
            os.remove(source)

    def _sample(self, source, start_s, end_s) -> SampledVideo:
        if isinstance(source, FrameFolder):
            return sample_frame_folder(source, self.sampling, start_s, end_s, self.storage_options, self.retry,
                                       self.pool)
        try:
            return sample_frames(source, self.sampling, start_s, end_s, rng=self.rng)
        except OSError as exc:  # the local file vanished or became unreadable between the check and the decode
            raise StorageError("not_found" if isinstance(exc, FileNotFoundError) else "io",
                            f"{type(exc).__name__}: {exc}") from exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        S.require_columns(batch.column_names, [S.VIDEO_ID, S.URI, S.START_S, S.END_S, S.ERROR], "FrameSampler")
        rows = batch.select([S.VIDEO_ID, S.URI, S.START_S, S.END_S, S.ERROR]).to_pylist()
        # A frame folder's rate; None or NaN (a float column with gaps): the row is a video file.
        folder_fps = [None if v is None or isinstance(v, float) and math.isnan(v) else v
                      for v in (batch.column(S.FRAMES_FPS).to_pylist() if S.FRAMES_FPS in batch.column_names
                                else [None] * len(rows))]
        pending = [i for i, r in enumerate(rows) if r[S.ERROR] is None]
        retries = [[0] for _ in rows]
        # Rows of one URI (the clip windows of a source) share one fetch, released after the last of them.
        # Frame folders are read frame by frame while sampled (only the sampled frames).
        first_of = {}
        for i in pending:
            if folder_fps[i] is None:
                first_of.setdefault(rows[i][S.URI], i)
        by_uri = dict(zip(first_of, self.pool.map(lambda i: self._fetch(rows[i][S.URI], retries[i]),
                                                  first_of.values())))
        fetched = {i: FrameFolder(rows[i][S.URI], folder_fps[i]) if folder_fps[i] is not None
                   else by_uri[rows[i][S.URI]] for i in pending}
        users = Counter(rows[i][S.URI] for i in pending)
        new: dict[str, list] = {name: [] for name in SAMPLED_COLUMNS}
        errors = batch.column(S.ERROR).to_pylist()
        stages = batch.column(S.ERROR_STAGE).to_pylist()
        reasons = batch.column(S.ERROR_REASON).to_pylist()
        for i, row in enumerate(rows):
            video, started, cpu_s = None, time.perf_counter(), None
            source = fetched.get(i)
            if isinstance(source, StorageError):
                errors[i], stages[i], reasons[i] = f"read: {source}", S.STAGE_READ, source.reason
            elif source is not None and self.journal and (reason := self.journal.skip_reason(row[S.VIDEO_ID])):
                errors[i] = (f"decode: took longer than {self.decode_timeout_s:g} s; not decoded again"
                             if reason == "timeout" else f"decode: the decoder process died "
                             f"{self.journal.crashes(row[S.VIDEO_ID])} times on this video; not decoded again")
                stages[i], reasons[i] = S.STAGE_DECODE, reason
            elif source is not None:
                try:
                    if self.journal:
                        self.journal.start(row[S.VIDEO_ID])
                    if self.decode_timeout_s:
                        self._current = (row[S.VIDEO_ID], time.monotonic() + self.decode_timeout_s)
                    cpu_started = time.process_time()
                    video = self._sample(source, row[S.START_S], row[S.END_S])
                    cpu_s = time.process_time() - cpu_started
                except StorageError as exc:
                    errors[i], stages[i], reasons[i] = f"read: {exc}", S.STAGE_READ, exc.reason
                except VideoDecodeError as exc:
                    errors[i], stages[i], reasons[i] = f"decode: {exc}", S.STAGE_DECODE, exc.reason
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one video must never abort the job; recorded, not hidden
                    logger.warning("unexpected %s while sampling %s", type(exc).__name__, mask_text(row[S.URI]),
                                   exc_info=True)
                    errors[i] = f"decode: unexpected {type(exc).__name__}: {mask_text(str(exc))}"[:1000]
                    stages[i], reasons[i] = S.STAGE_DECODE, "unexpected"
                finally:
                    self._current = None
                    if self.journal:
                        self.journal.finish()
            if source is not None:
                users[row[S.URI]] -= 1
                if not users[row[S.URI]]:
                    self._release(source)
            elapsed = time.perf_counter() - started
            info = video.info if video is not None else None
            new[S.FRAMES].append(video.frames.tobytes() if video is not None else b"")
            middle = video.frames[len(video.frames) // 2] if video is not None and self.keyframes else None
            new[S.KEYFRAME_JPEG].append(encode_jpeg(middle) if middle is not None else None)
            new[S.DURATION_S].append(info.duration_s if info else None)
            new[S.FPS].append(info.fps if info else None)
            new[S.WIDTH].append(info.width if info else None)
            new[S.HEIGHT].append(info.height if info else None)
            new[S.FRAME_COUNT].append(info.frame_count if info else None)
            new[S.DECODER].append(info.decoder if info else None)
            new[S.DECODE_S].append(elapsed if source is not None else None)
            new[S.DECODE_CPU_S].append(cpu_s)
            new[S.FRAME_INDICES].append([int(x) for x in video.indices] if video is not None else None)
        columns = S.error_columns(errors, stages, reasons)
        columns.update({name: (kind, new[name]) for name, kind in SAMPLED_COLUMNS.items()})
        columns[S.READ_RETRIES] = (pa.int32(), [r[0] for r in retries])
        return S.with_columns(batch, columns)
