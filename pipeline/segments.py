"""A long list run in segments, each its own Ray Data execution.

Ray Data keeps bookkeeping in the driver for every block an execution makes (block metadata and per-block
stats, about 190 MiB per million rows at 8 rows a batch, measured), and frees it only when the execution ends.
Cutting the rows left to do into segments of ``resources.segment_rows`` bounds the driver's memory by a segment,
not by the list. Rows go to segments by a hash of their ``video_id``, so every row naming one video (a list that
repeats it, every clip window of it) lands in the same segment, where the repeat marker sees them all.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import ray

from pipeline import schema as S
from pipeline.done_set import hash_ids
from pipeline.resources import LIGHT_NUM_CPUS
from pipeline.stages import Stage, apply_stages

logger = logging.getLogger(__name__)


class InSegment:
    """Keeps the rows of segment ``index`` of ``count``: those whose id hashes to ``index`` modulo ``count``."""

    def __init__(self, index: int, count: int) -> None:
        if not 0 <= index < count:
            raise ValueError(f"segment {index} of {count} does not exist")
        self.index, self.count = index, count

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not batch.num_rows:
            return batch
        keep = hash_ids(batch.column(S.VIDEO_ID)) % np.uint64(self.count) == np.uint64(self.index)
        return batch.filter(pa.array(keep))


# Each segment reads every block of the list again and starts the pools again: a segment_rows far below the
# list's length would pay that without end, so the count is capped (the segments grow instead).
MAX_SEGMENTS = 1000


def segment_count(rows: int, segment_rows: int) -> int:
    """Segments for ``rows`` rows to do: at least one, each of about ``segment_rows`` rows, at most
    :data:`MAX_SEGMENTS`."""
    return min(MAX_SEGMENTS, max(1, -(-rows // segment_rows)))


@dataclass(frozen=True)
class SegmentStarted:
    """Yielded by :func:`run_in_segments` as a segment starts (not an output row): a consumer watching for stalls
    counts the pools' new start from here, not from the previous segment's last file."""

    index: int
    count: int


def run_in_segments(todo: ray.data.Dataset, stages: list[Stage], segments: int,
                    before_each: Callable[[], None]) -> Iterator[dict | SegmentStarted]:
    """The output rows of ``stages`` over ``todo``, one execution per segment, one after the other, each
    preceded by a :class:`SegmentStarted`. ``before_each()`` runs before each segment starts (the runner checks
    its lease there: a job that lost its output starts no more work)."""
    for index in range(segments):
        if index:
            # The finished execution's executor, operators and per-block stats refer to each other: only the
            # cycle collector frees them, and its full pass may not come for several segments (measured:
            # about 8,000 per-block records and 60,000 objects kept per segment of 50,000 rows).
            gc.collect()
        before_each()
        part = todo
        if segments > 1:
            logger.info("segment %d of %d starts", index + 1, segments)
            part = Stage("segment", InSegment, dict(index=index, count=segments),
                         dict(num_cpus=LIGHT_NUM_CPUS)).apply(todo)
        yield SegmentStarted(index, segments)
        yield from apply_stages(part, stages).iter_rows()
    if segments > 1:
        gc.collect()  # the last one's too, before the after-run scan
