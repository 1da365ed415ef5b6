"""The light stages before decoding: skip videos already done, mark repeated list rows, count what was read.

No torch and no model code here: these run as small Ray tasks and one actor beside the pools.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import schema as S


@ray.remote(num_cpus=0)
class RowTally:
    """Counts of list rows seen by the pipeline's first step, kept apart from what the writer reports, so the
    end of a run can check that every row read was written, skipped as done or dropped as a repeat."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, **counts: int) -> None:
        self.counts.update(counts)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


class SkipDone:
    """Drop rows whose ``video_id`` is already finished in the output (a vectorised anti-join); with a
    ``tally``, count the rows read and the rows skipped."""

    def __init__(self, done_ids: pa.Array, tally=None) -> None:
        self.done_ids = done_ids
        self.tally = tally

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = batch
        if len(self.done_ids):
            todo = batch.filter(pc.invert(pc.is_in(batch.column(S.VIDEO_ID), value_set=self.done_ids)))
        if self.tally is not None:  # waited for, so the count is in before this block moves on
            ray.get(self.tally.add.remote(read=batch.num_rows, done=batch.num_rows - todo.num_rows))
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
