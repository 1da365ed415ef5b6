"""Frame folders as a video source: the frames the reference's ``EvalDataset.read_frame`` picks
(``tasks/eval/eval_utils.py``), read by the decode stage from local folders and S3, with clear errors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as S
from pipeline.frame_folders import FrameFolder, frame_numbers, sample_frame_folder
from pipeline.frames import SamplingConfig, VideoDecodeError
from pipeline.io.storage import StorageError, RetryPolicy


def reference_numbers(count: int, segments: int, fps: float, bound: tuple[float, float] | None) -> list[int]:
    """The reference's rule, written out from its description: with bounds, first = max(1, round(start * fps)),
    last = min(round(end * fps), count); without, 1 and count; seg = (last - first) / T; frame i is
    int(first + seg / 2 + round(seg * i))."""
    start, end = bound if bound else (-100000, 100000)
    first, last = max(1, round(start * fps)), min(round(end * fps), count)
    seg = (last - first) / segments
    return [int(first + seg / 2 + round(seg * i)) for i in range(segments)]


@pytest.mark.parametrize("count, segments, bound", [
    (90, 16, None), (16, 16, None), (7, 16, None), (1, 4, None), (300, 16, (3.4, 41.2)), (120, 8, (0.0, 10.0)),
    (45, 16, (14.9, 100.0)), (1000, 32, (0.5, 0.9)),
])
def test_frame_numbers_follow_the_reference(count, segments, bound):
    got = frame_numbers(count, segments, 3.0, *(bound or (None, None)))
    assert got.tolist() == reference_numbers(count, segments, 3.0, bound)
    assert 1 <= got.min() and got.max() <= count  # file numbers start at 00001.jpg


def test_bounds_outside_the_folder_and_empty_folders_are_decode_errors():
    with pytest.raises(VideoDecodeError, match="bad_clip"):
        frame_numbers(30, 4, 3.0, 20.0, 30.0)  # starts at frame 60 of 30
    with pytest.raises(VideoDecodeError, match="empty"):
        frame_numbers(0, 4, 3.0)


def _colour(n: int) -> tuple[int, int, int]:
    return (n * 7) % 256, (n * 13) % 256, 255 - (n * 3) % 256


def _write_folder(folder, count: int, size=(64, 48), extra: dict[str, bytes] | None = None) -> str:
    from PIL import Image

    folder.mkdir(parents=True)
    for n in range(1, count + 1):
        Image.new("RGB", size, _colour(n)).save(folder / f"{n:05d}.jpg", quality=95)
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return str(folder)


def _picked(frames: np.ndarray) -> list[int]:
    """The frame number each sampled frame shows (by its colour)."""
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    table = np.array([_colour(n) for n in range(1, 400)], dtype=float)
    return [int(np.abs(table - m).sum(axis=1).argmin()) + 1 for m in means]


def test_a_local_frame_folder_gives_the_reference_frames_at_the_model_size(tmp_path):
    folder = _write_folder(tmp_path / "clip", 60)
    cfg = SamplingConfig(num_frames=8, image_size=32)
    video = sample_frame_folder(FrameFolder(folder, 3.0), cfg, start_s=2.0, end_s=15.0)
    assert video.frames.shape == (8, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.indices.tolist() == reference_numbers(60, 8, 3.0, (2.0, 15.0))
    assert _picked(video.frames) == video.indices.tolist()  # the files of those numbers, not their neighbours
    info = video.info
    assert (info.frame_count, info.fps, info.duration_s, info.width, info.height, info.decoder) == \
        (60, 3.0, 20.0, 64, 48, "frames")
    reference = sample_frame_folder(FrameFolder(folder, "3"), SamplingConfig(num_frames=8, image_size=32,
                                                                              resize="reference"))
    assert _picked(reference.frames) == reference_numbers(60, 8, 3.0, None)


def test_every_entry_counts_as_the_reference_counts_them(tmp_path):
    # The reference counts the folder's entries (os.listdir), whatever they are.
    folder = _write_folder(tmp_path / "clip", 20, extra={"notes.txt": b"x"})
    video = sample_frame_folder(FrameFolder(folder, 3.0), SamplingConfig(num_frames=4, image_size=16))
    assert video.info.frame_count == 21


@pytest.mark.parametrize("fps", [0, -3, float("nan"), float("inf"), "fast", True, None])
def test_a_bad_frame_rate_is_a_decode_error(tmp_path, fps):
    folder = _write_folder(tmp_path / "clip", 4)
    with pytest.raises(VideoDecodeError, match="bad_frame_rate"):
        sample_frame_folder(FrameFolder(folder, fps), SamplingConfig(num_frames=2, image_size=16))


def test_missing_folders_files_and_broken_images_are_clear_errors(tmp_path):
    cfg, fast = SamplingConfig(num_frames=4, image_size=16), RetryPolicy(attempts=1)
    with pytest.raises(StorageError) as info:
        sample_frame_folder(FrameFolder(str(tmp_path / "nowhere"), 3.0), cfg, retry=fast)
    assert info.value.reason == "not_found"
    gappy = _write_folder(tmp_path / "gappy", 12)
    (tmp_path / "gappy" / "00002.jpg").unlink()
    (tmp_path / "gappy" / "zz.txt").write_text("keeps the count at 12")  # so 00002.jpg is a sampled frame
    with pytest.raises(StorageError, match="00002.jpg") as info:
        sample_frame_folder(FrameFolder(gappy, 3.0), cfg, retry=fast)
    assert info.value.reason == "not_found"
    broken = _write_folder(tmp_path / "broken", 3)
    (tmp_path / "broken" / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match="undecodable.*00002.jpg"):
        sample_frame_folder(FrameFolder(broken, 3.0), cfg, retry=fast)
    (tmp_path / "broken" / "00002.jpg").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="undecodable"):
        sample_frame_folder(FrameFolder(broken, 3.0), cfg, retry=fast)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError, match="empty"):
        sample_frame_folder(FrameFolder(str(empty), 3.0), cfg, retry=fast)
    huge = _write_folder(tmp_path / "huge", 2, size=(400, 300))
    with pytest.raises(VideoDecodeError, match="too_large"):
        sample_frame_folder(FrameFolder(huge, 3.0), SamplingConfig(num_frames=2, image_size=16, max_pixels=1000))


def test_the_decode_stage_reads_frame_folders_and_videos_in_one_batch(tmp_path, video_dir):
    from pipeline.sampler import FrameSampler

    folder = _write_folder(tmp_path / "clip", 30)
    batch = pa.table({
        S.VIDEO_ID: ["folder", "video", "bad-rate", "gone"],
        S.URI: [folder, f"{video_dir}/a.mp4", folder, str(tmp_path / "gone")],
        S.START_S: pa.array([None, None, None, None], pa.float64()),
        S.END_S: pa.array([None, None, None, None], pa.float64()),
        S.FRAMES_FPS: pa.array([3.0, None, -1.0, 3.0], pa.float64()),
        S.ERROR: pa.array([None] * 4, pa.string()), S.ERROR_STAGE: pa.array([None] * 4, pa.string()),
        S.ERROR_REASON: pa.array([None] * 4, pa.string()),
    })
    sampler = FrameSampler(SamplingConfig(num_frames=4, image_size=16), retry=RetryPolicy(attempts=1))
    rows = sampler(batch).to_pylist()
    assert rows[0][S.ERROR] is None and rows[0][S.DECODER] == "frames"
    assert rows[0][S.FRAME_INDICES] == reference_numbers(30, 4, 3.0, None) and rows[0][S.FRAME_COUNT] == 30
    assert len(rows[0][S.FRAMES]) == 4 * 16 * 16 * 3
    assert rows[1][S.ERROR] is None and rows[1][S.DECODER] != "frames"  # a video file, decoded as before
    assert (rows[2][S.ERROR_STAGE], rows[2][S.ERROR_REASON]) == (S.STAGE_DECODE, "bad_frame_rate")
    assert (rows[3][S.ERROR_STAGE], rows[3][S.ERROR_REASON]) == (S.STAGE_READ, "not_found")


def test_a_frame_folder_on_s3_reads_only_the_sampled_frames(s3_endpoint, tmp_path):
    import s3fs
    from PIL import Image

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    bucket = "frame-folders"
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for n in range(1, 41):
        data = io.BytesIO()
        Image.new("RGB", (40, 30), _colour(n)).save(data, format="JPEG", quality=95)
        fs.pipe(f"{bucket}/clip/{n:05d}.jpg", data.getvalue())
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    video = sample_frame_folder(FrameFolder(f"s3://{bucket}/clip", 3.0), SamplingConfig(num_frames=5, image_size=16),
                                storage_options=options)
    assert _picked(video.frames) == reference_numbers(40, 5, 3.0, None) and video.info.frame_count == 40
