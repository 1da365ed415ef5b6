"""One writer per output: a lease object ``<output>/_lease.json`` with run id, host, pid and a heartbeat.

Two jobs writing one output would undo each other: each run's reconcile removes the other's temporaries and
redoes its work. A job takes the lease before it touches the output and refreshes it while it runs; a second
job finds a live lease and stops with a message naming the holder. A lease whose heartbeat is older than its
time to live, or whose process is gone from this host, is stale and taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from pipeline.io.masking import mask_text
from pipeline.io.output_store import OutputStore
from pipeline.io.storage import ReadError, read_bytes, remove, write_atomic

logger = logging.getLogger(__name__)



class OutputBusy(RuntimeError):
    """Another live job holds the output's lease."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    host: str
    pid: int
    heartbeat: float  # seconds since the epoch, the holder's clock

    def age_s(self) -> float:
        return max(0.0, time.time() - self.heartbeat)


def _process_gone(record: LeaseRecord) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    if record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class OutputLease:
    """``with OutputLease(output, run_id):`` holds the output for this run; refreshed every ``beat_s``."""

    def __init__(self, output: str, run_id: str, storage_options: dict | None = None, ttl_s: float = 120.0,
                 beat_s: float = 20.0) -> None:
        self.uri = OutputStore(output, storage_options).lease_uri()
        self.run_id = run_id
        self.storage_options = storage_options
        self.ttl_s = ttl_s
        self.beat_s = beat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord(**json.loads(read_bytes(self.uri, self.storage_options)))
        except ReadError as exc:
            if exc.reason == "not_found":
                return None
            raise OSError(f"could not read the output lease: {exc}") from exc
        except (ValueError, TypeError, KeyError):
            logger.warning("unreadable lease %s: taken over", mask_text(self.uri))
            return None

    def _write(self) -> None:
        record = LeaseRecord(self.run_id, socket.gethostname(), os.getpid(), time.time())
        write_atomic(self.uri, json.dumps(asdict(record)).encode(), self.storage_options)

    def acquire(self) -> None:
        """Raises:
            OutputBusy: a live lease of another run (the message names it and how to proceed).
        """
        held = self.read()
        if held is not None and held.run_id != self.run_id:
            if held.age_s() < self.ttl_s and not _process_gone(held):
                raise OutputBusy(
                    f"output {mask_text(self.uri.rsplit('/', 1)[0])} is being written by run {held.run_id} "
                    f"(host {held.host}, pid {held.pid}, heartbeat {held.age_s():.0f} s ago). Wait for it to "
                    f"finish, or remove {mask_text(self.uri)} if that job is gone (a lease older than "
                    f"{self.ttl_s:g} s is taken over by itself).")
            logger.warning("taking over the stale lease of run %s (heartbeat %.0f s ago)", held.run_id,
                           held.age_s())
        self._write()
        mine = self.read()  # two jobs starting at once: the later write wins, the other one stops here
        if mine is None or mine.run_id != self.run_id:
            raise OutputBusy(f"run {mine.run_id if mine else '?'} took the lease of this output at the same time")
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                self._write()
            except OSError as exc:  # a missed beat is retried at the next one; the lease only ages
                logger.warning("could not refresh the lease %s: %s", mask_text(self.uri), exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        held = self.read()
        if held is not None and held.run_id == self.run_id:
            remove(self.uri, self.storage_options)

    def __enter__(self) -> "OutputLease":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
