"""Resume: what an output already holds, which videos to skip, and repairs after a killed or retried run.

A run that dies leaves only whole files (atomic writes) plus maybe hidden temporaries and WebDataset
tars whose Parquet file was never written; a killed compaction leaves merged files beside their inputs. A
``--retry-errors`` run writes a new row for a video whose old error row sits in an older file.
:func:`reconcile` fixes all four, so the output ends with exactly one row per video: a caption beats an
error, then the newest row wins (:data:`PREFERRED_ROW`, the rule every reader of an id's several rows follows).

The scan that finds these is a small map-reduce, so that nothing in the driver grows with the output: tasks read
the Parquet files' key columns and split the rows by the high bits of their id's hash; one task per partition
merges its pieces (and the previous scan's, when the run's own files are all that changed), sorts them by hash
(an id's rows are then neighbours) and reports its counts and the rows that lose. The partitions stay in Ray's
object store, and the finished ids handed to the reading tasks are made from them there
(:class:`~pipeline.done_set.DoneSet`). Without Ray (``jobs/compact.py``, tests) the same functions run here.
The Parquet rows stay the truth: the state is rebuilt by every job, never stored beside them.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S
from pipeline.done_set import DonePart, DoneSet, connected_ray, hash_ids
from pipeline.io.masking import mask_text, public_uri
from pipeline.compaction import finish_compaction
from pipeline.io.output_store import PARQUET_DIR, OutputStore
from pipeline.resources import LIGHT_NUM_CPUS

logger = logging.getLogger(__name__)

_SCAN_COLUMNS = [S.VIDEO_ID, S.ERROR, S.CREATED_AT, S.MODEL, S.PROMPT_ID]
# Parquet bytes of the output per partition of its state: a partition's task holds about 2x this at ~50 bytes a
# row (errors), far less with captions (~1 KB a row).
PARTITION_BYTES = 128 << 20
# Parquet bytes a scanning task reads per partition it splits rows into. Each piece it returns must stay above
# Ray's 100 KB limit for objects returned inline, which the driver (their owner) would otherwise hold in its own
# memory: 4 MiB of Parquet is >= 4,000 state rows (~300 KB) up to ~1 KB a row.
TASK_BYTES_PER_PARTITION = 4 << 20
MAX_PARTITION_BITS = 10  # at most 1,024 partitions
_HASH = "_hash"
_NAME = pa.dictionary(pa.int32(), pa.string())
_PART_SCHEMA = pa.schema([(S.VIDEO_ID, pa.string()), ("ok", pa.bool_()),
                          (S.CREATED_AT, S.OUTPUT_SCHEMA.field(S.CREATED_AT).type), (S.MODEL, _NAME),
                          (S.PROMPT_ID, _NAME), ("file", _NAME), ("row", pa.int64()), (_HASH, pa.uint64())])


@dataclass
class OutputState:
    """What the output holds, as partitions of its rows by id hash (each a table of :func:`row_keys` with
    ``file`` the file's name, sorted by the id's hash), or, with Ray up, references to them in the object store:
    the driver holds the file list and the counts, never the rows.

    ``losing``: file name -> positions of the rows that lose to another row of the same id
    (:data:`PREFERRED_ROW`), for :func:`reconcile_and_scan` to remove.
    """

    files: list[str] = field(default_factory=list)
    parts: list = field(default_factory=list)
    bits: int = 0
    num_rows: int = 0
    ok: int = 0
    losing: dict[str, list[int]] = field(default_factory=dict)

    def table(self) -> pa.Table:
        """Every row's keys in one table, materialised here (tests and small outputs; a job never does this)."""
        return pa.concat_tables([_EMPTY, *_Tasks().get(self.parts)]).drop_columns([_HASH])

    def done_set(self, retry_errors: bool, same_as: tuple[str, str] | None = None) -> DoneSet:
        """Ids to skip: every id already written, or only the captioned ones with ``retry_errors``; made by a
        task per partition, left in the object store.

        ``same_as=(model, prompt_id)``: only rows written with this model and prompt count (re-caption what
        changed: a new checkpoint, LoRA, template or prompt).
        """
        tasks = _Tasks()
        made = [tasks.submit(_done_part, part, retry_errors, same_as, num_returns=2) for part in self.parts]
        sizes = _last_results(tasks, made)
        return DoneSet(tuple(m[0] for m in made), int(sum(sizes)))

    def done_ids(self, retry_errors: bool, same_as: tuple[str, str] | None = None) -> pa.Array:
        """:meth:`done_set`'s ids, materialised here (tests and small outputs)."""
        return self.done_set(retry_errors, same_as).ids()


