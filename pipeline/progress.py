"""Live progress of a run, for the driver's log: videos written, ok and failed, videos/s and an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Progress:
    """Counts from the writers' manifests; the list's rows read so far come from the run's tally."""

    started: float = field(default_factory=time.perf_counter)
    written: int = 0
    ok: int = 0
    repeats: int = 0

    def add(self, manifest: dict) -> None:
        self.written += manifest["rows"]
        self.ok += manifest["ok"]
        self.repeats += manifest.get("duplicates", 0)

    def line(self, read: int, already_done: int) -> str:
        """``read``: list rows read so far (the total once the list is read); ``already_done``: of those,
        rows skipped as done in earlier runs."""
        elapsed = max(1e-9, time.perf_counter() - self.started)
        rate = self.written / elapsed
        todo = max(self.written, read - already_done - self.repeats)
        left = todo - self.written
        eta = f"ETA {_duration(left / rate)}" if rate > 0 and left else ("done" if not left else "ETA unknown")
        return (f"progress: {self.written}/{todo} videos ({self.ok} ok, {self.written - self.ok} failed), "
                f"{rate:.2f} videos/s, {eta} (of {read} list rows read so far, {already_done} done before)")
