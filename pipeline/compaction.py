"""Compaction: many small batch files merged into few large ones, the output readable and resumable throughout.

A job writes one Parquet file (and one WebDataset shard) per ``rows_per_file`` rows: thousands of files per
million rows, each listed and opened by every resume scan and every reader. Compaction merges runs of small
batches, in name order, into batches whose Parquet file and shard each stay within ``target_mb``. Each merged
batch is written the way a job writes one (its shard first, then its Parquet file, each atomically) under a new
batch name, and only then are its inputs removed (their Parquet files, then their shards).

A kill at any point loses nothing: before the first merged file is written, the groups are recorded in the
output's compaction journal (:meth:`OutputStore.compaction_journal_uri`). :func:`finish_compaction`, run by
:func:`pipeline.resume.reconcile_and_scan` before anything else (so by the next job, compaction or recaption),
removes the inputs of every group whose merged Parquet file exists and holds their ids, and drops the journal.
Batches are matched by name, never by URI spelling (listings spell URIs their own way). A group whose merged
file is missing still has all its inputs; its half-written temporaries and orphan shard are removed as any
killed writer's. Between a merged file's write and its inputs' removal a reader listing the output sees those
rows twice (for the time of a few deletes); a kill there leaves them twice until the next job or compaction,
whose reconcile removes the inputs first.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pyarrow as pa

from pipeline import schema as S
from pipeline.io.masking import mask_text
from pipeline.io.output_store import OutputStore, batch_name
from pipeline.io.storage import get_fs, with_retries, write_atomic

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MB = 256.0
MAX_JOURNAL_BYTES = 64 << 20  # a journal past this is not one this module wrote


def plan_groups(sizes: dict[str, tuple[int, int]], target_bytes: int) -> list[list[str]]:
    """Runs of batches (in name order) to merge, from each batch's ``(Parquet bytes, shard bytes)``: a batch
    smaller than the target in both joins the current run until the run's Parquet or shard bytes reach the
    target; a batch at or above it stays as it is; runs of one batch are left."""
    groups, current, parquet, shards = [], [], 0, 0
    for name in sorted(sizes):
        p, s = sizes[name]
        if p >= target_bytes or s >= target_bytes:
            continue
        if current and (parquet + p > target_bytes or shards + s > target_bytes):
            groups.append(current)
            current, parquet, shards = [], 0, 0
        current.append(name)
        parquet, shards = parquet + p, shards + s
    if current:
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def merged_name(inputs: list[str]) -> str:
    """The merged batch's name: from its inputs' batch names, so a rerun of the same group writes the same
    file, and a journal's pairing of a merged batch with its inputs can be checked."""
    return batch_name(list(inputs), run_id="compaction")


def merge_tables(tables: list[pa.Table]) -> pa.Table:
    """One table of the inputs' rows, in order; files written by older versions (fewer columns, narrower
    types) are widened.

    Raises:
        pyarrow.ArrowException: columns of one name whose types cannot be widened to one.
    """
    return pa.concat_tables(tables, promote_options="permissive")


