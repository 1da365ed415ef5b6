"""Clip windows: a long video becomes one row per window, with its bounds, frames from inside it, and resume
per window."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import job_config
from pipeline import schema as S
from pipeline.windows import SplitWindows, probe_duration, window_bounds, window_id

FPS = 4


def write_clock_video(path: str, seconds: int, fps: int = FPS, cuts: tuple[float, ...] = ()) -> str:
    """Flat grey frames whose level is the frame index (0, 1, 2, ...): a sampled frame tells when it was shot.
    ``cuts``: seconds where a coloured pattern switches, a hard scene change for a detector."""
    import av

    side = 64
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            frame = np.full((side, side, 3), i % 256, dtype=np.uint8)
            scene = sum(i / fps >= c for c in cuts)
            if cuts:  # a different scene: other colours over most of the frame
                frame[:, : 3 * side // 4] = ((20, 200, 40), (230, 30, 220), (250, 240, 10))[scene % 3]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_windows_tile_the_video_back_to_back_and_a_short_tail_joins_the_last_one():
    assert window_bounds(0, 60, 10) == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60)]
    assert window_bounds(0, 65, 10)[-1] == (60, 65)
    assert window_bounds(0, 60.5, 10)[-1] == (50, 60.5)  # a 0.5 s tail is not a window of its own
    assert window_bounds(0, 4, 10) == [(0, 4)]  # shorter than a window: one row
    assert window_bounds(0, 30, 10, stride_s=5) == [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30)]
    assert window_bounds(12, 31, 10) == [(12, 22), (22, 31)]  # a clip's bounds are split, not the whole video
    # Scene cuts are boundaries: no window spans one.
    assert window_bounds(0, 30, 10, cuts=[7, 23]) == [(0, 7), (7, 17), (17, 23), (23, 30)]
    assert window_id("abc", 10, 20.25) == "abc_t10000-20250"


def test_a_60s_video_with_10s_windows_gives_six_rows_whose_frames_come_from_inside_each_window(tmp_path):
    from pipeline.frames import SamplingConfig
    from pipeline.sampler import FrameSampler, frames_from_bytes

    video = write_clock_video(str(tmp_path / "long.mp4"), 60)
    assert probe_duration(video) == pytest.approx(60, abs=0.3)
    rows = pa.table({S.VIDEO_ID: ["long"], S.URI: [video], S.START_S: pa.array([None], pa.float64()),
                     S.END_S: pa.array([None], pa.float64()), S.ERROR: pa.array([None], pa.string()),
                     S.ERROR_STAGE: pa.array([None], pa.string()), S.ERROR_REASON: pa.array([None], pa.string()),
                     "label": ["kept"]})
    windows = SplitWindows(10)(rows)
    assert windows.num_rows == 6
    assert windows.column(S.START_S).to_pylist() == [0, 10, 20, 30, 40, 50]
    assert windows.column(S.END_S).to_pylist()[:5] == [10, 20, 30, 40, 50]
    assert windows.column(S.END_S).to_pylist()[5] == pytest.approx(60, abs=0.3)
    assert windows.column(S.SOURCE_VIDEO).to_pylist() == ["long"] * 6
    assert windows.column("label").to_pylist() == ["kept"] * 6
    assert len(set(windows.column(S.VIDEO_ID).to_pylist())) == 6

    sampling = SamplingConfig(num_frames=8, image_size=32)
    sampled = FrameSampler(sampling)(windows)
    assert sampled.column(S.ERROR).null_count == 6
    for start, end, data in zip(*(sampled.column(c).to_pylist() for c in (S.START_S, S.END_S, S.FRAMES))):
        levels = frames_from_bytes(data, 8, 32).reshape(8, -1).mean(axis=1) / FPS  # seconds into the video
        assert start - 0.5 <= levels.min() and levels.max() <= end + 0.5, (start, end, levels)
        assert levels.max() - levels.min() > 5, "the frames spread over the window"


def test_a_video_whose_duration_cannot_be_read_stays_one_row_for_the_sampler_to_report(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    rows = pa.table({S.VIDEO_ID: ["b", "gone"], S.URI: [str(broken), str(tmp_path / "gone.mp4")],
                     S.START_S: pa.array([None, None], pa.float64()), S.END_S: pa.array([None, None], pa.float64()),
                     S.ERROR: pa.array([None, None], pa.string()), S.ERROR_STAGE: pa.array([None, None], pa.string()),
                     S.ERROR_REASON: pa.array([None, None], pa.string())})
    out = SplitWindows(10)(rows)
    assert out.column(S.VIDEO_ID).to_pylist() == ["b", "gone"]
    assert out.column(S.SOURCE_VIDEO).to_pylist() == ["b", "gone"]


def test_the_job_captions_each_window_and_resumes_window_by_window(ray_local, tmp_path):
    from pipeline.runner import run_job

    video = write_clock_video(str(tmp_path / "long.mp4"), 60)
    short = write_clock_video(str(tmp_path / "short.mp4"), 4)
    (tmp_path / "list.txt").write_text(f"{video}\n{short}\n")
    cfg = job_config(str(tmp_path / "list.txt"), str(tmp_path / "out"), source={"window_s": 10},
                     output={"formats": ["parquet"]}, resources={"rows_per_file": 2})
    first = run_job(cfg)
    assert first["complete"] and first["this_run"]["list_rows"] == 2
    assert first["this_run"]["windows_added"] == 5 and first["this_run"]["videos"] == 7
    table = pq.read_table(str(tmp_path / "out" / "parquet"))
    assert table.num_rows == 7 and table.column(S.ERROR).null_count == 7
    by_source = {}
    for row in table.to_pylist():
        by_source.setdefault(row[S.SOURCE_VIDEO], []).append((row[S.START_S], row[S.END_S]))
    assert len(by_source) == 2
    long_windows = sorted(w for w in by_source.values() if len(w) == 6)[0]
    assert [round(a) for a, _ in sorted(long_windows)] == [0, 10, 20, 30, 40, 50]
    assert [w for w in by_source.values() if len(w) == 1][0][0][0] == 0  # the short video: one row

    again = run_job(cfg)
    assert again["this_run"]["videos"] == 0 and again["this_run"]["skipped_already_done"] == 7

    lost = sorted((tmp_path / "out" / "parquet").glob("part-*.parquet"))[0]
    lost_ids = set(pq.read_table(str(lost)).column(S.VIDEO_ID).to_pylist())
    lost.unlink()
    resumed = run_job(cfg)
    assert resumed["complete"] and resumed["this_run"]["videos"] == len(lost_ids)
    table = pq.read_table(str(tmp_path / "out" / "parquet"))
    assert table.num_rows == 7 and len(set(table.column(S.VIDEO_ID).to_pylist())) == 7
    assert set(pq.read_table(str(tmp_path / "out" / "parquet"),
                             filters=[(S.RUN_ID, "=", resumed["run_id"])]).column(S.VIDEO_ID).to_pylist()) == lost_ids


@pytest.mark.skipif(importlib.util.find_spec("scenedetect") is None, reason="PySceneDetect is not installed")
def test_scene_cuts_end_windows(tmp_path):
    video = write_clock_video(str(tmp_path / "cuts.mp4"), 30, cuts=(7, 23))
    rows = _one_row("c", video)
    bounds = list(zip(*(SplitWindows(10, scenes=True)(rows).column(c).to_pylist() for c in (S.START_S, S.END_S))))
    assert [round(a) for a, _ in bounds] == [0, 7, 17, 23]


def _one_row(video_id: str, uri: str) -> pa.Table:
    none = pa.array([None], pa.string())
    return pa.table({S.VIDEO_ID: [video_id], S.URI: [uri], S.START_S: pa.array([None], pa.float64()),
                     S.END_S: pa.array([None], pa.float64()), S.ERROR: none, S.ERROR_STAGE: none,
                     S.ERROR_REASON: none})


def test_windows_of_a_video_in_s3_are_read_from_its_header(s3_endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("windows-bucket")
    fs.put(write_clock_video(str(tmp_path / "long.mp4"), 30), "windows-bucket/long.mp4")
    out = SplitWindows(10)(_one_row("s3long", "s3://windows-bucket/long.mp4"))
    assert out.column(S.START_S).to_pylist() == [0, 10, 20]
    assert out.column(S.URI).to_pylist() == ["s3://windows-bucket/long.mp4"] * 3


def test_window_flags_set_the_source_section_and_a_stride_needs_a_window():
    from jobs.recaption import build_parser, config_from_args

    args = build_parser().parse_args(["--input", "l.txt", "--output", "o", "--window-s", "10",
                                      "--window-stride-s", "5"])
    source = config_from_args(args).source
    assert (source.window_s, source.window_stride_s, source.windows) == (10, 5, True)
    with pytest.raises(ValueError, match="window_stride_s needs window_s"):
        config_from_args(build_parser().parse_args(["--input", "l.txt", "--output", "o", "--window-stride-s", "5"]))
