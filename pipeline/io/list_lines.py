"""The rows of a txt, csv or jsonl video list, line by line: a line that is not a row becomes a *bad row* (why,
naming its line number) instead of an error that ends the job.

pyarrow's readers stop at the first bad line (invalid JSON, a value whose type changes between lines, a csv
line with too many fields, bytes that are not UTF-8) and guess column types per block, so two pieces of one
large list could disagree. Here every value is text: csv cells as written (empty cells null), JSON strings as
they are and other JSON values as their JSON text. The same line gives the same row however the file is split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from typing import Any, Callable

import pyarrow as pa

from pipeline.io.masking import mask_text

BAD_ROW = "_list_bad_row"  # why the line is not a row ("line 7 of s3://b/list.jsonl is not valid JSON ..")
BAD_ROW_DIGEST = "_list_bad_digest"  # sha1 of the line's bytes: the bad row's id comes from its content
INTERNAL_COLUMNS = (BAD_ROW, BAD_ROW_DIGEST)
# A longer line is a bad row: no URI is this long, and every later stage (and the output) would carry it.
MAX_LINE_BYTES = 1 << 20
SNIPPET_CHARS = 60  # how much of a bad line its message quotes
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors put at the start of a text file

_Bad = tuple[str, bytes]  # (why, the line's bytes)


def parse_list(data: bytes, fmt: str, name: str = "the list", first_line: int | Callable[[], int] = 1,
               header: bytes | None = None) -> pa.Table:
    """The rows of a list file's bytes: ``text`` lines (txt), or the columns of a csv, jsonl or Parquet file.

    ``data`` is a whole file or whole lines of it; ``first_line`` is the 1-based number of its first line
    (a callable is asked only if a line is bad: counting the lines before a piece costs a read). A csv piece
    after the first gets the file's ``header`` line. txt, csv and jsonl rows come with the columns
    :data:`BAD_ROW` and :data:`BAD_ROW_DIGEST`, set on the rows made of bad lines.

    Raises:
        ValueError: the file as a whole is unusable (a csv header that is not UTF-8 or names a column twice,
            a Parquet file that is not one).
    """
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{name} is not a readable Parquet file: {exc}") from exc
    if fmt not in ("txt", "csv", "jsonl"):
        raise ValueError(f"not a list file format: {fmt!r}")
    if first_line == 1 and data.startswith(BOM):
        data = data[len(BOM):]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the last newline ends the last line; it does not start another
    if fmt == "txt" and (not lines or max(map(len, lines)) <= MAX_LINE_BYTES):
        try:  # every line is text: one decode for the piece, not a Python step per line
            texts = data.decode("utf-8").split("\n")[:len(lines)]
        except UnicodeDecodeError:
            pass  # the bad lines are found and named line by line
        else:
            return pa.table({"text": pa.array(texts, pa.string()), BAD_ROW: pa.nulls(len(texts), pa.string()),
                             BAD_ROW_DIGEST: pa.nulls(len(texts), pa.string())})
    if fmt == "csv":
        columns, rows = _csv_rows(lines, header, name)
    else:
        columns, rows = (["text"], _txt_rows(lines)) if fmt == "txt" else ([], _jsonl_rows(lines))
    return _table(columns, rows, name, first_line)


def _table(columns: list[str], rows: list[tuple[int, dict[str, str | None] | _Bad]], name: str,
           first_line: int | Callable[[], int]) -> pa.Table:
    """Rows (line index, columns or why the line is bad) in line order -> a table of text columns: ``columns``
    (the csv header: there even without rows) and every key a row has."""
    rows.sort(key=lambda r: r[0])
    any_bad = any(isinstance(r, tuple) for _, r in rows)
    base = (first_line() if callable(first_line) else first_line) if any_bad else 0
    keys = list(dict.fromkeys([*columns, *(k for _, r in rows if isinstance(r, dict) for k in r)]))
    good = [r if isinstance(r, dict) else {} for _, r in rows]
    out = {k: pa.array([r.get(k) for r in good], pa.string()) for k in keys}
    out[BAD_ROW] = pa.array([None if isinstance(r, dict) else f"line {base + index} of {name} {r[0]}"
                             for index, r in rows], pa.string())
    out[BAD_ROW_DIGEST] = pa.array([None if isinstance(r, dict) else hashlib.sha1(r[1]).hexdigest()
                                    for _, r in rows], pa.string())
    return pa.table(out)


def _snippet(raw: bytes) -> str:
    """The start of a bad line as its message quotes it (credentials masked)."""
    text = raw[:SNIPPET_CHARS * 4].decode("utf-8", errors="replace").strip()
    return mask_text(repr(text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "")))


def _decoded(raw: bytes) -> str | _Bad:
    """A line as text, or why it cannot be one (too long, not UTF-8)."""
    if len(raw) > MAX_LINE_BYTES:
        return (f"is {len(raw)} bytes long, more than a list line may be ({MAX_LINE_BYTES} bytes)", raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"is not UTF-8 text (byte {exc.start + 1} is {raw[exc.start]:#04x}): {_snippet(raw)}", raw)


def _txt_rows(lines: list[bytes]) -> list[tuple[int, dict[str, str | None] | _Bad]]:
    rows: list[tuple[int, dict[str, str | None] | _Bad]] = []
    for index, raw in enumerate(lines):
        text = _decoded(raw)
        rows.append((index, {"text": text} if isinstance(text, str) else text))
    return rows


def _json_text(value: Any) -> str | None:
    """A JSON value as a list cell: strings as they are, null as null, anything else as its JSON text."""
    kind = type(value)
    if value is None or kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float and math.isfinite(value):
        return repr(value)  # what json.dumps writes, without its pure-Python encoder (most of a parse's time)
    return json.dumps(value, ensure_ascii=False)


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _jsonl_rows(lines: list[bytes]) -> list[tuple[int, dict[str, str | None] | _Bad]]:
    rows: list[tuple[int, dict[str, str | None] | _Bad]] = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue  # blank lines (and a lone "\r") between objects are no rows
        text = _decoded(raw)
        if isinstance(text, tuple):
            rows.append((index, text))
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append((index, (f"is not valid JSON ({exc.msg} at column {exc.colno}): {_snippet(raw)}", raw)))
            continue
        except RecursionError:
            rows.append((index, (f"nests too deeply to be a list row: {_snippet(raw)}", raw)))
            continue
        if not isinstance(item, dict):
            kind = _JSON_KINDS.get(type(item), type(item).__name__)
            rows.append((index, (f"is {kind}, not a JSON object: {_snippet(raw)}", raw)))
            continue
        rows.append((index, {k: _json_text(v) for k, v in item.items()}))
    return rows


def _csv_header(raw: bytes, name: str) -> list[str]:
    """The column names of a csv header line.

    Raises:
        ValueError: the line is not UTF-8, or names a column twice (which column would a row's value be?).
    """
    text = _decoded(raw.removeprefix(BOM).rstrip(b"\r\n"))
    if isinstance(text, tuple):
        raise ValueError(f"{name}: the csv header {text[0]}")
    fields = next(csv.reader([text]), [])
    seen: set[str] = set()
    for field in fields:
        if field in seen:
            raise ValueError(f"{name}: the csv header names the column {field!r} twice")
        seen.add(field)
    return fields


def _csv_record(header: list[str], fields: list[str], raw: bytes) -> dict[str, str | None] | _Bad:
    if len(fields) != len(header):
        count = f"{len(fields)} csv field" + ("s" if len(fields) != 1 else "")
        return (f"has {count}, the header has {len(header)}: {_snippet(raw)}", raw)
    return {k: (v if v != "" else None) for k, v in zip(header, fields)}


def _is_blank(fields: list[str]) -> bool:
    return not fields or len(fields) == 1 and not fields[0].strip()


def _csv_rows(lines: list[bytes], header_line: bytes | None,
              name: str) -> tuple[list[str], list[tuple[int, dict[str, str | None] | _Bad]]]:
    """csv records (a quoted field may span lines) under the header: the file's first line that is not blank,
    or ``header_line``. A record with the wrong number of fields that spans several lines (a stray quote
    swallows the lines after it) is read again line by line, so the lines it swallowed are rows of their
    own, not lost inside one bad row."""
    skip = 0
    if header_line is None:
        skip = next((i + 1 for i, raw in enumerate(lines) if raw.strip()), 0)
        if not skip:
            return [], []
        header_line = lines[skip - 1]
    header = _csv_header(header_line, name)
    rows: list[tuple[int, dict[str, str | None] | _Bad]] = []
    texts = ["\n"] * skip  # the lines up to the header: blank to the reader
    for index in range(skip, len(lines)):
        text = _decoded(lines[index])
        if isinstance(text, tuple):
            rows.append((index, text))
            text = ""  # the reader sees a blank line in its place
        texts.append(text + "\n")
    reader = csv.reader(texts)
    start = 0  # the index of the first line of the next record
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over the csv module's size limit
            rows.append((start, (f"is not a csv row ({exc}): {_snippet(lines[start])}", lines[start])))
            start = reader.line_num
            continue
        first, start = start, reader.line_num
        if _is_blank(fields):
            continue
        if len(fields) == len(header) or start - first == 1:
            rows.append((first, _csv_record(header, fields, lines[first])))
            continue
        for index in range(first, start):  # a stray quote: every line it swallowed on its own
            alone = next(csv.reader([texts[index]]), [])
            if not _is_blank(alone):
                rows.append((index, _csv_record(header, alone, lines[index])))
    return header, rows
