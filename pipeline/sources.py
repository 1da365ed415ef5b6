"""Video lists -> a lazy Ray Dataset of VideoRef rows (video_id, uri, start_s, end_s, extra columns).

List files are read by Ray Data's readers in tasks, never into the driver; only a bare prefix is
listed by the driver (one LIST per 1000 objects) and an Inter4K ``annotations.json`` (a single JSON
array, typically thousands of rows) is parsed there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import schema as S
from pipeline.config import VIDEO_EXTENSIONS, SourceConfig
from pipeline.storage import get_fs, is_local, join, list_files

logger = logging.getLogger(__name__)

READ_NUM_CPUS = 0.25
URI_CANDIDATES = ("uri", "path", "video", "url", "file", "filename")


def detect_format(uri: str) -> str:
    """The list format from the file name; ``prefix`` for anything that is not a known list file."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, fmt in ((".txt", "txt"), (".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".parquet", "parquet"), (".json", "annotations")):
        if name.endswith(suffix):
            return fmt
    return "prefix"


def stable_video_id(uri: str, start_s: float | None = None, end_s: float | None = None) -> str:
    """A short id derived from the URI (and clip bounds): the same input always gets the same id."""
    key = uri if start_s is None and end_s is None else f"{uri}|{start_s}|{end_s}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."


def _is_absolute(uri: str) -> bool:
    return "://" in uri or uri.startswith("/")


class NormaliseRefs:
    """Map a list's rows to the VideoRef columns: pick the URI column, resolve relative paths, derive ids,
    and (annotations) find the first existing ``{prefix}/{name}.{ext}``; a missing video becomes an
    error row of stage ``source``."""

    def __init__(self, cfg: SourceConfig, fmt: str, base: str, storage_options: dict | None) -> None:
        self.cfg = cfg
        self.fmt = fmt
        self.base = base
        self.storage_options = storage_options or {}

    def _uri_column(self, table: pa.Table) -> str:
        if self.fmt == "txt":
            return "text"
        if self.cfg.uri_column:
            S.require_columns(table.column_names, [self.cfg.uri_column], "source")
            return self.cfg.uri_column
        for name in URI_CANDIDATES:
            if name in table.column_names:
                return name
        raise KeyError(f"the video list has none of the columns {URI_CANDIDATES}; columns: {table.column_names} "
                       "(set source.uri_column)")

    def _resolve(self, raw: str) -> str:
        raw = raw.strip()
        return raw if _is_absolute(raw) else join(self.base, raw)

    def _find_annotation_video(self, name: str) -> tuple[str, str | None]:
        candidates = [join(self.base, f"{name}.{ext.lstrip('.')}") for ext in self.cfg.extensions]
        fs, _ = get_fs(candidates[0], self.storage_options)
        for uri in candidates:
            if fs.exists(get_fs(uri, self.storage_options)[1]):
                return uri, None
        extensions = list(self.cfg.extensions)
        return candidates[0], f"source: no video named {name!r} with extensions {extensions} under {self.base}"

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        errors: list[str | None] = [None] * n
        if self.fmt == "annotations":
            S.require_columns(table.column_names, [self.cfg.name_key], "source")
            names = [str(x) for x in table.column(self.cfg.name_key).to_pylist()]
            found = [self._find_annotation_video(name) for name in names]
            uris = [u for u, _ in found]
            errors = [e for _, e in found]
            ids = names
            rest = [c for c in table.column_names if c != self.cfg.name_key]
        else:
            if self.fmt == "txt":  # blank lines and '#' comments are not videos
                text = pc.utf8_trim_whitespace(table.column("text"))
                table = table.filter(pc.and_(pc.not_equal(text, ""), pc.invert(pc.starts_with(text, "#"))))
                n = table.num_rows
                errors = [None] * n
            uri_col = self._uri_column(table)
            uris = [self._resolve(str(u)) for u in table.column(uri_col).to_pylist()]
            ids = [None] * n
            rest = [c for c in table.column_names if c != uri_col]
        start = _float_column(table, S.START_S)
        end = _float_column(table, S.END_S)
        if self.cfg.id_column in table.column_names:
            given = table.column(self.cfg.id_column).to_pylist()
            ids = [str(g) if g is not None else i for g, i in zip(given, ids)]
        ids = [i if i else stable_video_id(u, s, e) for i, u, s, e in zip(ids, uris, start, end)]
        out = {
            S.VIDEO_ID: pa.array(ids, pa.string()),
            S.URI: pa.array(uris, pa.string()),
            S.START_S: pa.array(start, pa.float64()),
            S.END_S: pa.array(end, pa.float64()),
            S.ERROR: pa.array(errors, pa.string()),
            S.ERROR_STAGE: pa.array([S.STAGE_SOURCE if e else None for e in errors], pa.string()),
            S.ERROR_REASON: pa.array(["not_found" if e else None for e in errors], pa.string()),
        }
        for name in rest:
            if name not in out and name not in (self.cfg.id_column, S.START_S, S.END_S):
                out[name] = table.column(name)
        return pa.table(out)


