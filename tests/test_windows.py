"""Clip windows: a long video becomes one row per window, with its bounds, frames from inside it, and resume
per window."""

from __future__ import annotations

import importlib.util
import math
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


# -- bounds: lying headers, timestamp jumps, tiny windows (issue 22) ------------------------------------------

def write_lying_header_mkv(path: str, claimed_s: float = 1e6) -> str:
    """40 frames at 4 fps (10 s) whose Matroska header says ``claimed_s``: the Segment Info Duration element
    (ID 0x4489, an 8-byte float in milliseconds) is overwritten after muxing."""
    import struct

    write_clock_video(path, 10)
    data = bytearray(open(path, "rb").read())
    at = data.find(b"\x44\x89\x88")  # the element ID, then its size byte (8)
    assert at > 0, "no Segment Duration element in the muxed file"
    data[at + 3 : at + 11] = struct.pack(">d", claimed_s * 1000)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_timestamp_jump_mkv(path: str, jump_s: float = 1e6) -> str:
    """39 frames at 4 fps, then one more at ``jump_s``: the stream itself spans ``jump_s`` seconds."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = (i if i < 39 else int(jump_s * FPS)), Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_header_claiming_a_huge_duration_is_checked_against_the_stream(tmp_path):
    import av

    video = write_lying_header_mkv(str(tmp_path / "lying.mkv"))
    with av.open(video) as container:
        assert container.duration / 1e6 == pytest.approx(1e6)  # the header really lies
    assert probe_duration(video) == pytest.approx(10, abs=0.3)
    out = SplitWindows(5)(_one_row("lying", video))
    assert out.column(S.START_S).to_pylist() == [0, 5] and out.column(S.ERROR).null_count == 2


def test_a_video_that_would_make_too_many_windows_becomes_one_error_row(tmp_path):
    video = write_timestamp_jump_mkv(str(tmp_path / "jump.mkv"))
    assert probe_duration(video) == pytest.approx(1e6, rel=1e-3)  # not a lie: a frame sits at 1e6 s
    out = SplitWindows(10)(_one_row("jump", video)).to_pylist()
    assert len(out) == 1
    row = out[0]
    assert (row[S.VIDEO_ID], row[S.ERROR_STAGE], row[S.ERROR_REASON]) == ("jump", "source", "too_many_windows")
    assert "100001 windows" in row[S.ERROR] and "cap of 10000" in row[S.ERROR]


def test_window_counts_are_checked_before_any_window_is_made():
    from pipeline.windows import WindowError

    with pytest.raises(WindowError, match=r"too_many_windows: .* would make 5 windows, more than the cap of 4"):
        window_bounds(0, 50, 10, max_windows=4)
    assert len(window_bounds(0, 40, 10, max_windows=4)) == 4
    with pytest.raises(WindowError, match=r"would make 3999999 windows"):
        window_bounds(0, 1e6, 0.5, stride_s=0.25)  # counted, not listed: this returns at once
    for bad in ((math.nan, 10), (0, math.inf), (20, 10)):
        with pytest.raises(WindowError, match="bad_clip"):
            window_bounds(*bad, 10)
    with pytest.raises(ValueError, match="stride_s <= window_s"):
        window_bounds(0, 60, 5, stride_s=10)


def test_list_rows_with_nan_or_negative_bounds_do_not_hang_the_split(tmp_path):
    video = write_clock_video(str(tmp_path / "clock.mp4"), 20)
    row = _one_row("n", video).to_pylist()[0]
    rows = pa.Table.from_pylist([{**row, S.START_S: math.nan}, {**row, S.VIDEO_ID: "neg", S.START_S: -1e300}],
                                schema=_one_row("n", video).schema)
    out = SplitWindows(10)(rows).to_pylist()
    assert (out[0][S.ERROR_STAGE], out[0][S.ERROR_REASON]) == ("source", "bad_clip")
    assert [(r[S.START_S], r[S.ERROR]) for r in out[1:]] == [(0, None), (10, None)]  # a negative start is 0


@pytest.mark.parametrize("flags, message", [
    (["--window-s", "1e-300"], r"source.window_s: Input should be greater than or equal to 0.5"),
    (["--window-s", "10", "--window-stride-s", "1e-300"], r"source.window_stride_s: Input should be greater"),
    (["--window-s", "inf"], r"source.window_s: Input should be a finite number"),
    (["--window-s", "10", "--window-stride-s", "15"],
     r"source: window_stride_s \(15\) must not exceed window_s \(10\): the seconds between windows would never"),
])
def test_tiny_windows_and_strides_past_the_window_are_refused_before_the_job_starts(flags, message):
    from jobs.recaption import build_parser, config_from_args

    with pytest.raises(ValueError, match=message):
        config_from_args(build_parser().parse_args(["--input", "l.txt", "--output", "o", *flags]))


@pytest.mark.slow
def test_the_job_finishes_on_a_lying_header_and_a_timestamp_jump(ray_local, tmp_path):
    from pipeline.runner import run_job

    lying = write_lying_header_mkv(str(tmp_path / "lying.mkv"))
    jump = write_timestamp_jump_mkv(str(tmp_path / "jump.mkv"))
    (tmp_path / "list.txt").write_text(f"{lying}\n{jump}\n")
    cfg = job_config(str(tmp_path / "list.txt"), str(tmp_path / "out"), source={"window_s": 5},
                     output={"formats": ["parquet"]})
    summary = run_job(cfg)
    assert summary["complete"] and summary["this_run"]["videos"] == 3
    rows = pq.read_table(str(tmp_path / "out" / "parquet")).to_pylist()
    assert sorted((r[S.URI].rsplit("/", 1)[-1], r[S.START_S], r[S.ERROR_REASON]) for r in rows) == [
        ("jump.mkv", None, "too_many_windows"), ("lying.mkv", 0, None), ("lying.mkv", 5, None)]
