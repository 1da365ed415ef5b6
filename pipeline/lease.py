"""One writer per output: a lease object ``<output>/_lease.json`` with run id, host, pid, heartbeat and time to live.

Two jobs writing one output would undo each other: each run's reconcile removes the other's temporaries and
redoes its work. A job takes the lease before it touches the output and refreshes it while it runs; a second
job finds a live lease and stops with a message naming the holder. A lease whose heartbeat is older than its
time to live, or whose process is gone from this host, is stale and taken over.

Every change to the lease object is a compare-and-swap (:mod:`pipeline.io.lease_object`: conditional PUTs on
S3), so a job that was paused (SIGSTOP, a frozen VM, a long GC) cannot take the lease back from the job that
took it over: its next heartbeat fails, and it stops. Writers check the lease before every write
(:class:`LeaseGuard`): the lease must name their run and its heartbeat must be younger than half its time to
live, so that a write started now has half a time to live to finish before anyone may take the lease over.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.io.lease_object import LeaseConflict, LeaseObject
from pipeline.io.masking import mask_text
from pipeline.io.output_store import OutputStore

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
MAX_TTL_S = 86400.0  # a record's own time to live is believed up to this (a hostile record cannot block for ever)


def new_run_id() -> str:
    """A run's id (the name its lease and summary carry): UTC time to the second and a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def process_space() -> str:
    """Where a pid means this process: the boot and the pid namespace (a container sharing the host's name
    has pids of its own). Empty where it cannot be told (then a holder is never judged gone by its pid)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine's pid namespace exists. Only a process known to be gone is gone:
    one that cannot be asked (no permission to signal it, a pid out of range) counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class OutputBusy(RuntimeError):
    """Another live job holds the output's lease."""


class LeaseUnusable(OutputBusy):
    """The lease object cannot be read or written (a folder in its place, no permission): nothing is run."""


