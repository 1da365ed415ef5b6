"""The light stages before decoding: skip videos already done, mark repeated list rows, count what was read, and
find ids that name two different videos.

No torch and no model code here: these run as small Ray tasks and one actor beside the pools.
"""

from __future__ import annotations

import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import schema as S
from pipeline.io.masking import public_uri


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
    ``tally``, count the rows read (unless ``counts_reads`` is off: a second pass after clip windows) and the
    rows skipped.

    The finished ids are put in the object store once: each task holds a reference, and each worker process
    fetches the array once (not a copy of a million ids pickled into every task).
    """

    def __init__(self, done_ids: pa.Array | ray.ObjectRef, tally=None, counts_reads: bool = True) -> None:
        self.done_ref = done_ids if isinstance(done_ids, ray.ObjectRef) else ray.put(done_ids)
        self.tally = tally
        self.counts_reads = counts_reads

    def done_ids(self) -> pa.Array:
        key = self.done_ref.hex()
        if key not in _DONE_IDS:
            _DONE_IDS.clear()  # one run's set per worker process at a time
            _DONE_IDS[key] = ray.get(self.done_ref)
        return _DONE_IDS[key]

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo, done_ids = batch, self.done_ids()
        if len(done_ids):
            todo = batch.filter(pc.invert(pc.is_in(batch.column(S.VIDEO_ID), value_set=done_ids)))
        if self.tally is not None:  # waited for, so the count is in before this block moves on
            counts = {"done": batch.num_rows - todo.num_rows}
            if self.counts_reads:
                counts["read"] = batch.num_rows
            ray.get(self.tally.add.remote(**counts))
        return todo


_DONE_IDS: dict[str, pa.Array] = {}  # per worker process: the finished ids of the run it works for


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


def _hash64(values: list[str]) -> np.ndarray:
    """A stable 64-bit hash per string, the same in every process (unlike Python's ``hash``): pandas' SipHash
    with its fixed key, vectorised."""
    import pandas as pd

    return pd.util.hash_array(np.array(values, dtype=object), categorize=False).astype(np.uint64)


def _same_input(uri: str | None) -> str:
    """The URI as one spelling per input: without credentials (most URIs have none, and the regexes cost per
    row), and a local path normalised (``file://``, ``./``, ``a/../``, ``//`` name the same file)."""
    uri = uri or ""
    if any(c in uri for c in "@?&;"):
        uri = public_uri(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if not uri or "://" in uri:
        return uri
    path = posixpath.normpath(uri)
    return "/" + path.lstrip("/") if path.startswith("//") else path  # POSIX keeps a leading "//"


def _bound(value: float | None) -> str:
    return "" if value is None else repr(value + 0.0)  # -0.0 and 0.0 are one bound


def input_keys(refs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per VideoRef row: the hash of its ``video_id`` and of the input it names (the URI without credentials,
    the clip bounds, and for a row the list could not use, why: a row whose bounds are unusable, with them, is
    not the whole video), so that rows naming one input twice can be told from two inputs under one id."""
    ids = refs.column(S.VIDEO_ID).to_pylist()
    columns = [refs.column(c).to_pylist() if c in refs.column_names else [None] * refs.num_rows
               for c in (S.URI, S.START_S, S.END_S, S.ERROR_REASON, S.ERROR)]
    inputs = [f"{_same_input(u)}|{_bound(a)}|{_bound(b)}|{reason or ''}|{text if reason == 'bad_bounds' else ''}"
              for u, a, b, reason, text in zip(*columns)]
    return _hash64(ids), _hash64(inputs)


@ray.remote(num_cpus=0)
class IdRegistry:
    """Every list row's ``(id hash, input hash)`` (16 bytes a row), to find ids that name two different inputs
    before anything runs: a list is the user's statement of what each id means, and an id cannot mean two
    videos (the output keeps one row per id, so one of them would vanish)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, ids: np.ndarray, inputs: np.ndarray) -> None:
        if len(ids):
            self.parts.append(np.unique(np.stack([ids, inputs], axis=1), axis=0))

    def conflicting_ids(self) -> np.ndarray:
        """The id hashes that come with more than one input."""
        if not self.parts:
            return np.array([], dtype=np.uint64)
        pairs = np.unique(np.concatenate(self.parts), axis=0)  # distinct (id, input), sorted by id
        self.parts = [pairs]
        ids, counts = np.unique(pairs[:, 0], return_counts=True)
        return ids[counts > 1]


class CheckIds:
    """The reading tasks' first filter: registers every row with the :class:`IdRegistry` (waited for, so the
    check after the read sees every row), then applies ``then`` (the job's :class:`SkipDone`)."""

    def __init__(self, registry, then=None) -> None:
        self.registry, self.then = registry, then

    def __call__(self, refs: pa.Table) -> pa.Table:
        ray.get(self.registry.add.remote(*input_keys(refs)))
        return self.then(refs) if self.then is not None else refs


class OnlyIds:
    """Keeps the rows whose id hash is one of ``id_hashes`` (to name the rows behind a conflict)."""

    def __init__(self, id_hashes: np.ndarray) -> None:
        self.id_hashes = set(int(h) for h in id_hashes)

    def __call__(self, refs: pa.Table) -> pa.Table:
        ids, _ = input_keys(refs)
        return refs.filter(pa.array([int(h) in self.id_hashes for h in ids], pa.bool_()))
