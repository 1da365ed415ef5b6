"""One writer per output: a second job on an output that a live job holds stops with a clear message; a stale
lease (old heartbeat, or a holder process that is gone) is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import ROOT, slow_job_command
from pipeline.lease import OutputBusy, OutputLease
from pipeline.io.output_store import LEASE_FILE



@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_endpoint")
    import s3fs

    s3fs.S3FileSystem().makedirs("lease-tests", exist_ok=True)
    return f"s3://lease-tests/{tmp_path.name}"


def test_a_live_lease_turns_a_second_writer_away(output):
    with OutputLease(output, "run-a"):
        with pytest.raises(OutputBusy, match="is being written by run run-a .host .*, pid .*heartbeat"):
            OutputLease(output, "run-b").acquire()
    with OutputLease(output, "run-b") as lease:  # released: free again
        assert lease.read().run_id == "run-b"
    assert OutputLease(output, "x").read() is None  # removed at release


def test_a_lease_whose_heartbeat_stopped_is_taken_over(output):
    from pipeline.io.storage import join, write_atomic

    old = {"run_id": "run-old", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}
    write_atomic(join(output, LEASE_FILE), json.dumps(old).encode())
    with OutputLease(output, "run-new", ttl_s=120) as lease:
        assert lease.read().run_id == "run-new"


def test_a_lease_of_a_process_gone_from_this_host_is_taken_over(tmp_path):
    from pipeline.io.storage import write_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fresh = {"run_id": "run-killed", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}
    write_atomic(str(tmp_path / "out" / LEASE_FILE), json.dumps(fresh).encode())
    with OutputLease(str(tmp_path / "out"), "run-rerun") as lease:
        assert lease.read().run_id == "run-rerun"


@pytest.mark.slow
def test_a_second_job_on_a_busy_output_stops_saying_who_holds_it(tmp_path):
    args = slow_job_command(tmp_path, num_videos=6, tokens=400)
    out = str(tmp_path / "out")
    first = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, LEASE_FILE)):
            assert first.poll() is None and time.time() < deadline, "the first job never took the lease"
            time.sleep(0.2)
        second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "is being written by run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
