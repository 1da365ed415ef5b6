"""Frame folders as a video source: a folder of JPEG frames numbered from ``00001.jpg``, at a known frame rate.

Some benchmarks store videos so (MVBench's Episodic Reasoning: TVQA frames at 3 fps). A list row names the
folder as its ``uri`` and the rate in ``frames_fps``; the decode actors sample it as the reference's
``EvalDataset.read_frame`` does (``tasks/eval/eval_utils.py``):

* the frame count is the number of entries in the folder;
* the first and last frame numbers are ``max(1, round(start_s * fps))`` and ``min(round(end_s * fps), count)``
  (the whole folder without bounds), and frame ``i`` of T is ``int(first + seg/2 + round(seg * i))`` with
  ``seg = (last - first) / T`` (the middle of T equal segments, as for video files);
* frame ``n`` is the file ``f"{n:05d}.jpg"``.

Only the sampled files are read (through fsspec: local folders and object stores alike), with the job's
retries; pixels go through the same resize and crop as decoded video frames.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from pipeline.frames import SampledVideo, SamplingConfig, VideoDecodeError, VideoInfo, decode_size, \
    segment_indices, to_model_frames
from pipeline.io.storage import StorageError, RetryPolicy, get_fs, join, read_bytes, with_retries

DECODER_NAME = "frames"  # the ``decoder`` column of rows read from frame folders
MAX_FPS = 10_000.0  # a higher frame rate is no frame folder (and would overflow the frame numbers of a bound)


@dataclass(frozen=True)
class FrameFolder:
    """A row's source when it is a frame folder: where, and at what rate."""

    uri: str
    fps: float  # as the list gives it (checked when sampled)


def frame_numbers(count: int, num_frames: int, fps: float, start_s: float | None = None,
                  end_s: float | None = None) -> np.ndarray:
    """The file numbers (1-based) of the ``num_frames`` frames sampled from a folder of ``count`` frames.

    Raises:
        VideoDecodeError: an empty folder, or clip bounds that hold no frame of it.
    """
    if count < 1:
        raise VideoDecodeError("empty", "the frame folder is empty")
    first = max(1, round(start_s * fps)) if start_s is not None else 1
    last = min(round(end_s * fps), count) if end_s is not None else count
    if first > count:
        raise VideoDecodeError("bad_clip", f"clip start {start_s}s is past the last frame ({count} frames at "
                                           f"{fps:g} fps)")
    if last < first:
        raise VideoDecodeError("bad_clip", f"clip [{start_s}, {end_s}]s holds no frames of the folder")
    # segment_indices clips to [first, num_total - 1]: count + 1 totals make ``count`` the last frame number.
    return segment_indices(count + 1, num_frames, first=first, last=last)


def _count(uri: str, storage_options: dict | None, retry: RetryPolicy) -> int:
    def listing() -> int:
        fs, path = get_fs(uri, storage_options)
        if not fs.isdir(path):
            raise FileNotFoundError(f"no frame folder at {path}")
        return len(fs.ls(path, detail=False))

    return with_retries(uri, "listing", listing, retry)


def _model_frame(data: bytes, name: str, cfg: SamplingConfig) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > cfg.max_pixels:
            raise VideoDecodeError("too_large", f"{name}: {width}x{height} exceeds max_pixels {cfg.max_pixels}")
        image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VideoDecodeError("undecodable", f"{name} is not a readable image ({type(exc).__name__})") from None
    if cfg.resize == "fast":  # one bicubic resize to the size the reference's two reach, then the centre crop
        image = image.resize(decode_size(width, height, cfg), Image.BICUBIC)
    return to_model_frames(np.asarray(image)[None], cfg)[0], (width, height)


def sample_frame_folder(folder: FrameFolder, cfg: SamplingConfig, start_s: float | None = None,
                        end_s: float | None = None, storage_options: dict | None = None,
                        retry: RetryPolicy = RetryPolicy(), pool: Executor | None = None) -> SampledVideo:
    """Sample ``cfg.num_frames`` frames of a frame folder (module docstring).

    Raises:
        StorageError: the folder or a sampled frame's file is missing or cannot be read.
        VideoDecodeError: a bad rate, an empty folder, bounds outside it, a file that is not an image.
    """
    try:
        fps = float(folder.fps) if not isinstance(folder.fps, bool) else math.nan
    except (TypeError, ValueError):
        fps = math.nan
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise VideoDecodeError("bad_frame_rate", f"frames_fps must be a number above 0 and at most {MAX_FPS:g}, "
                                                 f"got {folder.fps!r}"[:300])
    folder = FrameFolder(folder.uri, fps)
    count = _count(folder.uri, storage_options, retry)
    if count > cfg.max_frames:
        raise VideoDecodeError("too_long", f"the frame folder holds {count} entries, more than max_frames "
                                           f"{cfg.max_frames}")
    numbers = frame_numbers(count, cfg.num_frames, folder.fps, start_s, end_s)
    unique = sorted(set(int(n) for n in numbers))
    names = {n: f"{n:05d}.jpg" for n in unique}
    fetch = (pool.map if pool is not None else map)(
        lambda n: read_bytes(join(folder.uri, names[n]), storage_options, retry), unique)
    try:
        pictures = dict(zip(unique, fetch))
    except StorageError as exc:
        raise StorageError(exc.reason, f"a sampled frame of the folder: {exc}") from exc
    decoded = {n: _model_frame(data, names[n], cfg) for n, data in pictures.items()}
    width, height = decoded[unique[0]][1]
    frames = np.stack([decoded[int(n)][0] for n in numbers])
    info = VideoInfo(count / folder.fps, float(folder.fps), width, height, count, DECODER_NAME)
    return SampledVideo(frames, info, numbers)