class UnreadableOutputFile(ValueError):
    """A Parquet file of the output cannot be read as one (damaged, truncated, not Parquet)."""


def _read_columns(store: OutputStore, uri: str) -> pa.Table:
    try:
        table = store.read_table(uri, columns=_SCAN_COLUMNS)
    except pa.ArrowException as exc:
        raise UnreadableOutputFile(f"{public_uri(uri)} is not a readable Parquet file ({str(exc)[:200]}): move it "
                                   "out of the output (its rows are lost) and run again") from exc
    return row_keys(table, uri)


def row_keys(table: pa.Table, uri: str) -> pa.Table:
    """What the scan keeps of a Parquet file's rows, and what :func:`preferred_rows` judges them by: ``video_id``,
    ``ok`` (no error), ``created_at``, ``model``, ``prompt_id``, ``file`` (``uri``), ``row`` (the position)."""
    return pa.table({
        S.VIDEO_ID: table.column(S.VIDEO_ID),
        "ok": pc.is_null(table.column(S.ERROR)),
        S.CREATED_AT: table.column(S.CREATED_AT),
        S.MODEL: table.column(S.MODEL).cast(pa.string()),
        S.PROMPT_ID: table.column(S.PROMPT_ID).cast(pa.string()),
        "file": pa.array([uri] * table.num_rows, pa.string()),
        "row": pa.array(range(table.num_rows), pa.int64()),
    })


_EMPTY = _PART_SCHEMA.empty_table()


class _Tasks:
    """The scan's steps as Ray tasks (light: they fit the CPUs every job leaves free) when this process is
    connected to Ray, else as calls here (``jobs/compact.py``, tests): the same functions either way."""

    _remote: dict = {}

    def __init__(self) -> None:
        self.ray = connected_ray()

    def submit(self, fn: Callable, *args, num_returns: int = 1) -> list:
        """``fn(*args)``'s ``num_returns`` results (references to them under Ray)."""
        if self.ray is None:
            result = fn(*args)
            return [result] if num_returns == 1 else list(result)
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=LIGHT_NUM_CPUS, max_retries=3)(fn)
        refs = self._remote[fn].options(num_returns=num_returns).remote(*args)
        return [refs] if num_returns == 1 else list(refs)

    def get(self, values: list) -> list:
        """The results, or the first failed task's own error, as a call here raises it."""
        outcomes = self.outcomes(values)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    def outcomes(self, values: list) -> list:
        """Each result, or the error its task raised (each fetched alone, so that every failed one is seen: Ray
        logs an error nobody fetched as unhandled, once per reference)."""
        if self.ray is None:
            return list(values)
        outcomes = []
        for ref in values:
            try:
                outcomes.append(self.ray.get(ref))
            except self.ray.exceptions.RayTaskError as exc:
                outcomes.append(exc.cause if isinstance(exc.cause, Exception) else exc)
        return outcomes