def _float_column(table: pa.Table, name: str) -> list[float | None]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return pc.cast(table.column(name), pa.float64()).to_pylist()


def _from_table(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    step = max(1, rows_per_block)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)])


def _read_list(cfg: SourceConfig, fmt: str, storage_options: dict | None, rows_per_block: int) -> ray.data.Dataset:
    fs, path = get_fs(cfg.input, storage_options)
    # Reading a list is light work: a small CPU share keeps it schedulable beside the actor pools.
    light = {"filesystem": fs, "num_cpus": READ_NUM_CPUS}
    if fmt == "txt":
        return ray.data.read_text(path, **light)
    if fmt == "csv":
        return ray.data.read_csv(path, **light)
    if fmt == "jsonl":
        return ray.data.read_json(path, **light)  # Arrow's JSON reader takes one object per line
    if fmt == "parquet":
        return ray.data.read_parquet(path, **light)
    if fmt == "annotations":
        with fs.open(path, "rb") as f:
            items = json.load(f)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"{cfg.input}: expected a JSON list of objects like {{\"{cfg.name_key}\": \"973\"}}")
        rows = [_scalar_fields(i) for i in items]
        keys = list(dict.fromkeys(k for row in rows for k in row))  # entries may differ in their fields
        return _from_table(pa.table({k: [row.get(k) for row in rows] for k in keys}), rows_per_block)
    if fmt == "prefix":
        exts = tuple(f".{e.lstrip('.')}" for e in (cfg.extensions or VIDEO_EXTENSIONS))
        uris = [u for u in list_files(cfg.input, storage_options) if u.lower().endswith(exts)]
        if not uris:
            raise FileNotFoundError(f"no videos with extensions {list(exts)} under {cfg.input}")
        return _from_table(pa.table({"uri": pa.array(uris, pa.string())}), rows_per_block)
    raise ValueError(f"unknown list format {fmt!r}")


def _scalar_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Annotation entries keep their scalar fields (as the reference does); nested values become JSON text."""
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in item.items()}


def read_video_refs(
    cfg: SourceConfig, storage_options: dict | None = None, rows_per_block: int = 64
) -> ray.data.Dataset:
    """A lazy dataset of VideoRef rows in many small blocks, so decoding spreads over the actors.

    Raises:
        FileNotFoundError: the list file (or every video of a prefix) is missing.
    """
    fmt = detect_format(cfg.input) if cfg.format == "auto" else cfg.format
    if fmt != "prefix":
        fs, path = get_fs(cfg.input, storage_options)
        if not fs.exists(path):
            raise FileNotFoundError(f"video list {cfg.input} does not exist")
    base = cfg.videos_prefix or (_parent(cfg.input) if fmt != "prefix" else cfg.input)
    if is_local(base) and not base.startswith("/") and "://" not in base:
        base = posixpath.abspath(base)
    # File readers already split lists into many blocks; lists built in the driver are split here.
    ds = _read_list(cfg, fmt, storage_options, rows_per_block)
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    # An instance (not the class): stateless tasks, so existence checks of annotation names run in parallel.
    return ds.map_batches(NormaliseRefs(cfg, fmt, base, storage_options), batch_format="pyarrow",
                          num_cpus=READ_NUM_CPUS)
