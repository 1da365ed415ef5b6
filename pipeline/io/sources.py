"""Video lists -> a lazy Ray Dataset of VideoRef rows (video_id, uri, start_s, end_s, extra columns).

txt, csv, jsonl and Parquet lists are read by light tasks with bounded retries that stream small Arrow
blocks (the driver holds references, not rows); a large list file is split over several tasks (byte
ranges moved to line boundaries, or Parquet row groups). An Inter4K ``annotations.json`` (one JSON array)
is parsed in a task too, which lists the videos' folder once to resolve every name. Only a bare prefix is
listed by the driver (one LIST per 1000 objects).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import schema as S
from pipeline.config import VIDEO_EXTENSIONS, SourceConfig
from pipeline.io.list_lines import BAD_ROW, BAD_ROW_DIGEST, INTERNAL_COLUMNS, parse_list
from pipeline.io.masking import public_uri
from pipeline.done_set import hash_ids
from pipeline.resources import LIGHT_NUM_CPUS
from pipeline.skip import LIST_PIECE
from pipeline.io.storage import (StorageError, RetryPolicy, count_newlines, find_fresh, get_fs, is_local, join,
                                 list_files, object_info, read_block, read_bytes, unstrip, with_retries)

logger = logging.getLogger(__name__)

READ_NUM_CPUS = LIGHT_NUM_CPUS  # reading a list is light work: it must fit beside the actor pools
URI_CANDIDATES = ("uri", "path", "video", "url", "file", "filename")


class VideoListError(OSError):
    """The video list could not be read (a transient failure that outlasted the retries, or no access)."""


class BadVideoList(VideoListError, ValueError):
    """The video list as a whole cannot be used (no URI column, a csv header naming a column twice, a Parquet
    file that is not one); a bad line is an error row instead."""


def _list_error(exc: "ray.exceptions.RayTaskError") -> Exception:
    """What a failed list-reading task means to the caller: a read failure or an unusable list, with a one-line
    message (not the task's traceback); any other failure as it was."""
    cause = exc.as_instanceof_cause()
    if isinstance(cause, StorageError):
        return VideoListError(f"could not read the video list: {cause}")
    if isinstance(cause, (KeyError, ValueError)):  # raised by the list code itself with a message for the user
        original = getattr(exc, "cause", None) or cause
        message = original.args[0] if original.args and isinstance(original.args[0], str) else str(original)
        return BadVideoList(f"the video list cannot be used: {message.strip().splitlines()[-1]}")
    return exc


def detect_format(uri: str) -> str:
    """The list format from the file name; ``prefix`` for anything that is not a known list file."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, fmt in ((".txt", "txt"), (".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".parquet", "parquet"), (".json", "annotations")):
        if name.endswith(suffix):
            return fmt
    return "prefix"


def stable_video_id(uri: str, start_s: Any = None, end_s: Any = None) -> str:
    """A short id derived from the URI without its credentials (and the clip bounds): the same input always
    gets the same id, and rotating a key in a signed URI does not change it."""
    uri = public_uri(uri)
    key = uri if start_s is None and end_s is None else f"{uri}|{start_s}|{end_s}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def parse_seconds(value: Any) -> float | None:
    """A clip bound in seconds: a number or numeric text; blank is None.

    Raises:
        ValueError: anything else (``1:30``, ``abc``), or a negative or non-finite number.
    """
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    seconds = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a time in seconds >= 0")
    return seconds


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."


def _is_absolute(uri: str) -> bool:
    return "://" in uri or uri.startswith("/")


class NormaliseRefs:
    """Map a list's rows to the VideoRef columns: pick the URI column, resolve relative paths, derive ids,
    and (annotations) take the video each name was resolved to when the list was read. A row that names no video, has
    clip bounds that are not seconds, or (annotations) names a missing video becomes an error row of stage
    ``source``: one bad line never aborts the job."""

    def __init__(self, cfg: SourceConfig, fmt: str, base: str) -> None:
        self.cfg = cfg
        self.fmt = fmt
        self.base = base

    def _uri_columns(self, table: pa.Table) -> list[str]:
        """The columns a row's URI is taken from, first non-blank wins (JSONL rows may differ in their keys)."""
        if self.fmt == "txt":
            return ["text"]
        if self.cfg.uri_column:
            S.require_columns(table.column_names, [self.cfg.uri_column], "source")
            return [self.cfg.uri_column]
        present = [name for name in URI_CANDIDATES if name in table.column_names]
        if not present:
            columns = [c for c in table.column_names if c not in INTERNAL_COLUMNS]
            raise KeyError(f"the video list has none of the columns {URI_CANDIDATES}; columns: {columns} "
                           "(set source.uri_column)")
        return present

    def _resolve(self, raw: str) -> str:
        raw = raw.strip()
        return raw if _is_absolute(raw) else join(self.base, raw)

    def __call__(self, table: pa.Table) -> pa.Table:
        bad_lines = _raw_column(table, BAD_ROW)
        if self.fmt == "txt":  # blank lines and '#' comments are not videos (a bad line is a row: its text is null)
            text = pc.utf8_trim_whitespace(table.column("text"))
            video = pc.and_(pc.not_equal(text, ""), pc.invert(pc.starts_with(text, "#")))
            table = table.filter(pc.or_kleene(video, pc.is_valid(table.column(BAD_ROW))))
            bad_lines = _raw_column(table, BAD_ROW)
        n = table.num_rows
        failures: list[tuple[str, str] | None] = [None] * n  # (reason, message) per row
        ids: list[str | None] = [None] * n
        if self.fmt == "annotations":
            S.require_columns(table.column_names, [self.cfg.name_key], "source")
            names = [str(x) for x in table.column(self.cfg.name_key).to_pylist()]
            uris = table.column(_RESOLVED_URI).to_pylist()
            failures = [None if r is None else (r, m) for r, m in
                        zip(*(table.column(c).to_pylist() for c in (_RESOLVE_REASON, _RESOLVE_ERROR)))]
            ids = list(names)
            consumed = [self.cfg.name_key, _RESOLVED_URI, _RESOLVE_REASON, _RESOLVE_ERROR]
        elif all(b is not None for b in bad_lines):  # only bad lines (or no rows): no URI column to look for
            consumed, uris = [], [""] * n
        else:
            consumed = self._uri_columns(table)
            raw = _coalesce([table.column(c).to_pylist() for c in consumed])
            uris = [self._resolve(str(u)) if u is not None else "" for u in raw]
            failures = [None if u is not None else
                        ("no_uri", f"source: the list row has no video URI (looked in {consumed})") for u in raw]
        start, end, bound_errors = _bounds_columns(table)
        failures = [f or b for f, b in zip(failures, bound_errors)]
        digests = _raw_column(table, BAD_ROW_DIGEST)
        for k, message in enumerate(bad_lines):
            if message is not None:  # a line that is not a row: its id comes from its bytes, so reruns skip it
                failures[k], ids[k], uris[k] = ("bad_row", f"source: {message}"), \
                    stable_video_id(f"bad-line:{digests[k]}"), ""
                start[k] = end[k] = None
        if self.cfg.id_column in table.column_names:
            given = table.column(self.cfg.id_column).to_pylist()
            ids = [i if _blank(g) else str(g) for g, i in zip(given, ids)]
        raw_start, raw_end = _raw_column(table, S.START_S), _raw_column(table, S.END_S)
        for k in range(n):
            if ids[k]:
                continue
            if uris[k] and bound_errors[k] is None:
                ids[k] = stable_video_id(uris[k], start[k], end[k])
            else:
                ids[k] = _row_id(table, k, uris[k], raw_start[k], raw_end[k])
        out = {
            S.VIDEO_ID: pa.array(ids, pa.string()),
            S.URI: pa.array(uris, pa.string()),
            S.START_S: pa.array(start, pa.float64()),
            S.END_S: pa.array(end, pa.float64()),
            S.ERROR: pa.array([f[1] if f else None for f in failures], pa.string()),
            S.ERROR_STAGE: pa.array([S.STAGE_SOURCE if f else None for f in failures], pa.string()),
            S.ERROR_REASON: pa.array([f[0] if f else None for f in failures], pa.string()),
        }
        for name in table.column_names:
            if name not in out and name not in consumed and name not in (self.cfg.id_column, S.START_S, S.END_S) \
                    and name not in INTERNAL_COLUMNS:
                out[name] = table.column(name)
        return pa.table(out)


def _blank(value: Any) -> bool:
    """No id given: null, empty text or NaN (a float id column with gaps)."""
    return value is None or value == "" or isinstance(value, float) and math.isnan(value)


def _coalesce(columns: list[list[Any]]) -> list[Any]:
    """Row-wise first value that is not null or blank."""
    return [next((v for v in values if v is not None and str(v).strip()), None) for values in zip(*columns)]


def _raw_column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _bounds_columns(table: pa.Table) -> tuple[list[float | None], list[float | None], list[tuple[str, str] | None]]:
    """Clip bounds in seconds, and a ``bad_bounds`` error for each row whose bounds are not usable."""
    if S.START_S not in table.column_names and S.END_S not in table.column_names:
        return [None] * table.num_rows, [None] * table.num_rows, [None] * table.num_rows
    starts, ends, errors = [], [], []
    for raw_start, raw_end in zip(_raw_column(table, S.START_S), _raw_column(table, S.END_S)):
        try:
            start, end = parse_seconds(raw_start), parse_seconds(raw_end)
            if start is not None and end is not None and end <= start:
                raise ValueError(f"end {end} is not after start {start}")
            starts.append(start), ends.append(end), errors.append(None)
        except (TypeError, ValueError) as exc:
            starts.append(None), ends.append(None)
            errors.append(("bad_bounds", f"source: clip bounds start_s={raw_start!r}, end_s={raw_end!r}: {exc}"))
    return starts, ends, errors


def _row_id(table: pa.Table, index: int, uri: str, raw_start: Any, raw_end: Any) -> str:
    """An id for a row that names no usable video: from what the row says, so reruns find it again."""
    if uri:
        return stable_video_id(uri, f"bad:{raw_start!r}", f"bad:{raw_end!r}")
    row = {k: v for k, v in table.slice(index, 1).to_pylist()[0].items() if k not in INTERNAL_COLUMNS}
    return stable_video_id("row:" + json.dumps(row, sort_keys=True, default=str))


def _slices(table: pa.Table, step: int) -> list[pa.Table]:
    """Consecutive slices of ``step`` rows (one empty slice for an empty table, so its columns still show)."""
    return [table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)]


