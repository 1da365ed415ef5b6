"""A run that read nothing, or lost rows between reading and writing, is an error, not a success."""

import subprocess
import sys

import pytest

from helpers import ROOT, job_config
from pipeline.runner import RunIncomplete, incompleteness, run_job



def test_a_list_that_yields_no_rows_is_an_error_unless_allowed(ray_local, tmp_path):
    listing = tmp_path / "empty.txt"
    listing.write_text("# nothing here yet\n\n")
    with pytest.raises(RunIncomplete, match=f"the video list {listing} yielded no rows"):
        run_job(job_config(str(listing), str(tmp_path / "out")))
    summary = run_job(job_config(str(listing), str(tmp_path / "out"), source={"allow_empty": True}))
    assert summary["this_run"]["list_rows"] == 0 and summary["complete"] is True


@pytest.mark.slow
def test_the_command_exits_non_zero_naming_the_empty_list(tmp_path):
    listing = tmp_path / "empty.txt"
    listing.write_text("\n")
    result = subprocess.run([sys.executable, "jobs/recaption.py", "--input", str(listing), "--output",
                             str(tmp_path / "out"), "--model", "tiny"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and f"{listing} yielded no rows" in result.stderr, result.stderr[-2000:]


def test_rows_read_but_not_accounted_for_make_the_run_incomplete():
    summary = {"complete": False, "config": {"source": {"input": "s3://b/list.txt"}},
               "this_run": {"list_rows": 10, "videos": 7, "skipped_already_done": 1, "duplicates_skipped": 1}}
    assert "read 10 rows from s3://b/list.txt but accounted for 9" in incompleteness(summary, allow_empty=False)
    assert incompleteness({**summary, "complete": True}, allow_empty=False) is None


def test_every_row_read_is_accounted_for(ray_local, tmp_path):
    from pipeline.generated_videos import write_video

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + videos[:1] + [str(tmp_path / "missing.mp4")]) + "\n")
    first = run_job(job_config(str(listing), str(tmp_path / "out")))
    assert first["complete"] and (first["this_run"]["list_rows"], first["this_run"]["videos"]) == (5, 4)
    again = run_job(job_config(str(listing), str(tmp_path / "out")))
    run = again["this_run"]
    assert again["complete"] and (run["list_rows"], run["videos"], run["skipped_already_done"]) == (5, 0, 5)


def test_the_driver_logs_live_progress_with_a_rate_and_an_eta(ray_local, tmp_path, caplog):
    from pipeline.generated_videos import write_video
    from pipeline.progress import Progress

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 96, 64, 8, 8, seed=i) for i in range(4)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + [str(tmp_path / "missing.mp4")]) + "\n")
    with caplog.at_level("INFO", logger="pipeline.runner"):
        run_job(job_config(str(listing), str(tmp_path / "out"), resources={"rows_per_file": 2}))
    lines = [r.getMessage() for r in caplog.records if "progress:" in r.getMessage()]
    assert len(lines) >= 2  # one per file written (rows_per_file 2, five videos)
    assert all("videos/s" in line for line in lines)
    assert lines[-1].split("progress: ")[1].startswith("5/5 videos (4 ok, 1 failed)") and "done" in lines[-1]

    live = Progress(started=0.0)  # the line itself: 10 of 40 to do, at a known rate
    live.add({"rows": 10, "ok": 9, "duplicates": 0})
    assert "10/40 videos (9 ok, 1 failed)" in live.line(read=50, already_done=10) and "ETA" in live.line(50, 10)
