"""What a run has written so far, folded from the writers' manifests as they arrive: the driver's live log line
(videos written, ok and failed, videos/s and an ETA) and the run summary's sums. Nothing here grows with the rows:
a manifest is added and dropped (only the names of the files written are kept, for the repair at the end)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


_SUMS = ("decoded", "captioned", "decode_s", "caption_s", "decode_cpu_s", "read_retries", "write_retries", "tokens",
         "truncated")


@dataclass
class Progress:
    """Sums of the writers' manifests (:class:`pipeline.sinks.ShardWriter`); the list's rows read so far come from
    the run's tally."""

    started: float = field(default_factory=time.perf_counter)
    written: int = 0
    ok: int = 0
    repeats: int = 0
    failed: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)
    sums: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, manifests: list[dict]) -> "Progress":
        folded = cls()
        for manifest in manifests:
            folded.add(manifest)
        return folded

    def add(self, manifest: dict) -> None:
        self.written += manifest["rows"]
        self.ok += manifest["ok"]
        self.repeats += manifest.get("duplicates", 0)
        self.failed.update(manifest.get("failed", {}))
        self.flagged.update(manifest.get("flagged", {}))
        self.sums.update({name: manifest.get(name, 0) for name in _SUMS})
        if manifest.get("file"):
            self.files.append(manifest["file"])

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
