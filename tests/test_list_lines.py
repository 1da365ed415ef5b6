"""Hostile list files read without Ray (the functions the reading tasks call): a line that is not a row becomes
an error row naming its line, with an id from its content; nothing else is lost and nothing aborts the job."""

import json

import pytest

from pipeline import schema as S
from pipeline.config import SourceConfig
from pipeline.io.list_lines import parse_list
from pipeline.io.sources import NormaliseRefs, stable_video_id


def video_refs(data: bytes, fmt: str, name: str = "/lists/l", **cfg) -> list[dict]:
    """The VideoRef rows the reading task makes of a list file's bytes."""
    table = parse_list(data, fmt, name)
    return NormaliseRefs(SourceConfig(input=name, **cfg), fmt, "/videos")(table).to_pylist()


def outcome(rows):
    return [(r[S.URI], r[S.ERROR_REASON]) for r in rows]


def test_a_bad_jsonl_line_is_an_error_row_naming_its_line_and_the_rest_run():
    lines = [json.dumps({"uri": "a.mp4", "start_s": 1, "video_id": 5}), "{not json",
             json.dumps({"uri": "b.mp4", "start_s": "x", "video_id": "b"}),  # a type change in two columns
             "", json.dumps([1, 2]), json.dumps({"uri": "c.mp4", "n": {"deep": [1]}, "flag": True}),
             '{"uri": "\xff.mp4"}']
    data = "\n".join(lines).encode().replace("\xff".encode(), b"\xff")  # the last line is not UTF-8
    rows = video_refs(data, "jsonl")
    assert outcome(rows) == [("/videos/a.mp4", None), ("", "bad_row"), ("/videos/b.mp4", "bad_bounds"),
                             ("", "bad_row"), ("/videos/c.mp4", None), ("", "bad_row")]
    assert rows[0][S.VIDEO_ID] == "5" and rows[0][S.START_S] == 1.0 and rows[2][S.VIDEO_ID] == "b"
    assert "line 2 of /lists/l is not valid JSON" in rows[1][S.ERROR] and "'{not json'" in rows[1][S.ERROR]
    assert "line 5 of /lists/l is an array, not a JSON object" in rows[3][S.ERROR]
    assert "line 7 of /lists/l is not UTF-8 text" in rows[5][S.ERROR]
    assert all(r[S.ERROR_STAGE] == "source" for r in rows if r[S.ERROR])
    assert (rows[4]["n"], rows[4]["flag"]) == ('{"deep": [1]}', "true")  # JSON values other than strings as text
    # The same line gives the same id wherever it is (a rerun skips it as done); another line another id.
    again = video_refs(b"\n\n" + "\n".join(lines[1:3]).encode(), "jsonl")
    assert again[0][S.VIDEO_ID] == rows[1][S.VIDEO_ID] and "line 3 of" in again[0][S.ERROR]
    assert len({r[S.VIDEO_ID] for r in rows}) == len(rows)


def test_malformed_csv_lines_are_error_rows_and_a_stray_quote_swallows_nothing():
    data = (b"uri,video_id,start_s\r\n"
            b"a.mp4,007,1.5\r\n"  # an id that looks like a number stays as written
            b"b.mp4,b,2,extra\r\n"  # one field too many
            b'"c\nd.mp4",cd,\r\n'  # a quoted field may span lines
            b'"e.mp4,e,3\n'  # a stray quote: pyarrow's reader stopped here
            b"f.mp4,f,4\n"
            b"\xff.mp4,g,5\n"
            b"h.mp4,h,\n")
    rows = video_refs(data, "csv")
    assert outcome(rows) == [("/videos/a.mp4", None), ("", "bad_row"), ("/videos/c\nd.mp4", None), ("", "bad_row"),
                             ("/videos/f.mp4", None), ("", "bad_row"), ("/videos/h.mp4", None)]
    assert rows[0][S.VIDEO_ID] == "007" and rows[6][S.START_S] is None
    assert "line 3 of /lists/l has 4 csv fields, the header has 3: 'b.mp4,b,2,extra'" in rows[1][S.ERROR]
    assert "line 6 of /lists/l has 1 csv field, the header has 3" in rows[3][S.ERROR]
    assert "line 8 of /lists/l is not UTF-8 text" in rows[5][S.ERROR]


