"""Actors that die are restarted and the job finishes with one row per input; a video that kills its decoder
process every time ends as an error row after a bounded number of crashes instead of looping forever."""

import os
import signal
import struct
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import psutil
import pytest

from helpers import ROOT, job_config, slow_job_command
from pipeline import schema as S
from pipeline.crash_journal import CrashJournal
from pipeline.runner import run_job
from pipeline.generated_videos import write_video



def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_journal_charges_a_crash_to_the_video_a_dead_process_was_reading(tmp_path):
    folder = str(tmp_path / "journal")
    for _ in range(2):
        os.makedirs(folder, exist_ok=True)
        (tmp_path / "journal" / f"{dead_pid()}.inflight").write_text("poison")
        journal = CrashJournal(folder, max_crashes=2)  # a new incarnation collects the dead one's note
    assert journal.crashes("poison") == 2 and journal.should_skip("poison")
    assert journal.crashes("other") == 0 and not journal.should_skip("other")
    journal.start("other")
    journal.finish()
    assert CrashJournal(folder).crashes("other") == 0  # finished videos are never charged


def liar_mkv(path):
    """A 12-frame mkv whose header claims 1e12 ms: decord aborts the whole process (std::bad_alloc) on it."""
    write_video(path, 96, 64, 12, 12, seed=4)
    data = open(path, "rb").read()
    at = data.index(b"\x44\x89\x88")
    open(path, "wb").write(data[: at + 3] + struct.pack(">d", 1e12) + data[at + 11:])
    return path


def read_rows(out):
    folder = os.path.join(out, "parquet")
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def test_a_video_that_always_kills_its_decoder_becomes_an_error_row(ray_local, tmp_path):
    good = write_video(str(tmp_path / "good.mp4"), 160, 120, 12, 12, seed=1)
    poison = liar_mkv(str(tmp_path / "poison.mkv"))
    (tmp_path / "list.txt").write_text(f"{good}\n{poison}\n")
    # decord, trusting every header, so the poison file reaches it (the default max_frames sends it to PyAV,
    # and the default decoder counts real frames).
    summary = run_job(job_config(str(tmp_path / "list.txt"), str(tmp_path / "out"),
                                 sampling={"max_frames": 10**12, "decoder": "decord"}, resources={"batch_size": 1}))
    rows = {os.path.basename(r[S.URI]): r for r in read_rows(str(tmp_path / "out"))}
    assert rows["good.mp4"][S.ERROR] is None
    assert (rows["poison.mkv"][S.ERROR_STAGE], rows["poison.mkv"][S.ERROR_REASON]) == ("decode", "crashed")
    assert summary["complete"] and summary["this_run"]["videos"] == 2


@pytest.mark.slow
def test_a_killed_caption_actor_is_restarted_and_the_job_finishes(tmp_path):
    out = str(tmp_path / "out")
    job = subprocess.Popen(slow_job_command(tmp_path, num_videos=6, tokens=300),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (os.path.isdir(os.path.join(out, "parquet")) and os.listdir(os.path.join(out, "parquet"))):
            assert job.poll() is None and time.time() < deadline, "no output before the kill"
            time.sleep(0.2)
        # Only this job's caption actors (its Ray's processes descend from it), never another cluster's.
        killed = 0
        for process in psutil.Process(job.pid).children(recursive=True):
            try:
                if "MapBatches(Captioner)" in " ".join(process.cmdline()):
                    process.kill()
                    killed += 1
            except psutil.Error:  # a process that ended meanwhile
                pass
        assert killed, "no caption actor process of this job found to kill"
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-3000:]
    rows = read_rows(out)
    assert len(rows) == 6 and len({r[S.VIDEO_ID] for r in rows}) == 6 and all(r[S.ERROR] is None for r in rows)


def test_a_decode_past_its_time_limit_ends_as_a_timeout_row_and_the_job_goes_on(ray_local, tmp_path):
    """The limit is set below any real decode time, so the decode process ends itself mid-decode; Ray restarts
    it and the video is not tried again."""
    video = write_video(str(tmp_path / "slow.mp4"), 320, 240, 48, 24, seed=2)
    (tmp_path / "list.txt").write_text(f"{video}\n")
    summary = run_job(job_config(str(tmp_path / "list.txt"), str(tmp_path / "out"),
                                 resources={"batch_size": 1, "decode_timeout_s": 0.001}))
    (row,) = read_rows(str(tmp_path / "out"))
    assert (row[S.ERROR_STAGE], row[S.ERROR_REASON]) == ("decode", "timeout") and "0.001 s" in row[S.ERROR]
    assert summary["complete"]


def test_the_journal_records_a_timeout_apart_from_crashes(tmp_path):
    journal = CrashJournal(str(tmp_path / "journal"))
    journal.start("slow")
    journal.mark_timeout("slow")
    again = CrashJournal(str(tmp_path / "journal"))
    assert again.skip_reason("slow") == "timeout" and again.crashes("slow") == 0
    assert again.skip_reason("other") is None
