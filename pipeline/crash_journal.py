"""Videos that kill their decoder process end as error rows after a bounded number of crashes.

A native decoder can abort the whole process on a hostile file (decord throws ``std::bad_alloc`` on some
headers). Ray restarts the actor and resends the batch, which kills it again: without a record, forever.
Each decode actor notes the video it is working on in a node-local file named by its pid; a new actor finds
the notes of processes that died, counts a crash for each of those videos, and a video with
``max_crashes`` crashes is not decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os

from pipeline.lease import process_alive

logger = logging.getLogger(__name__)


class CrashJournal:
    """Node-local notes under ``folder`` (shared by the decode actors of one run on one machine)."""

    def __init__(self, folder: str, max_crashes: int = 2) -> None:
        self.folder = folder
        self.max_crashes = max_crashes
        os.makedirs(folder, exist_ok=True)
        self.note = os.path.join(folder, f"{os.getpid()}.inflight")
        self._collect_dead()

    def _collect_dead(self) -> None:
        """Turn the in-flight notes of dead processes into crash marks."""
        for name in os.listdir(self.folder):
            if not name.endswith(".inflight") or not name[: -len(".inflight")].isdigit():
                continue
            pid = int(name[: -len(".inflight")])
            if pid == os.getpid() or process_alive(pid):
                continue
            path = os.path.join(self.folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    video_id = f.read()
                os.remove(path)
            except FileNotFoundError:  # another new actor collected it first
                continue
            if video_id:
                open(os.path.join(self.folder, f"crash-{_key(video_id)}-{pid}"), "w").close()
                logger.warning("a decoder process (pid %d) died while reading video %s", pid, video_id)

    def crashes(self, video_id: str) -> int:
        prefix = f"crash-{_key(video_id)}-"
        return sum(name.startswith(prefix) for name in os.listdir(self.folder))

    def timed_out(self, video_id: str) -> bool:
        return os.path.exists(os.path.join(self.folder, f"timeout-{_key(video_id)}"))

    def mark_timeout(self, video_id: str) -> None:
        """Called by a process about to end itself because decoding ``video_id`` ran past its time limit."""
        open(os.path.join(self.folder, f"timeout-{_key(video_id)}"), "w").close()
        self.finish()  # the end is deliberate: not a crash to charge as well

    def skip_reason(self, video_id: str) -> str | None:
        """``timeout`` or ``crashed`` when the video must not be decoded again, else None."""
        if self.timed_out(video_id):
            return "timeout"
        return "crashed" if self.crashes(video_id) >= self.max_crashes else None

    def should_skip(self, video_id: str) -> bool:
        return self.skip_reason(video_id) is not None

    def start(self, video_id: str) -> None:
        with open(self.note, "w", encoding="utf-8") as f:
            f.write(video_id)

    def finish(self) -> None:
        with open(self.note, "w", encoding="utf-8"):
            pass


def _key(video_id: str) -> str:
    return hashlib.sha1(video_id.encode()).hexdigest()[:16]
