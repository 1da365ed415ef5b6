"""A long list runs in segments (``resources.segment_rows``), each its own Ray Data execution: every row still
ends as exactly one output row, a repeated id is captioned once even when its rows are far apart in the list,
and a limit or clip windows cut into segments the same way."""

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import job_config
from pipeline import schema as S
from pipeline.generated_videos import write_video
from pipeline.runner import run_job
from pipeline.segments import MAX_SEGMENTS, InSegment, segment_count


def test_every_row_falls_in_exactly_one_segment_and_an_ids_rows_in_the_same_one():
    ids = [f"video-{i % 37}" for i in range(500)]  # each id 13 or 14 times, far apart
    batch = pa.table({S.VIDEO_ID: ids, "n": list(range(500))})
    parts = [InSegment(index=k, count=7)(batch) for k in range(7)]
    assert sorted(n for part in parts for n in part.column("n").to_pylist()) == list(range(500))
    segment_of = {}
    for k, part in enumerate(parts):
        for video_id in part.column(S.VIDEO_ID).to_pylist():
            assert segment_of.setdefault(video_id, k) == k
    assert len(set(segment_of.values())) > 1  # the rows really are spread over segments
    assert InSegment(index=0, count=1)(batch).num_rows == 500
    assert InSegment(index=3, count=7)(batch.slice(0, 0)).num_rows == 0


def test_segment_counts_and_bad_indexes():
    assert [segment_count(rows, 10) for rows in (0, 1, 10, 11, 100, 101)] == [1, 1, 1, 2, 10, 11]
    # each segment reads the whole list again and starts the pools again: their number is capped
    assert segment_count(10**8, 1) == segment_count(10**12, 1000) == MAX_SEGMENTS
    with pytest.raises(ValueError, match="does not exist"):
        InSegment(index=3, count=3)


def read_rows(out):
    folder = out / "parquet"
    return pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob("*.parquet"))]).to_pylist()


@pytest.mark.slow
def test_a_list_in_segments_captions_each_video_once_and_skips_repeats_across_segments(ray_local, tmp_path, caplog):
    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(5)]
    missing = [str(tmp_path / f"gone{i}.mp4") for i in range(6)]
    # v0 first and last: its repeat is 11 rows later, in what would be another segment if cut by position
    rows = [videos[0], *missing[:3], *videos[1:], *missing[3:], videos[0]]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        summary = run_job(job_config(str(listing), str(out), resources={"segment_rows": 3}))
    assert "12 list rows to do, in 4 segments" in caplog.text
    assert summary["complete"] is True
    assert summary["this_run"]["videos"] == 11 and summary["this_run"]["duplicates_skipped"] == 1
    written = read_rows(out)
    assert sorted(r[S.URI] for r in written) == sorted(videos + missing)
    assert sum(r[S.ERROR] is None for r in written) == 5
    again = run_job(job_config(str(listing), str(out), resources={"segment_rows": 3}))
    assert again["this_run"]["videos"] == 0 and again["output_total"]["videos"] == 11


@pytest.mark.slow
def test_a_limit_and_clip_windows_are_cut_into_segments_too(ray_local, tmp_path, caplog):
    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 24, 12, seed=i) for i in range(6)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos) + "\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        summary = run_job(job_config(str(listing), str(out), resources={"segment_rows": 2},
                                     source={"limit": 4, "window_s": 1.0}))
    assert "4 list rows to do, in 2 segments" in caplog.text
    assert summary["complete"] is True
    written = read_rows(out)
    # 4 videos of 2 s, each two 1 s windows: 8 rows, one per window, none twice
    assert len(written) == 8 and len({r[S.VIDEO_ID] for r in written}) == 8
    assert {r[S.URI] for r in written} == set(videos[:4])
