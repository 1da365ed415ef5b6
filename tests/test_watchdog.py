"""No silent waits: when no output arrives for a while the driver says what the cluster waits on, and with a
limit set it stops the job with that diagnosis."""

import contextlib
import http.server
import logging
import subprocess
import sys
import threading
import time

import pytest

from pipeline.watchdog import Stalled, watched

from helpers import ROOT


def slow_items(delays):
    for i, delay in enumerate(delays):
        time.sleep(delay)
        yield i


def test_items_pass_through_and_a_pause_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.watchdog"):
        assert list(watched(slow_items([0, 1.6, 0]), 0.5, None, lambda: "diagnosis here")) == [0, 1, 2]
    assert any("no output for" in r.message and "diagnosis here" in r.message for r in caplog.records)


def test_a_stall_past_the_limit_raises_with_the_diagnosis():
    started = time.monotonic()
    with pytest.raises(Stalled, match="no output for .* s .limit 1 s.: waiting on X"):
        list(watched(slow_items([0, 30]), 0.3, 1.0, lambda: "waiting on X"))
    assert time.monotonic() - started < 20  # raised at the limit, not after the 30 s item


def test_errors_of_the_stream_reach_the_caller():
    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(watched(broken(), 1.0, None, lambda: ""))


def test_a_consumer_that_stops_stops_the_stream_behind_it():
    produced, closed = [], threading.Event()

    def segments():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()  # a job's segments: no next segment starts once the job gave up

    stream = watched(segments(), 5.0, None, lambda: "")
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert closed.wait(10)
    assert len(produced) < 1000


def test_a_consumer_whose_loop_raises_closes_the_stream_as_the_runner_does():
    started, closed = [], threading.Event()

    def segments():
        try:
            for segment in range(100):
                started.append(segment)
                yield from ((segment, i) for i in range(5))
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="lost the lease"):
        with contextlib.closing(watched(segments(), 60, None, lambda: "")) as rows:
            for _ in rows:
                raise RuntimeError("lost the lease")  # as the runner's loop body may
    assert closed.wait(10)
    assert len(started) <= 14  # at most what the pump's queue holds, then it stops: not all 100 segments


def test_a_stall_closes_the_stalled_stream_when_it_moves_again():
    closed = threading.Event()

    def stalled_then_more():
        try:
            yield 0
            time.sleep(1.5)
            while True:
                yield 1
        finally:
            closed.set()

    with pytest.raises(Stalled):
        list(watched(stalled_then_more(), 0.2, 0.5, lambda: "stuck"))
    assert closed.wait(10)


class Hang(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(120)

    do_HEAD = do_GET


@pytest.mark.slow
def test_a_job_stuck_on_a_hanging_read_stops_with_a_diagnosis(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        listing = tmp_path / "list.txt"
        listing.write_text(f"http://127.0.0.1:{server.server_address[1]}/video.mp4\n")
        # Long enough for every actor to start on a busy 2-core machine: then only the read is left hanging.
        (tmp_path / "job.yaml").write_text("resources: {ray_num_cpus: 2, stall_warn_s: 10, stall_fail_s: 60}\n")
        result = subprocess.run([sys.executable, "jobs/recaption.py", "--input", str(listing), "--output",
                                 str(tmp_path / "out"), "--model", "tiny", "--config", str(tmp_path / "job.yaml")],
                                cwd=ROOT, capture_output=True, text=True, timeout=240)
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "no output for" in error[0] and "limit 60 s" in error[0], result.stderr[-3000:]
    assert "CPU free" in error[0] and "every actor has started, so a stage is busy" in error[0]
    assert "WARNING pipeline.watchdog: no output for" in result.stderr