def test_a_csv_header_naming_a_column_twice_is_refused_by_name():
    with pytest.raises(ValueError, match="names the column 'uri' twice"):
        parse_list(b"uri,uri\na.mp4,b.mp4\n", "csv", "l.csv")


@pytest.mark.parametrize("fmt, data", [
    ("txt", b"\xef\xbb\xbfa.mp4\nb.mp4\n"),
    ("csv", b"\xef\xbb\xbfuri\na.mp4\nb.mp4\n"),
    ("jsonl", b'\xef\xbb\xbf{"uri": "a.mp4"}\n{"uri": "b.mp4"}\n'),
    ("txt", b"a.mp4\r\nb.mp4\r\n"),
    ("csv", b"uri\r\na.mp4\r\nb.mp4\r\n"),
    ("jsonl", b'{"uri": "a.mp4"}\r\n{"uri": "b.mp4"}\r\n'),
])
def test_a_byte_order_mark_and_crlf_line_ends_are_not_part_of_any_uri(fmt, data):
    rows = video_refs(data, fmt)
    assert outcome(rows) == [("/videos/a.mp4", None), ("/videos/b.mp4", None)]
    assert rows[0][S.VIDEO_ID] == stable_video_id("/videos/a.mp4")


@pytest.mark.parametrize("fmt, data", [("txt", b""), ("csv", b""), ("jsonl", b""), ("csv", b"uri,tag\n"),
                                       ("csv", b"\n\n"), ("jsonl", b"\n \r\n"), ("txt", b"# only a comment\n")])
def test_empty_lists_are_zero_rows_not_a_crash(fmt, data):
    assert video_refs(data, fmt) == []


def test_a_line_longer_than_any_uri_is_an_error_row_not_a_row_every_stage_carries():
    huge = b"x" * (3 << 20)  # 3 MiB on one line
    for fmt, data in (("txt", huge + b"\na.mp4\n"), ("csv", b"uri\n" + huge + b"\na.mp4\n"),
                      ("jsonl", b'{"uri": "' + huge + b'"}\n{"uri": "a.mp4"}\n')):
        rows = video_refs(data, fmt)
        assert outcome(rows) == [("", "bad_row"), ("/videos/a.mp4", None)], fmt
        assert "bytes long, more than a list line may be" in rows[0][S.ERROR] and len(rows[0][S.ERROR]) < 300


def test_nul_bytes_and_deep_nesting_are_rows_or_error_rows():
    rows = video_refs(b'{"uri": "a\\u0000b.mp4"}\n' + b"[" * 100_000 + b"\n", "jsonl")
    assert rows[0][S.URI] == "/videos/a\x00b.mp4" and rows[0][S.ERROR] is None  # the read stage says bad_path
    assert rows[1][S.ERROR_REASON] == "bad_row"
    assert video_refs(b"uri\na\x00b.mp4\n", "csv")[0][S.URI] == "/videos/a\x00b.mp4"


def test_a_bad_line_quoting_credentials_does_not_store_them():
    rows = video_refs(b'{"uri": "s3://AKIA:very-secret-value@b/v.mp4", \n', "jsonl")
    assert rows[0][S.ERROR_REASON] == "bad_row" and "very-secret-value" not in rows[0][S.ERROR]


@pytest.mark.parametrize("data", [b"", b"a\n", b"a\nb", b"a\r\n\nb\n\n", "\u00fc/\u00f1.mp4\n# c\n".encode(),
                                  b"\xef\xbb\xbfx\n", b"\n\n", b"ok\n\xff\xfe broken\nok2\n", b"x" * (1 << 20) + b"y\nz"])
def test_a_txt_list_read_at_once_gives_the_rows_line_by_line_reading_gives(data):
    """A txt piece whose lines are all text is decoded in one step; the rows must be those of the line-by-line
    reading (which names the bad lines), row for row."""
    from pipeline.io.list_lines import BOM, _table, _txt_rows

    lines = (data[len(BOM):] if data.startswith(BOM) else data).split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    assert parse_list(data, "txt").equals(_table(["text"], _txt_rows(lines), "the list", 1))
