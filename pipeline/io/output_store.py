"""The layout of a recaption output, owned in one place: file names, batch writes, listings, reads, keyframes.

Layout under the output URI::

    parquet/part-<h>.parquet     the system of record, one row per video (caption or error)
    webdataset/shard-<h>.tar     {key}.json (caption + metadata) and {key}.jpg (middle keyframe), captioned rows
    _runs/<run_id>.json          run summaries
    _lease.json                  the running job's lease (:mod:`pipeline.lease`)
    _state/compaction.json       the groups of a compaction in progress (:mod:`pipeline.compaction`)

``<h>`` names a batch: a hash of the run id and the batch's video ids, so a batch that its run redoes (a retried
task) gets the same name, and a later run never overwrites an earlier run's file (a ``--recaption-changed`` or
``--retry-errors`` run whose video now fails must not replace the caption that file holds). A batch's
shard is written before its Parquet file: a Parquet file present means its batch is complete, and a shard
without its Parquet file is an orphan that :mod:`pipeline.resume` removes. Every other module asks this
one for names, so a pattern changed here changes everywhere (reconcile included).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from collections import Counter
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.masking import public_uri
from pipeline.io.storage import (TEMPORARY_PREFIX, get_fs, join, list_file_sizes, list_files, remove, with_retries,
                                 write_atomic)

logger = logging.getLogger(__name__)

PARQUET_DIR = "parquet"
WEBDATASET_DIR = "webdataset"
RUNS_DIR = "_runs"
PLANS_DIR = "_plans"  # plans (pipeline.plan): <plan id>.json, and a plan's scratch output while it measures
MAX_PLAN_BYTES = 10_000_000  # a plan file larger than this is no plan (one is a few KB)
LEASE_FILE = "_lease.json"
STATE_DIR = "_state"  # the output's bookkeeping beside its data: the compaction journal (pipeline.compaction)
_PART = ("part-", ".parquet")
_SHARD = ("shard-", ".tar")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_CHARS = 200  # "{key}.json" stays under the 255-byte file-name limit where a shard is unpacked


def batch_name(video_ids: list[str], run_id: str = "") -> str:
    """The name of this run's batch holding these videos (their order does not matter)."""
    return hashlib.sha1("\n".join([run_id, *sorted(video_ids)]).encode()).hexdigest()[:16]


def sample_key(video_id: str) -> str:
    """A WebDataset key: no dots or slashes (they split keys), at most ``MAX_KEY_CHARS`` characters; a hash
    suffix keeps altered (replaced or shortened) ids unique."""
    safe = _KEY_UNSAFE.sub("_", video_id)
    if safe == video_id and len(safe) <= MAX_KEY_CHARS:
        return safe
    return f"{safe[: MAX_KEY_CHARS - 9]}_{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as one zstd-compressed Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_parquet(uri: str, table: pa.Table, storage_options: dict | None = None,
                  on_retry: Callable[[], None] | None = None) -> None:
    """Write ``table`` to ``uri`` atomically (readers see the whole file or none)."""
    write_atomic(uri, parquet_bytes(table), storage_options, on_retry=on_retry)


def webdataset_tar(samples: list[tuple[str, dict, bytes | None]]) -> bytes:
    """One tar of ``(video_id, metadata, keyframe JPEG or None)`` samples: ``{key}.json`` and ``{key}.jpg``."""
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, encoder=False, mtime=0) as sink:
        for video_id, metadata, jpeg in samples:
            sample = {"__key__": sample_key(video_id), "json": json.dumps(metadata, default=str).encode()}
            if jpeg:
                sample["jpg"] = jpeg
            sink.write(sample)
    return buffer.getvalue()


