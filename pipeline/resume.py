"""Resume: what an output already holds, which videos to skip, and repairs after a killed or retried run.

A run that dies leaves only whole files (atomic writes) plus maybe hidden temporaries and WebDataset
tars whose Parquet file was never written; a killed compaction leaves merged files beside their inputs. A
``--retry-errors`` run writes a new row for a video whose old error row sits in an older file.
:func:`reconcile` fixes all four, so the output ends with exactly one row per video: a caption beats an
error, then the newest row wins (:data:`PREFERRED_ROW`, the rule every reader of an id's several rows follows).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Collection

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S
from pipeline.io.masking import mask_text, public_uri
from pipeline.compaction import finish_compaction
from pipeline.io.output_store import OutputStore

logger = logging.getLogger(__name__)

_SCAN_COLUMNS = [S.VIDEO_ID, S.ERROR, S.CREATED_AT, S.MODEL, S.PROMPT_ID]


@dataclass
class OutputState:
    """One row per Parquet row of the output: ``video_id``, ``ok``, ``created_at``, ``model``, ``prompt_id``,
    ``file``, ``row`` (its position in the file, so that two rows of one file with the same id can be told
    apart)."""

    rows: pa.Table
    files: list[str] = field(default_factory=list)

    def done_ids(self, retry_errors: bool, same_as: tuple[str, str] | None = None) -> pa.Array:
        """Ids to skip: every id already written, or only the captioned ones with ``retry_errors``.

        ``same_as=(model, prompt_id)``: only rows written with this model and prompt count (re-caption what
        changed: a new checkpoint, LoRA, template or prompt).
        """
        table = self.rows.filter(self.rows.column("ok")) if retry_errors else self.rows
        if same_as is not None:
            model, prompt = same_as
            table = table.filter(pc.and_(pc.equal(table.column(S.MODEL), model),
                                         pc.equal(table.column(S.PROMPT_ID), prompt)))
        return pc.unique(table.column(S.VIDEO_ID).combine_chunks())


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


def scan_output(output: str, storage_options: dict | None = None, threads: int = 16,
                previous: OutputState | None = None, changed: Collection[str] = ()) -> OutputState:
    """Read the id, status, time, model and prompt columns of every Parquet file of the output.

    With ``previous`` (a scan of the same output), only the listing is fresh: files already scanned keep
    their rows unless their name is in ``changed`` (files written or rewritten since), new files are read
    and files gone are dropped. One LIST per 1000 files instead of one read per file.
    """
    store = OutputStore(output, storage_options)
    files = store.parquet_files()
    empty = pa.table({S.VIDEO_ID: pa.array([], pa.string()), "ok": pa.array([], pa.bool_()),
                      S.CREATED_AT: pa.array([], S.OUTPUT_SCHEMA.field(S.CREATED_AT).type),
                      S.MODEL: pa.array([], pa.string()), S.PROMPT_ID: pa.array([], pa.string()),
                      "file": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
    known = set(previous.files) if previous is not None else set()
    changed = set(changed)
    reused = [f for f in files if f in known and _file_name(f) not in changed]
    to_read = [f for f in files if f not in known or _file_name(f) in changed]
    tables = [empty]
    if reused:
        tables.append(previous.rows.filter(pc.is_in(previous.rows.column("file"), value_set=pa.array(reused))))
    if to_read:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            tables += list(pool.map(lambda f: _read_columns(store, f), to_read))
    return OutputState(pa.concat_tables(tables), files)


def _file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


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


def _losing_rows(state: OutputState) -> dict[str, set[int]]:
    """For ids present more than once: file -> positions of the rows to drop from it (all but the preferred
    row, :data:`PREFERRED_ROW`)."""
    rows = state.rows
    counts = pc.value_counts(rows.column(S.VIDEO_ID).combine_chunks())
    dup_ids = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup_ids) == 0:
        return {}
    dups = rows.filter(pc.is_in(rows.column(S.VIDEO_ID), value_set=dup_ids))
    files, positions = dups.column("file").to_pylist(), dups.column("row").to_pylist()
    drop: dict[str, set[int]] = {}
    for index in preferred_rows(dups)[1]:
        drop.setdefault(files[index], set()).add(positions[index])
    return drop


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
    for uri, ids in sorted(_losing_rows(state).items()):
        check()
        stats["duplicate_rows"] += _rewrite_without(store, uri, ids)
        rewritten.add(_file_name(uri))
    if rewritten:
        state = scan_output(output, storage_options, previous=state, changed=rewritten)
    if any(stats.values()):
        logger.info("reconciled %s: %s", mask_text(output), stats)
    return stats, state