class LeaseLost(OutputBusy):
    """This job no longer holds the output's lease (another job took it over while this one was stalled): it
    must not write another byte."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    host: str
    pid: int
    heartbeat: float  # seconds since the epoch, the holder's clock
    ttl_s: float = DEFAULT_TTL_S
    space: str = ""  # process_space() of the holder

    def age_s(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    @classmethod
    def parse(cls, data: bytes) -> "LeaseRecord | None":
        """The record, or None for anything that is not one (taken over with a warning): not JSON, nested too
        deep, fields missing or of the wrong kind, a heartbeat that is not a finite time."""
        try:
            raw = json.loads(data)
            heartbeat, ttl_s = float(raw["heartbeat"]), float(raw.get("ttl_s", DEFAULT_TTL_S))
            if not math.isfinite(heartbeat):
                return None
            ttl_s = min(max(ttl_s, 1.0), MAX_TTL_S) if math.isfinite(ttl_s) else MAX_TTL_S
            return cls(str(raw["run_id"]), str(raw["host"]), int(raw["pid"]), heartbeat, ttl_s,
                       str(raw.get("space", "")))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
            return None


def _process_gone(record: LeaseRecord) -> bool:
    """True only when the holder ran in this very process space (same boot, same pid namespace: a container
    with this host's name does not count) and its process no longer exists."""
    space = process_space()
    if record.host != socket.gethostname() or not space or record.space != space:
        return False
    return not process_alive(record.pid)


class LeaseGuard:
    """What a writer (the driver, or a writer task on any node) checks before each write: the output's lease
    names ``run_id`` and was refreshed less than half its time to live ago. Small and picklable."""

    def __init__(self, output: str, run_id: str, storage_options: dict | None = None) -> None:
        self.output, self.run_id, self.storage_options = output, run_id, storage_options

    def check(self) -> None:
        """Raises:
            LeaseLost: the lease is gone, names another run, or is too old to write under.
        """
        uri = OutputStore(self.output, self.storage_options).lease_uri()
        data, _ = LeaseObject(uri, self.storage_options).read()
        record = LeaseRecord.parse(data) if data is not None else None
        where = mask_text(self.output)
        if record is None or record.run_id != self.run_id:
            holder = f"run {record.run_id} (host {record.host}, pid {record.pid})" if record else "no job"
            raise LeaseLost(f"run {self.run_id} lost the lease of {where}: it is held by {holder} now (this job "
                            "stalled past the lease's time to live and was taken over); it stops without writing "
                            "more. The other job finishes the output; rerun this command afterwards if needed.")
        if record.age_s() > record.ttl_s / 2:
            raise LeaseLost(f"run {self.run_id} did not refresh the lease of {where} for {record.age_s():.0f} s "
                            f"(time to live {record.ttl_s:g} s): another job may take it over at any moment, so "
                            "this job stops without writing more. Rerun the same command to finish.")


class OutputLease:
    """``with OutputLease(output, run_id):`` holds the output for this run; refreshed every ``beat_s``."""

    def __init__(self, output: str, run_id: str, storage_options: dict | None = None,
                 ttl_s: float = DEFAULT_TTL_S, beat_s: float | None = None) -> None:
        self.output = output
        self.uri = OutputStore(output, storage_options).lease_uri()
        self.run_id = run_id
        self.storage_options = storage_options
        self.ttl_s = ttl_s
        self.beat_s = beat_s if beat_s is not None else ttl_s / 6
        self.object = LeaseObject(self.uri, storage_options)
        self.guard = LeaseGuard(output, run_id, storage_options)
        self._token: str | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()  # the beat thread and release() never write at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseRecord | None:
        return self._read_with_token()[0]

    def _read_with_token(self) -> tuple[LeaseRecord | None, str | None]:
        """The record (None: no lease, or one that is not a record, which is taken over) and its version."""
        data, token = self.object.read()
        record = LeaseRecord.parse(data) if data is not None else None
        if data is not None and record is None:
            logger.warning("unreadable lease %s: taken over", mask_text(self.uri))
        return record, token

    def _record(self) -> bytes:
        return json.dumps(asdict(LeaseRecord(self.run_id, socket.gethostname(), os.getpid(), time.time(),
                                             self.ttl_s, process_space()))).encode()

    def acquire(self) -> None:
        """Raises:
            OutputBusy: a live lease of another run (the message names it and how to proceed), or another job
                took the lease at the same moment.
        """
        try:
            held, token = self._read_with_token()
        except OSError as exc:
            raise LeaseUnusable(f"the output's lease {mask_text(self.uri)} cannot be read ({mask_text(str(exc))}); "
                                "remove or fix it, then rerun") from exc
        if held is not None and held.run_id != self.run_id:
            if held.age_s() < held.ttl_s and not _process_gone(held):
                raise OutputBusy(
                    f"output {mask_text(self.output)} is being written by run {held.run_id} "
                    f"(host {held.host}, pid {held.pid}, heartbeat {held.age_s():.0f} s ago). Wait for it to "
                    f"finish, or remove {mask_text(self.uri)} if that job is gone (a lease older than "
                    f"{held.ttl_s:g} s is taken over by itself).")
            logger.warning("taking over the stale lease of run %s (heartbeat %.0f s ago)", held.run_id,
                           held.age_s())
        try:
            self._token = self.object.write(self._record(), token)
        except OSError as exc:
            raise LeaseUnusable(f"the output's lease {mask_text(self.uri)} cannot be written "
                                f"({mask_text(str(exc))}); check the output's permissions") from exc
        except LeaseConflict as exc:
            if self._reclaim():
                return self._start_beating()
            now = self.read()
            raise OutputBusy(f"run {now.run_id if now else '?'} took the lease of {mask_text(self.output)} at the "
                             "same moment; this job stops") from exc
        self._start_beating()

    def _start_beating(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._thread.start()

    def _reclaim(self) -> bool:
        """After a conflict: True (and the current token adopted) when the lease is this process's own record,
        a write whose reply was lost and that was sent again (the store's or our retries)."""
        try:
            record, token = self._read_with_token()
        except OSError:
            return False
        if record is None or (record.run_id, record.host, record.pid) != (self.run_id, socket.gethostname(),
                                                                          os.getpid()):
            return False
        self._token = token
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._token = self.object.write(self._record(), self._token)
                except LeaseConflict:
                    if self._reclaim():
                        continue
                    now = self.read()
                    self._lost = f"run {now.run_id} (host {now.host}, pid {now.pid})" if now else "no job"
                    logger.error("run %s lost the lease of %s to %s: it stops writing", self.run_id,
                                 mask_text(self.output), self._lost)
                    return
                except OSError as exc:  # a missed beat is retried at the next one; the lease only ages
                    logger.warning("could not refresh the lease %s: %s", mask_text(self.uri), exc)

    def check(self) -> None:
        """Before a write by this process: the lease is still this run's and fresh.

        Raises:
            LeaseLost: it is not (the message says who holds it now).
        """
        if self._lost is not None:
            raise LeaseLost(f"run {self.run_id} lost the lease of {mask_text(self.output)} to {self._lost} (this "
                            "job stalled past the lease's time to live and was taken over); it stops without "
                            "writing more")
        self.guard.check()

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._lost is not None or self._token is None:
                return
            try:
                self.object.delete(self._token)
            except LeaseConflict:
                logger.warning("the lease of %s changed hands before this run released it; left as it is",
                               mask_text(self.output))
            except OSError as exc:
                logger.warning("could not remove the lease %s (it expires by itself): %s", mask_text(self.uri),
                               exc)

    def __enter__(self) -> "OutputLease":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def lease_lost_in(exc: BaseException) -> LeaseLost | None:
    """The LeaseLost behind an error, also when a Ray task raised it (Ray and Ray Data wrap task errors)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, LeaseLost):
            return error
        todo += [e for e in (error.__cause__, error.__context__, getattr(error, "cause", None))
                 if isinstance(e, BaseException)]
    # Ray Data re-raises a task's error as text (RayTaskError(UserCodeException)) without the original object.
    text, marker = str(exc), f"{LeaseLost.__name__}: "
    if marker in text:
        return LeaseLost(text[text.rindex(marker) + len(marker):].strip().splitlines()[0])
    return None