def merge_shards(shards: list[bytes]) -> bytes:
    """One tar holding every member of the given tars, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for data in shards:
            with tarfile.open(fileobj=io.BytesIO(data)) as src:
                for member in src.getmembers():
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _read_journal(store: OutputStore) -> dict | None:
    uri = store.compaction_journal_uri()

    def fetch() -> bytes | None:
        fs, path = get_fs(uri, store.storage_options)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return f.read(MAX_JOURNAL_BYTES + 1)

    data = with_retries(uri, "reading", fetch)  # every job's reconcile reads it: a transient error is retried
    if data is None:
        return None
    try:
        journal = json.loads(data)
        groups = journal["groups"]
        if not all(isinstance(g["merged"], str) and isinstance(g["inputs"], list)
                   and all(isinstance(i, str) for i in g["inputs"]) for g in groups):
            raise ValueError
        return journal
    except (ValueError, KeyError, TypeError, RecursionError):
        logger.warning("compaction journal %s is not one: ignored and removed",
                       mask_text(store.compaction_journal_uri()))
        return {"groups": []}


def _ids(store: OutputStore, name: str) -> set[str] | None:
    """The video ids of a batch, or None when its Parquet file cannot be read."""
    try:
        return set(store.read_table(store.parquet_uri(name), columns=[S.VIDEO_ID]).column(S.VIDEO_ID).to_pylist())
    except (OSError, pa.ArrowException) as exc:
        logger.warning("batch %s cannot be read (%s)", name, str(exc)[:200])
        return None


def finish_compaction(store: OutputStore, check: Callable[[], None] | None = None) -> int:
    """Finish what a killed compaction left: the inputs of each merged batch that was written are removed.
    An input goes only when the journal's merged name is the one its inputs make and the merged file holds
    every id of that input (a damaged journal or merged file removes nothing). Returns the inputs removed."""
    journal = _read_journal(store)
    if journal is None:
        return 0
    check = check or (lambda: None)
    present, shards = set(store.batch_sizes()), set(store.shard_sizes())
    removed = 0
    for group in journal["groups"]:
        merged, inputs = group["merged"], [n for n in group["inputs"] if n != group["merged"]]
        if merged not in present or merged_name(group["inputs"]) != merged:
            continue  # never written (its inputs are all still there), or not a group this module made
        inputs = [n for n in inputs if n in present]
        kept = _ids(store, merged) if inputs else None
        if kept is None:
            continue
        inputs = [n for n in inputs if (ids := _ids(store, n)) is not None and ids <= kept]
        if inputs:
            check()
            _remove_batches(store, inputs, shards)
            removed += len(inputs)
    check()
    store.remove(store.compaction_journal_uri())
    if removed:
        logger.info("finished an interrupted compaction of %s: removed %d merged input files",
                    mask_text(store.uri), removed)
    return removed


def _remove_batches(store: OutputStore, names: list[str], shards: set[str]) -> None:
    """Batches' Parquet files (one bulk delete), then those of their shards that exist (a shard without its
    Parquet file is an orphan, never the reverse)."""
    store.remove_many([store.parquet_uri(n) for n in names])
    store.remove_many([store.shard_uri(n) for n in names if n in shards])


def _merge_group(store: OutputStore, inputs: list[str], shards: set[str], check: Callable[[], None],
                 reads: ThreadPoolExecutor) -> int | None:
    """One group merged and its inputs removed: its rows; None (nothing written or removed) when the inputs'
    columns cannot be merged (the warning names the files)."""
    def read(uri: str, how: Callable[[str], object]):
        return with_retries(uri, "reading", lambda: how(uri))

    tables = list(reads.map(lambda n: read(store.parquet_uri(n), store.read_table), inputs))
    try:
        table = merge_tables(tables)
    except pa.ArrowException as exc:
        logger.warning("batches %s not merged: their columns do not fit one schema (%s)",
                       ", ".join(f"part-{n}.parquet" for n in inputs), str(exc)[:300])
        return None
    present = [store.shard_uri(n) for n in inputs if n in shards]
    shard = merge_shards(list(reads.map(lambda uri: read(uri, store.read_bytes), present))) if present else None
    check()
    store.write_batch(merged_name(inputs), table, shard)
    check()  # once per group: a group's removals take a moment, well inside the lease's half-life
    _remove_batches(store, inputs, shards)
    return table.num_rows


def compact(output: str, storage_options: dict | None = None, target_mb: float = DEFAULT_TARGET_MB,
            threads: int = 4, check: Callable[[], None] | None = None) -> dict:
    """Merge the output's small batch files into files of about ``target_mb``; returns what it did.

    The caller holds the output's lease and has just reconciled it (:func:`pipeline.resume.reconcile_and_scan`:
    duplicates, temporaries, an earlier compaction's leftovers), so merged files never hold two rows of one
    video. ``check`` is called before the journal, each merged batch and each group's removals (it raises when
    the lease is lost: a job passes its lease's check).
    """
    started = time.perf_counter()
    check = check or (lambda: None)
    store = OutputStore(output, storage_options)
    parquet, shard_sizes = store.batch_sizes(), store.shard_sizes()
    sizes = {name: (size, shard_sizes.get(name, 0)) for name, size in parquet.items()}
    groups = plan_groups(sizes, max(1, int(target_mb * 1024 * 1024)))
    stats = {"files_before": len(sizes), "groups": len(groups), "files_merged": sum(map(len, groups))}
    merged: list[int | None] = []
    if groups:
        check()
        journal = {"groups": [{"merged": merged_name(g), "inputs": g} for g in groups]}
        write_atomic(store.compaction_journal_uri(), json.dumps(journal).encode(), storage_options)
        shards = set(shard_sizes)
        with ThreadPoolExecutor(max(1, threads)) as pool, ThreadPoolExecutor(4 * max(1, threads)) as reads:
            merged = list(pool.map(lambda g: _merge_group(store, g, shards, check, reads), groups))
        check()
        store.remove(store.compaction_journal_uri())
    done = [group for group, rows in zip(groups, merged) if rows is not None]
    stats["rows_merged"] = sum(rows for rows in merged if rows is not None)
    stats["groups_skipped"] = len(groups) - len(done)
    stats["files_after"] = len(sizes) - sum(map(len, done)) + len(done)
    stats["wall_s"] = round(time.perf_counter() - started, 3)
    logger.info("compacted %s: %d files -> %d (%d groups, %d rows)", mask_text(output), stats["files_before"],
                stats["files_after"], stats["groups"], stats["rows_merged"])
    return stats