class _Prepare:
    """What the reading tasks do to the rows they read before cutting them into blocks: normalise them into
    VideoRef rows, then ``keep`` (the job drops rows already done there), so that the rows never pass through
    Ray Data tasks of their own (thousands of small tasks that keep the stages after them waiting)."""

    def __init__(self, normalise: "NormaliseRefs", keep=None) -> None:
        self.normalise, self.keep = normalise, keep

    def __call__(self, table: pa.Table) -> pa.Table:
        refs = self.normalise(table)
        return self.keep(refs) if self.keep is not None else refs


def _blocks(table: pa.Table, rows_per_block: int, total_pieces: int = 1) -> list[pa.Table]:
    """A piece's prepared rows in blocks of ``rows_per_block`` rows, or larger so that all ``total_pieces``
    together make about ``MAX_LIST_BLOCKS`` at most."""
    return _slices(table, max(1, rows_per_block, -(-table.num_rows * total_pieces // MAX_LIST_BLOCKS)))


def _read_list(cfg: SourceConfig, fmt: str, base: str, storage_options: dict | None, rows_per_block: int,
               retry: RetryPolicy, prepare: _Prepare) -> ray.data.Dataset:
    if fmt in ("txt", "csv", "jsonl", "parquet"):
        # Read in a light task with the same bounded retries as videos (through Ray Data's file readers a
        # transient store failure can end as a list of zero rows instead of an error, and its Parquet reader
        # lists files in a 1-CPU task that a small machine's actor pools leave no room for), split into many
        # small blocks so decoding spreads over the decode actors. The driver holds block references, not rows.
        try:
            files = _parquet_files(cfg.input, storage_options, retry) if fmt == "parquet" else [cfg.input]
            pieces = list_pieces(files, fmt, storage_options, retry)
            streams = [_read_list_blocks.options(num_cpus=READ_NUM_CPUS).remote(
                chunk, fmt, storage_options, retry, rows_per_block, len(pieces), prepare) for chunk in pieces]
            return ray.data.from_arrow_refs([block for stream in streams for block in stream])
        except StorageError as exc:
            raise VideoListError(f"could not read the video list: {exc}") from exc
        except ray.exceptions.RayTaskError as exc:
            raise _list_error(exc) from exc
    if fmt == "annotations":
        # Parsed in a task too, which also lists the videos' folder once (not three lookups per name).
        try:
            blocks = _read_annotation_blocks.options(num_cpus=READ_NUM_CPUS).remote(
                cfg.input, cfg.name_key, base, tuple(cfg.extensions), storage_options, retry, rows_per_block, prepare)
            return ray.data.from_arrow_refs(list(blocks))
        except ray.exceptions.RayTaskError as exc:
            raise _list_error(exc) from exc
    if fmt == "prefix":
        exts = tuple(f".{e.lstrip('.')}" for e in (cfg.extensions or VIDEO_EXTENSIONS))
        uris = [u for u in list_files(cfg.input, storage_options) if u.lower().endswith(exts)]
        if not uris:
            raise FileNotFoundError(f"no videos with extensions {list(exts)} under {cfg.input}")
        return ray.data.from_arrow(_blocks(prepare(pa.table({"uri": pa.array(uris, pa.string())})), rows_per_block))
    raise ValueError(f"unknown list format {fmt!r}")


MAX_LIST_BLOCKS = 2000  # a list of millions of rows becomes at most this many blocks


def _parquet_files(uri: str, storage_options: dict | None, retry: RetryPolicy) -> list[str]:
    """A Parquet list: the file itself, or every ``*.parquet`` file under a folder (looked up with retries)."""
    if object_info(uri, storage_options, retry).get("type") != "directory":
        return [uri]

    def find() -> list[str]:
        fs, path = get_fs(uri, storage_options)
        return sorted(unstrip(fs, p, uri) for p in find_fresh(fs, path) if p.endswith(".parquet")
                      and not p.rsplit("/", 1)[-1].startswith((".", "_")))

    files = with_retries(uri, "listing", find, retry)
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {public_uri(uri)}")
    return files


LIST_PIECE_BYTES = 32 << 20  # a larger list file is read by several tasks, one piece of about this size each
MAX_READ_TASKS = 256


def list_pieces(files: list[str], fmt: str, storage_options: dict | None, retry: RetryPolicy = RetryPolicy(),
                piece_bytes: int | None = None) -> list[list[dict]]:
    """How to read list files in parallel: the pieces of each read task, in list order.

    A piece is ``{"uri"}`` (a whole file), ``{"uri", "offset", "length"}`` (a byte range of a txt, jsonl or
    csv file, moved to line boundaries when read; a csv piece also reads the header line) or ``{"uri",
    "row_groups"}`` (Parquet). A folder of Parquet files is spread over tasks file by file; one large file
    is split by byte ranges or row groups.
    """
    if len(files) > 1:
        per_task = -(-len(files) // min(len(files), MAX_READ_TASKS))
        return [[{"uri": uri} for uri in files[i:i + per_task]] for i in range(0, len(files), per_task)]
    uri, piece_bytes = files[0], piece_bytes or LIST_PIECE_BYTES
    size = int(object_info(uri, storage_options, retry).get("size") or 0)
    if size <= piece_bytes:
        return [[{"uri": uri}]]
    if fmt != "parquet":
        return [[{"uri": uri, "offset": offset, "length": min(piece_bytes, size - offset)}]
                for offset in range(0, size, piece_bytes)]

    def row_group_bytes() -> list[int]:
        import pyarrow.parquet as pq

        fs, path = get_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            return [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]

    pieces: list[list[dict]] = []
    group: list[int] = []
    group_bytes = 0
    for index, nbytes in enumerate(with_retries(uri, "reading the footer of", row_group_bytes, retry)):
        if group and group_bytes + nbytes > piece_bytes:
            pieces.append([{"uri": uri, "row_groups": group}])
            group, group_bytes = [], 0
        group.append(index)
        group_bytes += nbytes
    return pieces + ([[{"uri": uri, "row_groups": group}]] if group else [])


def _read_piece(piece: dict, fmt: str, storage_options: dict | None, retry: RetryPolicy) -> pa.Table | None:
    """The rows of one piece; None for a byte range that holds no line (all of it belonged to the line
    before)."""
    uri = piece["uri"]
    if "row_groups" in piece:
        def read_groups() -> pa.Table:
            import pyarrow.parquet as pq

            fs, path = get_fs(uri, storage_options)
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).read_row_groups(piece["row_groups"])

        return with_retries(uri, "reading", read_groups, retry)
    name = public_uri(uri)
    if "offset" not in piece:
        return parse_list(read_bytes(uri, storage_options, retry), fmt, name)
    offset = piece["offset"]
    data = read_block(uri, offset, piece["length"], storage_options, retry)
    if offset == 0:
        return parse_list(data, fmt, name)
    if not data.strip():
        return None
    # The piece starts after the first newline at or after `offset` (fsspec's read_block): its first line is
    # that newline's line + 1. Counted only when a line here is bad, as it reads the file up to the piece.
    first_line = lambda: count_newlines(uri, offset, storage_options, retry) + 2  # noqa: E731
    header = read_block(uri, 0, 1, storage_options, retry) if fmt == "csv" else None  # names every piece's columns
    return parse_list(data, fmt, name, first_line, header)


@ray.remote(num_returns="streaming")
def _read_list_blocks(pieces: list[dict], fmt: str, storage_options: dict | None, retry: RetryPolicy,
                      rows_per_block: int, total_pieces: int, prepare: _Prepare):
    """Pieces of list files (txt, csv, jsonl or Parquet), each read with bounded retries and prepared, as a
    stream of small blocks (about ``MAX_LIST_BLOCKS`` at most over all ``total_pieces``). Rows that
    ``prepare`` drops make no block; a task whose rows were all dropped yields one empty block (the columns)."""
    prepared, yielded = None, False
    for piece in pieces:
        table = _read_piece(piece, fmt, storage_options, retry)
        if table is None:
            continue
        prepared = _prepare_piece(prepare, table, json.dumps(piece, sort_keys=True))
        if prepared.num_rows:
            for block in _blocks(prepared, rows_per_block, total_pieces):
                yield block  # not `yield from`: Ray's streaming generators need a plain yield
            yielded = True
    if not yielded and prepared is not None:
        yield prepared  # every row was dropped: one empty block, so the dataset still has its columns


def _prepare_piece(prepare: _Prepare, table: pa.Table, piece: str) -> pa.Table:
    """``prepare(table)`` for one piece of the list: what it counts is the piece's count (a piece Ray reads again,
    to rebuild a block lost with its node, is counted once)."""
    token = LIST_PIECE.set(int(hash_ids([piece])[0]))
    try:
        return prepare(table)
    finally:
        LIST_PIECE.reset(token)


_RESOLVED_URI, _RESOLVE_REASON, _RESOLVE_ERROR = "_resolved_uri", "_resolve_reason", "_resolve_error"


@ray.remote(num_returns="streaming")
def _read_annotation_blocks(uri: str, name_key: str, base: str, extensions: tuple[str, ...],
                            storage_options: dict | None, retry: RetryPolicy, rows_per_block: int, prepare: _Prepare):
    """An Inter4K-style ``annotations.json`` (one JSON array), parsed here rather than in the driver, each
    name resolved to its video (:func:`resolve_names`), prepared, as a stream of small blocks."""
    items = json.loads(read_bytes(uri, storage_options, retry))
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{public_uri(uri)}: expected a JSON list of objects like {{\"{name_key}\": \"973\"}}")
    rows = [_scalar_fields(i) for i in items]
    del items
    keys = list(dict.fromkeys(k for row in rows for k in row))  # entries may differ in their fields
    table = pa.table({k: [row.get(k) for row in rows] for k in keys})
    del rows
    if name_key in table.column_names:  # else NormaliseRefs says which field is missing
        found = resolve_names([str(x) for x in table.column(name_key).to_pylist()], base, extensions,
                              storage_options, retry)
        for index, column in enumerate((_RESOLVED_URI, _RESOLVE_REASON, _RESOLVE_ERROR)):
            table = table.append_column(column, pa.array([f[index] for f in found], pa.string()))
    for block in _blocks(_prepare_piece(prepare, table, uri), rows_per_block):
        yield block


def resolve_names(names: list[str], base: str, extensions: tuple[str, ...], storage_options: dict | None,
                  retry: RetryPolicy = RetryPolicy()) -> list[tuple[str, str | None, str | None]]:
    """``(uri, error reason, error message)`` per annotation name: the first ``{base}/{name}.{ext}`` that
    exists, from one listing of ``base`` for all names; else the first candidate with a ``not_found`` error,
    or, when the folder could not be listed, the listing's error for every name."""
    fs, root = get_fs(base, storage_options)
    root = root.rstrip("/")

    def listing() -> set[str]:
        if not fs.exists(root):
            return set()
        return {p[len(root) + 1:] for p in find_fresh(fs, root) if p.startswith(root + "/")}

    try:
        present, listing_error = with_retries(base, "listing", listing, retry), None
    except StorageError as exc:
        present, listing_error = set(), (exc.reason, f"source: {exc}")
    suffixes = [ext.lstrip(".") for ext in extensions]
    out = []
    for name in names:
        keys = [f"{name.strip('/')}.{ext}" for ext in suffixes]
        hit = next((k for k in keys if k in present), None)
        if hit is not None:
            out.append((join(base, hit), None, None))
        elif listing_error is not None:
            out.append((join(base, keys[0]), *listing_error))
        else:
            out.append((join(base, keys[0]), "not_found", f"source: no video named {name!r} with extensions "
                                                           f"{list(extensions)} under {public_uri(base)}"))
    return out


def _scalar_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Annotation entries keep their scalar fields (as the reference does); nested values become JSON text."""
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in item.items()}


def read_video_refs(
    cfg: SourceConfig, storage_options: dict | None = None, rows_per_block: int = 64,
    retry: RetryPolicy = RetryPolicy(), keep: Callable[[pa.Table], pa.Table] | None = None,
) -> ray.data.Dataset:
    """A dataset of VideoRef rows in many small blocks, so decoding spreads over the actors.

    ``keep`` filters the rows where they are read, before they are cut into blocks (the job drops the videos
    already done: a rerun makes blocks only of what is left). Without ``cfg.limit`` the list has been read, and
    ``keep`` applied to every row, when this returns (the dataset holds the blocks' references). With it, the
    first ``limit`` videos of the list are taken first and ``keep`` applies to them (a lazy stage after the limit).

    Raises:
        FileNotFoundError: the list file (or every video of a prefix) is missing.
        VideoListError: the list could not be looked up or read (a transient failure outlasted the retries,
            or access was refused).
    """
    fmt = detect_format(cfg.input) if cfg.format == "auto" else cfg.format
    if fmt != "prefix":
        try:
            object_info(cfg.input, storage_options, retry)
        except StorageError as exc:
            if exc.reason == "not_found":
                raise FileNotFoundError(f"video list {public_uri(cfg.input)} does not exist") from exc
            raise VideoListError(f"could not read the video list: {exc}") from exc
    base = cfg.videos_prefix or (_parent(cfg.input) if fmt != "prefix" else cfg.input)
    if is_local(base) and not base.startswith("/") and "://" not in base:
        base = posixpath.abspath(base)
    normalise = NormaliseRefs(cfg, fmt, base)
    if not cfg.limit:
        return _read_list(cfg, fmt, base, storage_options, rows_per_block, retry, _Prepare(normalise, keep))
    # After normalisation: comments and blank lines are not videos, so --limit counts videos.
    ds = _read_list(cfg, fmt, base, storage_options, rows_per_block, retry, _Prepare(normalise)).limit(cfg.limit)
    return ds.map_batches(keep, batch_format="pyarrow", num_cpus=READ_NUM_CPUS) if keep is not None else ds