def _partition_bits(parquet_bytes: int) -> int:
    parts = max(1, -(-parquet_bytes // PARTITION_BYTES))
    return min(MAX_PARTITION_BITS, int(parts - 1).bit_length())


def _by_bytes(files: list[str], sizes: dict[str, int], task_bytes: int) -> list[list[str]]:
    """``files`` in runs of about ``task_bytes`` (at least one file each), in order."""
    chunks: list[list[str]] = []
    total = task_bytes
    for f in files:
        if total >= task_bytes:
            chunks.append([])
            total = 0
        chunks[-1].append(f)
        total += sizes.get(f, 0)
    return chunks


def _partition_of(hashes: np.ndarray, bits: int) -> np.ndarray:
    """The partition of each hash: its high ``bits`` bits, so that partitions hold disjoint ranges of hashes."""
    return (hashes >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(hashes), np.int64)


def _scan_files(output: str, storage_options: dict | None, uris: list[str], bits: int, threads: int):
    """Read the scan's columns of ``uris`` and split their rows by partition: one table per partition, then the
    number of rows."""
    store = OutputStore(output, storage_options)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(lambda uri: _keys_of(_read_columns(store, uri), uri), uris))
    keys = pa.concat_tables([_EMPTY.drop_columns([_HASH]), *tables])
    hashes = hash_ids(keys.column(S.VIDEO_ID))
    keys = keys.append_column(_HASH, pa.array(hashes, pa.uint64()))
    partition = _partition_of(hashes, bits)
    order = np.argsort(partition, kind="stable")
    keys, bounds = keys.take(pa.array(order)), np.searchsorted(partition[order], np.arange((1 << bits) + 1))
    pieces = [_compact_dictionaries(keys.slice(bounds[p], bounds[p + 1] - bounds[p])) for p in range(1 << bits)]
    return (*pieces, keys.num_rows)  # the count: a small result to learn that the task worked


def _keys_of(table: pa.Table, uri: str) -> pa.Table:
    """One file's :func:`row_keys` in the state's types, ``file`` its name (:func:`_file_name`)."""
    table = table.set_column(table.schema.get_field_index("file"), "file",
                             pa.array([_file_name(uri)] * table.num_rows, pa.string()))
    try:
        return table.cast(_PART_SCHEMA.remove(_PART_SCHEMA.get_field_index(_HASH)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UnreadableOutputFile(f"{public_uri(uri)} has columns of other types than the output's "
                                   f"({str(exc)[:200]}): move it out of the output and run again") from exc


def _compact_dictionaries(table: pa.Table) -> pa.Table:
    """``table`` with each dictionary column holding only the values its rows use (a slice keeps the whole
    dictionary of what it was cut from: every file name of a scanning task, in each of its pieces)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f, pc.dictionary_encode(table.column(i).cast(pa.string())).cast(f.type))
    return table


def _without_files(table: pa.Table, names: frozenset[str]) -> pa.Table:
    """``table`` without the rows of the files named (a test of each chunk's dictionary, not of each row)."""
    if not names or not table.num_rows:
        return table
    drop = pa.array(sorted(names), pa.string())
    keep = [pc.invert(pc.take(pc.is_in(chunk.dictionary, value_set=drop), chunk.indices))
            for chunk in table.column("file").chunks]
    return table.filter(pa.chunked_array(keep, pa.bool_()))


def _merge_partition(previous: pa.Table | None, dropped: frozenset[str], bits: int, partition: int,
                     *pieces: pa.Table):
    """Partition ``partition`` of ``bits`` of the state: ``previous``'s rows of it (a partition of the previous scan,
    whose fewer bits make it a superset: its rows are sorted by hash, so this one's are a run of them), without the
    files in ``dropped``, and the pieces the scanning tasks read, sorted by hash; with its counts and the rows that
    lose to another of their id."""
    tables = [_EMPTY] + list(pieces)
    if previous is not None:
        hashes = previous.column(_HASH).to_numpy()
        first, last = np.searchsorted(_partition_of(hashes, bits), [partition, partition + 1])
        tables.append(_without_files(previous.slice(first, last - first), dropped))
    table = pa.concat_tables(tables)
    hashes = table.column(_HASH).to_numpy()
    order = np.argsort(hashes, kind="stable")
    table = table.take(pa.array(order))
    hashes = hashes[order]
    ok = int(pc.sum(table.column("ok")).as_py() or 0)
    return table, {"rows": table.num_rows, "ok": ok, "losing": _losing_rows(table, hashes)}


def _losing_rows(table: pa.Table, hashes: np.ndarray) -> dict[str, list[int]]:
    """For ids present more than once (rows of equal hash, next to each other in a partition sorted by hash):
    file -> positions of the rows to drop from it (all but the preferred row, :data:`PREFERRED_ROW`)."""
    same = np.nonzero(hashes[1:] == hashes[:-1])[0] if len(hashes) > 1 else np.array([], np.int64)
    if not len(same):
        return {}
    candidates = pa.array(np.unique(np.concatenate([same, same + 1])))
    rows = table.take(candidates).drop_columns([_HASH])
    rows = rows.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f
                                for f in rows.schema]))
    files, positions = rows.column("file").to_pylist(), rows.column("row").to_pylist()
    drop: dict[str, set[int]] = {}
    for index in preferred_rows(rows)[1]:
        drop.setdefault(files[index], set()).add(positions[index])
    return {name: sorted(rows) for name, rows in drop.items()}


def _done_part(part: pa.Table, retry_errors: bool, same_as: tuple[str, str] | None):
    """The :class:`DonePart` of one partition (see :meth:`OutputState.done_set`) and its size."""
    if retry_errors:
        part = part.filter(part.column("ok"))
    if same_as is not None:
        model, prompt = same_as
        part = part.filter(pc.and_(pc.equal(part.column(S.MODEL).cast(pa.string()), model),
                                   pc.equal(part.column(S.PROMPT_ID).cast(pa.string()), prompt)))
    done = DonePart.of(part.column(S.VIDEO_ID), part.column(_HASH).to_numpy(), sorted_by_hash=True)
    return done, len(done.ids)


def _last_results(tasks: _Tasks, results: list[list]) -> list:
    """The last result of each task (a small one: a count, a summary), or the first error among them, raised after
    fetching every result of the failed tasks (errors, not data): each is then seen, and logged by nobody."""
    outcomes = tasks.outcomes([r[-1] for r in results])
    failed = [(outcome, refs) for outcome, refs in zip(outcomes, results) if isinstance(outcome, BaseException)]
    for _, refs in failed:
        tasks.outcomes(refs[:-1])
    if failed:
        raise failed[0][0]
    return outcomes


def scan_output(output: str, storage_options: dict | None = None, threads: int = 16,
                previous: OutputState | None = None, changed: Collection[str] = ()) -> OutputState:
    """Read the id, status, time, model and prompt columns of every Parquet file of the output, in tasks that
    split the rows into partitions by id hash, merged by one task per partition (see :class:`OutputState`).

    With ``previous`` (a scan of the same output), only the listing is fresh: files already scanned keep
    their rows unless their name is in ``changed`` (files written or rewritten since), new files are read
    and files gone are dropped. One LIST per 1000 files instead of one read per file.
    """
    store = OutputStore(output, storage_options)
    sizes = store.parquet_sizes()
    files = list(sizes)
    changed = frozenset(_file_name(c) for c in changed)
    known = set(_names_of(previous.files)) if previous is not None else set()
    names = set(_names_of(files))
    to_read = [f for f in files if _file_name(f) not in known or _file_name(f) in changed]
    dropped = frozenset((known - names) | (changed & known))
    # Partitions may split as the output grows (a job's first run), never merge: a partition of fewer bits holds
    # every row of the partitions of more bits its high bits name.
    bits = _partition_bits(sum(sizes.values()))
    bits = max(bits, previous.bits) if previous is not None else bits
    tasks = _Tasks()
    reads = [tasks.submit(_scan_files, output, storage_options, chunk, bits, threads, num_returns=(1 << bits) + 1)
             for chunk in _by_bytes(to_read, sizes, (1 << bits) * TASK_BYTES_PER_PARTITION)]
    _last_results(tasks, reads)  # before any merge: one failed read is one error, not one per partition
    merged = [tasks.submit(_merge_partition,
                           previous.parts[p >> (bits - previous.bits)] if previous is not None else None,
                           dropped, bits, p, *[read[p] for read in reads], num_returns=2) for p in range(1 << bits)]
    summaries = _last_results(tasks, merged)
    state = OutputState(files, [m[0] for m in merged], bits)
    for counts in summaries:
        state.num_rows += counts["rows"]
        state.ok += counts["ok"]
        for name, rows in counts["losing"].items():  # a file's rows lie in every partition
            state.losing.setdefault(name, []).extend(rows)
    return state


def _file_name(uri: str) -> str:
    """A Parquet file's name in the state: its path under the output's ``parquet/`` folder (the batch name for the
    files a job writes; a copied-in subfolder's files keep theirs apart), the same however the URI is spelled."""
    return uri.rstrip("/").rsplit(f"/{PARQUET_DIR}/", 1)[-1]


class AmbiguousOutputFiles(ValueError):
    """Two Parquet files of the output have one name under ``parquet/`` (a folder named ``parquet`` inside it)."""


def _names_of(files: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for uri in files:
        name = _file_name(uri)
        if name in names:
            raise AmbiguousOutputFiles(f"{public_uri(names[name])} and {public_uri(uri)} have one name in the "
                                       "output: move the folder named parquet inside its parquet folder out of it")
        names[name] = uri
    return names


# Which of an id's rows counts where an output holds several (a --retry-errors or --recaption-changed run's new
# row beside the old one, before or without the repair): a caption beats an error, then the newest row, then the
# later file, then the first row of a file. A caption is never hidden by a later failure to caption the video again
# (a retry that failed once more, a new model's failed attempt): the caption stays what the output says of the
# video, and a caller that needs this run's own row checks its model and prompt_id (the evaluation does, and scores
# another model's caption as no answer). One rule for every reader: reconcile keeps this row and drops the others,
# the evaluation reads it as a question's answer.
PREFERRED_ROW = [("ok", "descending"), (S.CREATED_AT, "descending"), ("file", "descending"), ("row", "ascending")]


def preferred_rows(rows: pa.Table) -> tuple[list[int], list[int]]:
    """Positions in ``rows`` (:func:`row_keys` of one or more files) of each id's preferred row
    (:data:`PREFERRED_ROW`), and of every other row."""
    indexed = rows.append_column("_position", pa.array(range(rows.num_rows), pa.int64()))
    order = indexed.sort_by([(S.VIDEO_ID, "ascending"), *PREFERRED_ROW])
    kept: list[int] = []
    others: list[int] = []
    seen: set[str] = set()
    for video_id, position in zip(order.column(S.VIDEO_ID).to_pylist(), order.column("_position").to_pylist()):
        (others if video_id in seen else kept).append(position)
        seen.add(video_id)
    return kept, others


def _rewrite_without(store: OutputStore, uri: str, rows: set[int]) -> int:
    """Rewrite one Parquet file without the rows at the given positions, and its WebDataset shard to match."""
    table = store.read_table(uri)
    keep = table.filter(pa.array([i not in rows for i in range(table.num_rows)]))
    captioned = keep.filter(pc.is_null(keep.column(S.ERROR))).column(S.VIDEO_ID).to_pylist()
    store.rewrite_batch(uri, keep, captioned)
    return table.num_rows - keep.num_rows


def reconcile(output: str, storage_options: dict | None = None) -> dict[str, int]:
    """Remove hidden temporaries, orphan WebDataset tars and duplicate rows. Safe to run any time no job
    is writing to ``output``; returns what it removed."""
    return reconcile_and_scan(output, storage_options)[0]


def reconcile_and_scan(output: str, storage_options: dict | None = None, previous: OutputState | None = None,
                       written: Collection[str] = (), check: Callable[[], None] | None = None
                       ) -> tuple[dict[str, int], OutputState]:
    """:func:`reconcile`, also returning the repaired output's state, so callers need not scan it again.

    ``previous`` and ``written``: the state before a run and the names (or URIs) of the Parquet files the
    run wrote; then only those and files not seen before are read (see :func:`scan_output`), so a job scans
    its output once, not twice. Files rewritten to drop duplicates are read again, alone. ``check`` is called
    before each removal or rewrite (a job's lease check: it raises when the job no longer holds the output).
    """
    store = OutputStore(output, storage_options)
    stats = {"temporaries": 0, "orphan_tars": 0, "duplicate_rows": 0}
    check = check or (lambda: None)
    stats["compacted_inputs"] = finish_compaction(store, check)  # a killed compaction's merged inputs
    for uri in store.temporaries():
        check()
        store.remove(uri)
        stats["temporaries"] += 1
    state = scan_output(output, storage_options, previous=previous, changed={_file_name(w) for w in written})
    for uri in store.orphan_shards(state.files):
        check()
        store.remove(uri)
        stats["orphan_tars"] += 1
    rewritten = set()
    uris = _names_of(state.files)
    for name, rows in sorted(state.losing.items()):
        check()
        stats["duplicate_rows"] += _rewrite_without(store, uris[name], set(rows))
        rewritten.add(name)
    if rewritten:
        state = scan_output(output, storage_options, previous=state, changed=rewritten)
    if any(stats.values()):
        logger.info("reconciled %s: %s", mask_text(output), stats)
    return stats, state