def tar_keeping(data: bytes, keep: Counter) -> bytes:
    """The tar with, per sample key, only its first ``keep[key]`` samples (a sample is a run of members that
    share a key, one member per extension)."""
    out = io.BytesIO()
    left = Counter(keep)
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        current, extensions, kept = None, set(), False
        for member in src.getmembers():
            key, _, extension = member.name.split("/")[-1].partition(".")
            if key != current or extension in extensions:  # a new sample starts
                current, extensions = key, set()
                kept = left[key] > 0
                left[key] -= kept
            extensions.add(extension)
            if kept:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _name_between(uri: str, affix: tuple[str, str]) -> str | None:
    name = uri.rsplit("/", 1)[-1]
    prefix, suffix = affix
    return name[len(prefix): -len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else None


def parquet_location(uri: str) -> str:
    """Where the rows are, for readers given an output root, its ``parquet/`` folder or a Parquet file."""
    if uri.endswith(".parquet") or uri.rstrip("/").endswith("/" + PARQUET_DIR) or uri.rstrip("/") == PARQUET_DIR:
        return uri
    return join(uri, PARQUET_DIR)


class _ReadsOf:
    """A file object that notes whether any call to it failed (a read, a seek or tell that goes to the store, as
    on NFS or FUSE mounts): a Parquet reader's error is then the store's, not the file's."""

    def __init__(self, f) -> None:
        self._f, self.failed = f, False

    def __getattr__(self, name: str):
        value = getattr(self._f, name)
        if not callable(value):
            return value

        def noted(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except BaseException:
                self.failed = True
                raise

        return noted


class OutputStore:
    """One recaption output: its file names, batch writes, listings, table reads and keyframes."""

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options or {}

    # -- names -----------------------------------------------------------------------------------------
    def parquet_uri(self, name: str) -> str:
        return join(self.uri, PARQUET_DIR, f"{_PART[0]}{name}{_PART[1]}")

    def shard_uri(self, name: str) -> str:
        return join(self.uri, WEBDATASET_DIR, f"{_SHARD[0]}{name}{_SHARD[1]}")

    def summary_uri(self, run_id: str) -> str:
        return join(self.uri, RUNS_DIR, f"{run_id}.json")

    def lease_uri(self) -> str:
        return join(self.uri, LEASE_FILE)

    def plans_uri(self) -> str:
        return join(self.uri, PLANS_DIR)

    def plan_uri(self, plan_id: str) -> str:
        return join(self.uri, PLANS_DIR, f"{plan_id}.json")

    def compaction_journal_uri(self) -> str:
        return join(self.uri, STATE_DIR, "compaction.json")

    @staticmethod
    def batch_of(parquet_uri: str) -> str:
        """The batch name of a Parquet batch file (``part-<name>.parquet``)."""
        name = _name_between(parquet_uri, _PART)
        if name is None:
            raise ValueError(f"{parquet_uri} is not a batch file of this output")
        return name

    def shard_for(self, parquet_uri: str) -> str:
        """The WebDataset shard written with a Parquet file (same batch name)."""
        return self.shard_uri(self.batch_of(parquet_uri))

    def describe(self, webdataset: bool, run_id: str) -> str:
        """Where a run's results are, for people."""
        parts = [f"captions: {join(self.uri, PARQUET_DIR)}/*.parquet"]
        if webdataset:
            parts.append(f"webdataset: {join(self.uri, WEBDATASET_DIR)}/*.tar")
        parts.append(f"summary: {self.summary_uri(run_id)}")
        return "   ".join(parts)

    # -- listings --------------------------------------------------------------------------------------
    def parquet_files(self) -> list[str]:
        """The batch Parquet files (not temporaries or other hidden files)."""
        return list(self.parquet_sizes())

    def parquet_sizes(self) -> dict[str, int]:
        """The batch Parquet files (as :meth:`parquet_files`) and their sizes in bytes, from one listing."""
        sizes = list_file_sizes(join(self.uri, PARQUET_DIR), self.storage_options, suffix=_PART[1])
        return {f: n for f, n in sizes.items() if not f.rsplit("/", 1)[-1].startswith((".", "_"))}

    def batch_sizes(self) -> dict[str, int]:
        """Batch name -> Parquet bytes, for the files named as batches (``part-<name>.parquet``). Names, not
        URIs: a listing spells URIs its own way (absolute, without user info), the store as it was given."""
        return {name: size for uri, size in self.parquet_sizes().items()
                if (name := _name_between(uri, _PART)) is not None}

    def shard_sizes(self) -> dict[str, int]:
        """Batch name -> WebDataset shard bytes, for the batches that have a shard."""
        sizes = list_file_sizes(join(self.uri, WEBDATASET_DIR), self.storage_options, suffix=_SHARD[1])
        return {name: size for uri, size in sizes.items() if (name := _name_between(uri, _SHARD)) is not None}

    def shard_files(self) -> list[str]:
        return list_files(join(self.uri, WEBDATASET_DIR), self.storage_options, suffix=_SHARD[1])

    def orphan_shards(self, parquet_files: list[str]) -> list[str]:
        """Shards whose batch has no Parquet file."""
        names = {_name_between(f, _PART) for f in parquet_files}
        return [uri for uri in self.shard_files() if _name_between(uri, _SHARD) not in names]

    def temporaries(self) -> list[str]:
        """Half-written files a killed writer left behind."""
        return [uri for folder in (PARQUET_DIR, WEBDATASET_DIR)
                for uri in list_files(join(self.uri, folder), self.storage_options)
                if uri.rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX)]

    # -- writes ----------------------------------------------------------------------------------------
    def write_batch(self, name: str, table: pa.Table, shard: bytes | None = None,
                    on_retry: Callable[[], None] | None = None) -> str:
        """One batch: its shard first (when given), then its Parquet file; returns the Parquet file's URI."""
        if shard is not None:
            write_atomic(self.shard_uri(name), shard, self.storage_options, on_retry=on_retry)
        uri = self.parquet_uri(name)
        write_parquet(uri, table, self.storage_options, on_retry=on_retry)
        return uri

    def rewrite_batch(self, parquet_uri: str, keep: pa.Table, captioned_ids: list[str]) -> None:
        """A batch without some of its rows: the shard first (it must never hold a sample its Parquet file
        lacks), keeping the samples of ``captioned_ids``; a batch left empty is removed."""
        shard = self.shard_for(parquet_uri)
        fs, path = get_fs(shard, self.storage_options)
        if fs.exists(path):
            write_atomic(shard, tar_keeping(fs.cat_file(path), Counter(map(sample_key, captioned_ids))),
                         self.storage_options)
        if keep.num_rows == 0:
            remove(parquet_uri, self.storage_options)
            remove(shard, self.storage_options)
        else:
            write_parquet(parquet_uri, keep, self.storage_options)

    def write_json(self, uri: str, data: dict) -> str:
        """``data`` as indented JSON at ``uri``, atomically; returns the URI."""
        write_atomic(uri, json.dumps(data, indent=2, default=str).encode(), self.storage_options)
        return uri

    def write_summary(self, run_id: str, summary: dict) -> str:
        return self.write_json(self.summary_uri(run_id), summary)

    def write_plan(self, plan_id: str, plan: dict) -> str:
        return self.write_json(self.plan_uri(plan_id), plan)

    def latest_plan(self, accept: Callable[[dict], bool] | None = None) -> dict | None:
        """The newest plan written for this output (plan ids sort by time), or None; an unreadable one, or one
        ``accept`` refuses, is skipped with a warning (a plan is advice, never a reason for a run to fail)."""
        for uri in sorted(list_files(self.plans_uri(), self.storage_options, suffix=".json"), reverse=True):
            name = uri.rsplit(f"/{PLANS_DIR}/", 1)[-1]  # a plan lies in _plans/ itself, not in a scratch run
            if not name.startswith("plan-") or "/" in name:
                continue
            try:
                fs, path = get_fs(uri, self.storage_options)
                info = fs.info(path)
                if info.get("type") != "file" or (info.get("size") or 0) > MAX_PLAN_BYTES:
                    raise ValueError(f"not a regular file of at most {MAX_PLAN_BYTES} bytes")
                with fs.open(path, "rb") as f:
                    plan = json.loads(f.read(MAX_PLAN_BYTES + 1))
                if isinstance(plan, dict) and isinstance(plan.get("plan_id"), str) and (accept is None
                                                                                       or accept(plan)):
                    return plan
                raise ValueError("not a plan")
            except (OSError, ValueError, RecursionError) as exc:
                logger.warning("plan %s is unreadable (%s): skipped", public_uri(uri), str(exc)[:100])
        return None

    def remove(self, uri: str) -> None:
        remove(uri, self.storage_options)

    def remove_many(self, uris: list[str]) -> None:
        """Files of this output, in bulk (one DeleteObjects request per 1000 keys on S3); all must exist."""
        if uris:
            fs, _ = get_fs(uris[0], self.storage_options)
            paths = [get_fs(uri, self.storage_options)[1] for uri in uris]
            with_retries(uris[0], "removing", lambda: fs.rm(paths))  # S3's bulk delete may be repeated

    def read_bytes(self, file_uri: str) -> bytes:
        fs, path = get_fs(file_uri, self.storage_options)
        return fs.cat_file(path)

    # -- reads -----------------------------------------------------------------------------------------
    def read_table(self, file_uri: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file (``columns`` of it: each must be there).

        Raises:
            pyarrow.ArrowInvalid: not a Parquet file, a damaged one (naming it), or a column is missing.
            OSError: the store failed a call (raised as the store raised it: a transient failure is no verdict on
                the file).
        """
        fs, path = get_fs(file_uri, self.storage_options)
        with fs.open(path, "rb") as f:
            reads = _ReadsOf(f)
            try:
                parquet = pq.ParquetFile(reads)  # a file, not a dataset: half the time of pq.read_table per file
                missing = [c for c in columns or () if c not in parquet.schema_arrow.names]
                if missing:
                    raise pa.ArrowInvalid(f"no column {missing[0]!r} in {public_uri(file_uri)}")
                return parquet.read(columns=columns)
            except (pa.ArrowException, MemoryError):
                raise
            except Exception as exc:
                if reads.failed:
                    raise
                # The bytes arrived but do not decode (pyarrow says so as OSError, UnicodeDecodeError, ...).
                raise pa.ArrowInvalid(f"{public_uri(file_uri)} is damaged: {type(exc).__name__}: "
                                      f"{str(exc)[:200]}") from exc

    def keyframes(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        """``(sample key, JPEG)`` of the wanted keys' keyframes, each key once, streaming one tar member at a
        time (memory does not grow with the output)."""
        seen: set[str] = set()
        for uri in self.shard_files():
            fs, path = get_fs(uri, self.storage_options)
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    key = member.name.rsplit("/", 1)[-1][: -len(".jpg")]
                    if member.isfile() and member.name.endswith(".jpg") and key in wanted and key not in seen:
                        seen.add(key)
                        yield key, tar.extractfile(member).read()


__all__ = ["PARQUET_DIR", "WEBDATASET_DIR", "RUNS_DIR", "LEASE_FILE", "OutputStore", "batch_name", "sample_key",
           "parquet_bytes", "write_parquet", "webdataset_tar", "tar_keeping", "parquet_location"]
