"""SQL over caption outputs with DuckDB: ready-made views, filtered exports, and two-run comparisons.

Object storage is read with pyarrow datasets through fsspec (DuckDB's own httpfs extension downloads at
run time and is unavailable offline); DuckDB then queries the Arrow table in memory. Outputs of many
runs can be combined; the table is always called ``captions`` (and ``other`` in a comparison). Every query
runs under a time limit (``timeout_s``): past it DuckDB is interrupted and :class:`QueryTimeout` raised.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from model.prompts import DEFAULT_RECAPTION_QUERY, DEFAULT_SYSTEM_PROMPT, get_template
from pipeline import schema as S
from pipeline.quality import CaptionFlagger
from pipeline.io.masking import mask_text
from pipeline.io.output_store import parquet_location, webdataset_tar, write_parquet
from pipeline.io.storage import get_fs, write_atomic

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("parquet", "jsonl", "webdataset")
DEFAULT_TIMEOUT_S = 300.0  # one query; a view over a million captions takes seconds


class QueryTimeout(Exception):
    """A query ran past its time limit and DuckDB stopped it."""


class NoOutput(FileNotFoundError):
    """An output named for querying holds no Parquet files (or does not exist)."""

VIEWS = {
    "status": """
        select case when error is null then 'ok' else 'failed' end as status, error_stage, error_reason,
               count(*) as videos
        from captions group by all order by videos desc""",
    "caption_length": """
        select cast(floor(len(string_split(trim(caption), ' ')) / 25) * 25 as integer) as words_from,
               count(*) as videos
        from captions where caption is not null group by 1 order by 1""",
    "prefixes": """
        select regexp_replace(uri, '/[^/]*$', '') as prefix, count(*) as videos, count(caption) as captioned
        from captions group by 1 order by videos desc, prefix""",
    "runs": """
        select run_id, model, prompt_id, count(*) as videos, count(caption) as captioned,
               min(created_at) as first_row, max(created_at) as last_row
        from captions group by all order by first_row""",
    "slowest": """
        select video_id, uri, decode_s, caption_s, coalesce(decode_s, 0) + coalesce(caption_s, 0) as total_s
        from captions order by total_s desc, video_id limit {limit}""",
    "flags": """
        select count(caption) as captioned, count(*) filter (where flag_empty) as empty,
               count(*) filter (where flag_truncated) as truncated,
               count(*) filter (where flag_repetition) as repetition,
               count(*) filter (where flag_prompt_echo) as prompt_echo,
               count(*) filter (where flag_short) as short
        from captions""",
}


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for files written by different runs: every column of any file (first-seen order); a column
    whose types differ takes the common type where Arrow can promote, else text (an id that is an integer in
    one list and a string in another)."""
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            known = types.get(field.name)
            if known is None or known == field.type:
                types[field.name] = field.type
                continue
            try:
                types[field.name] = pa.unify_schemas([pa.schema([(field.name, known)]), pa.schema([field])],
                                                     promote_options="permissive").field(field.name).type
            except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                types[field.name] = pa.string()
    return pa.schema(list(types.items()))


def read_captions(outputs: list[str], storage_options: dict | None = None, threads: int = 16) -> pa.Table:
    """Every row of one or many recaption outputs (output roots, their ``parquet/`` folders, or files).

    Files may differ in their extra columns (types and presence): the schema is unified over all of them.
    Outputs written before the quality flags existed get them computed here (nothing is rewritten).
    """
    datasets = []
    for output in outputs:
        location = parquet_location(output)
        fs, path = get_fs(location, storage_options)
        try:
            dataset = pds.dataset(path, filesystem=fs, format="parquet")
        except FileNotFoundError:
            raise NoOutput(f"{mask_text(location)}: not found (give a recaption output folder, its parquet/ "
                           "folder, or a Parquet file)") from None
        if not dataset.files:
            raise NoOutput(f"{mask_text(location)}: no Parquet files in it (no batch written there yet)")
        datasets.append(dataset)
    fragments = [fragment for dataset in datasets for fragment in dataset.get_fragments()]
    with ThreadPoolExecutor(max_workers=threads) as pool:  # footers only
        schema = unified_schema(list(pool.map(lambda fragment: fragment.physical_schema, fragments)))
    table = pds.dataset([pds.dataset(d.files, filesystem=d.filesystem, format="parquet", schema=schema)
                         for d in datasets], schema=schema).to_table()
    if S.FLAG_EMPTY not in table.column_names:
        prompt = get_template("vicuna").render(DEFAULT_RECAPTION_QUERY)
        table = CaptionFlagger([prompt, DEFAULT_SYSTEM_PROMPT, DEFAULT_RECAPTION_QUERY]).add_columns(table)
    return table


