"""The light stages before decoding: skip videos already done, mark repeated list rows, count what was read.

No torch and no model code here: these run as small Ray tasks and one actor beside the pools.
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar

import pyarrow as pa
import ray

from pipeline import schema as S
from pipeline.done_set import DoneSet


# The piece of the list a reading task is preparing (a hash of its file and byte range or row groups), set
# by the reading task around each piece: its counts replace those of an earlier reading of the same piece.
LIST_PIECE: ContextVar[int | None] = ContextVar("list_piece", default=None)


@ray.remote(num_cpus=0)
class RowTally:
    """Counts of list rows seen by the pipeline's first step, kept apart from what the writer reports, so the
    end of a run can check that every row read was written, skipped as done or dropped as a repeat.

    Counts sent for a list ``piece`` replace that piece's earlier counts: Ray reads a piece again when a block of
    it is lost with its node (lineage reconstruction), and counting it twice would call a whole run incomplete.
    """

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.pieces: dict[int, Counter] = {}

    def add(self, piece: int | None = None, **counts: int) -> None:
        if piece is None:
            self.counts.update(counts)
        else:
            self.pieces[piece] = Counter(counts)

    def totals(self) -> dict[str, int]:
        totals = Counter(self.counts)
        for counts in self.pieces.values():
            totals.update(counts)
        return dict(totals)


class SkipDone:
    """Drop rows whose ``video_id`` is already finished in the output (a lookup of each row's id in the
    :class:`~pipeline.done_set.DoneSet`); with a ``tally``, count the rows read (unless ``counts_reads`` is off: a
    second pass after clip windows) and the rows skipped.

    The set's parts stay in the object store: each task holds their references, and each worker process maps
    them once (not a copy of a million ids pickled into every task).
    """

    def __init__(self, done: DoneSet | pa.Array, tally=None, counts_reads: bool = True) -> None:
        self.done = done if isinstance(done, DoneSet) else DoneSet.of(done)
        self.tally = tally
        self.counts_reads = counts_reads

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = batch
        if len(self.done) and batch.num_rows:
            todo = batch.filter(pa.array(~self.done.contains(batch.column(S.VIDEO_ID))))
        if self.tally is not None:  # waited for, so the count is in before this block moves on
            counts = {"done": batch.num_rows - todo.num_rows}
            if self.counts_reads:
                counts["read"] = batch.num_rows
            ray.get(self.tally.add.remote(piece=LIST_PIECE.get(), **counts))
        return todo


class MarkRepeats:
    """Marks a row whose ``video_id`` an earlier row of this run already had (a list naming a video twice) as
    a ``source/duplicate`` error, so the video is decoded and captioned once; the writer counts the marked
    rows and drops them. Stateful: one actor sees every row and remembers the ids it passed."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, batch: pa.Table) -> pa.Table:
        repeated = []
        for video_id in batch.column(S.VIDEO_ID).to_pylist():
            repeated.append(video_id in self.seen)
            self.seen.add(video_id)
        if not any(repeated):
            return batch
        errors = batch.column(S.ERROR).to_pylist()
        stages = batch.column(S.ERROR_STAGE).to_pylist()
        reasons = batch.column(S.ERROR_REASON).to_pylist()
        for i in (i for i, r in enumerate(repeated) if r):
            errors[i] = "source: an earlier row of the list has the same video_id"
            stages[i], reasons[i] = S.STAGE_SOURCE, S.REASON_DUPLICATE
        return S.with_columns(batch, S.error_columns(errors, stages, reasons))
