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
    from pipeline.lease import process_space

    fresh = {"run_id": "run-killed", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time(),
             "space": process_space()}
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


def test_a_paused_holder_cannot_take_its_lease_back(output):
    """A holder that stalls past its time to live is taken over; when it wakes, its heartbeat is refused by the
    store (a conditional write), its writers' check fails, and releasing leaves the new holder's lease alone."""
    from pipeline.lease import LeaseLost

    paused = OutputLease(output, "run-paused", ttl_s=1.0, beat_s=3600)  # its heartbeat thread never beats
    paused.acquire()
    paused.check()  # fresh: writing is allowed
    time.sleep(0.6)
    with pytest.raises(LeaseLost, match="did not refresh the lease"):  # half its ttl: writers stop already
        paused.guard.check()
    time.sleep(0.6)
    taker = OutputLease(output, "run-taker", ttl_s=60)
    taker.acquire()
    with pytest.raises(LeaseLost, match="held by run run-taker"):
        paused.check()
    # Its next heartbeat (what the thread does when the process wakes) is refused and marks the lease lost.
    paused.beat_s = 0.05
    paused._stop.clear()
    paused._beat()
    assert paused.lost
    with pytest.raises(LeaseLost, match="lost the lease .* to run run-taker"):
        paused.check()
    paused.release()
    assert taker.read().run_id == "run-taker"
    taker.check()
    taker.release()
    assert taker.read() is None


def test_jobs_racing_for_a_free_output_get_exactly_one_lease(output):
    """Eight would-be writers at once: the store's conditional create (S3) or the folder lock (local) lets
    exactly one in."""
    from concurrent.futures import ThreadPoolExecutor

    def take(i):
        lease = OutputLease(output, f"run-{i}", ttl_s=60, beat_s=3600)
        try:
            lease.acquire()
            return lease
        except OutputBusy:
            return None

    with ThreadPoolExecutor(8) as pool:
        leases = list(pool.map(take, range(8)))
    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    assert OutputLease(output, "x").read().run_id == winners[0].run_id
    winners[0].release()


def test_a_stale_token_never_overwrites_the_lease_object(output):
    from pipeline.io.lease_object import LeaseConflict, LeaseObject
    from pipeline.io.storage import join

    obj = LeaseObject(join(output, "_lease.json"))
    first = obj.write(b"one", None)
    with pytest.raises(LeaseConflict):
        obj.write(b"again", None)  # create when it exists
    second = obj.write(b"two", first)
    with pytest.raises(LeaseConflict):
        obj.write(b"three", first)  # replace from an old version
    with pytest.raises(LeaseConflict):
        obj.delete(first)
    assert obj.read() == (b"two", second)
    obj.delete(second)
    assert obj.read() == (None, None)


@pytest.mark.slow
def test_a_job_paused_past_its_lease_stops_when_it_wakes_and_the_taker_finishes(tmp_path):
    """The reviewer's repro: SIGSTOP a job's driver past the lease's time to live, run a second job on the same
    output, SIGCONT the first. The first must stop non-zero saying it lost the lease; the output ends with exactly
    one captioned row per video and shards that match."""
    import pyarrow.dataset as pads
    import yaml

    args = slow_job_command(tmp_path, num_videos=4, tokens=150)
    settings = yaml.safe_load((tmp_path / "slow.yaml").read_text())
    settings["output"] = {"lease_ttl_s": 4}
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(settings))
    args += ["--format", "both"]
    out = tmp_path / "out"
    first = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not list((out / "parquet").glob("*.parquet")) if (out / "parquet").exists() else True:
            assert first.poll() is None and time.time() < deadline, "the first job never wrote a file"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGSTOP)  # the driver only: its Ray workers go on
        time.sleep(5)
        second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "taking over the stale lease of run" in second.stderr
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 2, err[-3000:]
        assert "lost the lease" in err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    table = pads.dataset(str(out / "parquet"), format="parquet").to_table()
    ids = table.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)) == 4 and all(table.column("caption").to_pylist())
    import tarfile

    keys = []
    for shard in (out / "webdataset").glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".json")]
    assert sorted(keys) == sorted(ids)
    assert not (out / "_lease.json").exists()


def test_a_writer_tasks_lost_lease_reaches_the_job_as_lost_lease(ray_local):
    """Ray Data hands a task's error back as RayTaskError(UserCodeException): the job still tells a lost lease
    (exit 2, its message) from any other failure (a traceback)."""
    import ray

    from pipeline.lease import lease_lost_in

    def _refuse(batch):  # defined here: shipped to the workers by value
        from pipeline.lease import LeaseLost

        raise LeaseLost("run r did not refresh the lease of /out for 2 s")

    with pytest.raises(Exception) as caught:
        ray.data.range(4).map_batches(_refuse).take_all()
    lost = lease_lost_in(caught.value)
    assert lost is not None and str(lost) == "run r did not refresh the lease of /out for 2 s"
    assert lease_lost_in(ValueError("something else")) is None


@pytest.mark.parametrize("content", [
    b'{"run_id": "x", "host": "%s", "pid": 1, "heartbeat": NaN}',
    b"[" * 100_000,  # nested past the JSON parser's recursion limit
])
def test_a_hostile_lease_record_is_taken_over_not_a_crash(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_bytes(content.replace(b"%s", socket.gethostname().encode()))
    with OutputLease(str(out), "run-new") as lease:
        assert lease.read().run_id == "run-new"


def test_a_fresh_lease_with_a_pid_no_process_can_have_is_busy_not_a_crash(tmp_path):
    from pipeline.lease import process_space

    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "x", "host": socket.gethostname(), "pid": 10**30,
                                              "heartbeat": time.time(), "space": process_space()}))
    with pytest.raises(OutputBusy, match="being written by run x"):
        OutputLease(str(out), "run-new").acquire()


def test_a_lease_record_cannot_claim_a_time_to_live_past_a_day(tmp_path):
    from pipeline.lease import MAX_TTL_S, LeaseRecord

    record = LeaseRecord.parse(json.dumps({"run_id": "x", "host": "h", "pid": 1, "heartbeat": 0.0,
                                           "ttl_s": float("inf")}).encode())
    assert record.ttl_s == MAX_TTL_S and record.age_s() > MAX_TTL_S  # a record from 1970: stale


def test_a_folder_in_place_of_the_lease_is_a_clear_error(tmp_path):
    from pipeline.lease import LeaseUnusable

    (tmp_path / "out" / LEASE_FILE).mkdir(parents=True)
    with pytest.raises(LeaseUnusable, match="cannot be read"):
        OutputLease(str(tmp_path / "out"), "run-a").acquire()


def test_a_live_holder_in_another_pid_namespace_of_this_host_is_not_judged_gone(tmp_path):
    """A container sharing the host's name has pids of its own: that its pid is not ours to see proves nothing."""
    from pipeline.io.storage import write_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = {"run_id": "run-in-a-container", "host": socket.gethostname(), "pid": dead.pid,
             "heartbeat": time.time(), "space": "another-boot/4026530000"}
    write_atomic(str(tmp_path / "out" / LEASE_FILE), json.dumps(other).encode())
    with pytest.raises(OutputBusy, match="run-in-a-container"):
        OutputLease(str(tmp_path / "out"), "run-b").acquire()