def check_where(where: str) -> str:
    """``where`` if it is one SQL expression: no statement separator, no comment, parentheses balanced, so
    it cannot close the ``where ( ... )`` it is put in or start another statement.

    Raises:
        ValueError: naming what is not allowed.
    """
    tokens = duckdb.tokenize(where)
    depth = 0
    for (start, kind), (end, _) in zip(tokens, tokens[1:] + [(len(where), None)]):
        if kind == duckdb.token_type.comment:
            raise ValueError(f"--where must be one SQL expression without comments: {where!r}")
        if kind != duckdb.token_type.operator:
            continue
        for char in where[start:end]:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == ";" or depth < 0:
                raise ValueError(f"--where must be one SQL expression (no ';', balanced parentheses): {where!r}")
    if depth:
        raise ValueError(f"--where has unbalanced parentheses: {where!r}")
    return where


class CaptionQuery:
    """A DuckDB connection with ``captions`` registered and the ready-made views created.

    DuckDB's own file access is off unless ``file_access`` is set: the tables are Arrow tables in memory
    and exports are written by pyarrow, so only free SQL (``--sql``) may want to read other files. Each query
    is interrupted after ``timeout_s`` seconds (None or 0: no limit).
    """

    def __init__(self, outputs: list[str], storage_options: dict | None = None, limit: int = 20,
                 file_access: bool = False, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.storage_options = storage_options
        self.timeout_s = timeout_s
        self.con = duckdb.connect()
        self.con.register("captions", read_captions(outputs, storage_options))
        for name, sql in VIEWS.items():
            self.con.execute(f"create view {name} as {sql.format(limit=int(limit))}")
        if not file_access:
            self.con.execute("set enable_external_access = false")

    def sql(self, query: str, max_rows: int | None = None) -> pa.Table:
        """The result of ``query`` (an empty table for a statement that returns nothing), its first
        ``max_rows`` rows only when given (what a listing shows: the rest is never materialised).

        Raises:
            QueryTimeout: it ran past ``timeout_s``.
            duckdb.Error: the SQL is wrong (parser, binder, catalog errors) or cannot run.
        """
        # DuckDB checks for an interrupt between tasks: a timer thread asks, the query raises InterruptException.
        timer = threading.Timer(self.timeout_s, self.con.interrupt) if self.timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            relation = self.con.sql(query)
            if relation is None:
                return pa.table({})
            return (relation if max_rows is None else relation.limit(max_rows)).to_arrow_table()
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran longer than {self.timeout_s:g} s and was stopped (--timeout-s)"
                               ) from None
        finally:
            if timer is not None:
                timer.cancel()

    def view(self, name: str, max_rows: int | None = None) -> pa.Table:
        if name not in VIEWS:
            raise KeyError(f"unknown view {name!r}; views: {sorted(VIEWS)}")
        return self.sql(f"select * from {name}", max_rows)

    def select(self, where: str | None = None, max_rows: int | None = None) -> pa.Table:
        return self.sql("select * from captions" + _where_clause(where), max_rows)

    def export(self, out_uri: str, fmt: str, where: str | None = None) -> int:
        """Write the rows matching ``where`` to ``out_uri``; returns how many.

        ``parquet``: the rows as they are; ``jsonl``: training-ready ``{"video", "caption", ...}`` lines of
        captioned rows; ``webdataset``: one tar of ``{key}.json`` samples of captioned rows.
        """
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
        rows = self.select(where)
        if fmt == "parquet":
            write_parquet(out_uri, rows, self.storage_options)
            return rows.num_rows
        captioned = rows.filter(pc.is_valid(rows.column(S.CAPTION))).select(
            [S.VIDEO_ID, S.URI, S.START_S, S.END_S, S.CAPTION])
        records = [{"video": r[S.URI], "caption": r[S.CAPTION], "video_id": r[S.VIDEO_ID],
                    "start_s": r[S.START_S], "end_s": r[S.END_S]} for r in captioned.to_pylist()]
        if fmt == "jsonl":
            data = "".join(json.dumps(r) + "\n" for r in records).encode()
        else:
            data = webdataset_tar([(r["video_id"], r, None) for r in records])
        write_atomic(out_uri, data, self.storage_options)
        return len(records)

    def compare(self, other_outputs: list[str], where: str | None = None, max_rows: int | None = None) -> pa.Table:
        """Captions of the same videos in two runs side by side (joined on ``video_id``)."""
        self.con.register("other", read_captions(other_outputs, self.storage_options))
        return self.sql(
            "select a.video_id, a.uri, a.model as model_a, b.model as model_b, a.prompt_id as prompt_a, "
            "b.prompt_id as prompt_b, a.caption as caption_a, b.caption as caption_b, "
            "a.caption is not distinct from b.caption as same "
            "from captions a join other b using (video_id)" + _where_clause(where) + " order by a.video_id",
            max_rows)


def _where_clause(where: str | None) -> str:
    """`` where (...)`` on lines of its own, after :func:`check_where`; empty for no condition."""
    return f" where (\n{check_where(where)}\n)" if where else ""
