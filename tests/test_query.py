"""DuckDB queries over a small pipeline run: views, filtered exports, and comparing two runs."""

import json
import os

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline import schema as S
from pipeline.tools.query import CaptionQuery


def test_status_prefix_and_run_views(two_runs):
    root, first, _ = two_runs
    q = CaptionQuery([str(root / "run_a")])
    status = {(r["status"], r["error_stage"]): r["videos"] for r in q.view("status").to_pylist()}
    assert status == {("ok", None): 4, ("failed", "decode"): 1}
    prefixes = {r["prefix"].rsplit("/", 1)[-1]: (r["videos"], r["captioned"]) for r in q.view("prefixes").to_pylist()}
    assert prefixes == {"cam1": (3, 3), "cam2": (2, 1)}
    runs = q.view("runs").to_pylist()
    assert [(r["run_id"], r["videos"]) for r in runs] == [(first["run_id"], 5)]
    assert sum(r["videos"] for r in q.view("caption_length").to_pylist()) == 4


def test_slowest_and_flags_match_the_rows(two_runs):
    root, first, _ = two_runs
    q = CaptionQuery([str(root / "run_a")], limit=2)
    rows = q.select().to_pylist()
    by_time = sorted(rows, key=lambda r: -((r[S.DECODE_S] or 0) + (r[S.CAPTION_S] or 0)))
    assert [r["video_id"] for r in q.view("slowest").to_pylist()] == [r[S.VIDEO_ID] for r in by_time[:2]]
    flags = q.view("flags").to_pylist()[0]
    assert flags["captioned"] == 4
    assert flags["truncated"] == sum(bool(r[S.FLAG_TRUNCATED]) for r in rows) == first["this_run"]["flagged"][S.FLAG_TRUNCATED]
    assert flags["repetition"] == sum(bool(r[S.FLAG_REPETITION]) for r in rows)


def test_exports_parquet_jsonl_and_webdataset(two_runs, tmp_path):
    root, _, _ = two_runs
    q = CaptionQuery([str(root / "run_a")])
    where = "uri like '%/cam1/%'"
    assert q.export(str(tmp_path / "sub.parquet"), "parquet", where) == 3
    assert pq.read_table(tmp_path / "sub.parquet").num_rows == 3
    assert q.export(str(tmp_path / "train.jsonl"), "jsonl", "error is null") == 4
    lines = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert all(os.path.isfile(r["video"]) and r["caption"] for r in lines)
    assert q.export(str(tmp_path / "sub.tar"), "webdataset", where) == 3
    samples = list(wds.WebDataset([str(tmp_path / "sub.tar")], shardshuffle=False))
    assert len(samples) == 3 and all(json.loads(s["json"])["caption"] for s in samples)
    with pytest.raises(ValueError, match="export format"):
        q.export(str(tmp_path / "x"), "csv")


def test_compare_two_runs_on_video_id(two_runs):
    root, _, _ = two_runs
    q = CaptionQuery([str(root / "run_a")])
    pairs = q.compare([str(root / "run_b")], where="a.error is null").to_pylist()
    assert len(pairs) == 4
    assert all(p["prompt_a"] != p["prompt_b"] and p["model_a"] == p["model_b"] for p in pairs)
    assert not all(p["same"] for p in pairs)  # another prompt, other captions


def test_many_outputs_combine(two_runs):
    root, _, _ = two_runs
    q = CaptionQuery([str(root / "run_a"), str(root / "run_b")])
    assert q.sql("select count(*) as n, count(distinct run_id) as runs from captions").to_pylist() == [{"n": 10, "runs": 2}]


def test_query_command(two_runs, tmp_path):
    import subprocess
    import sys

    root, _, _ = two_runs
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda *a: subprocess.run([sys.executable, "jobs/query_captions.py", *a], cwd=repo,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    shown = run(str(root / "run_a"), "--view", "status")
    assert shown.returncode == 0 and "undecodable" in shown.stdout
    exported = run(str(root / "run_a"), "--export", "jsonl", "--where", "error is null", "--to", str(tmp_path / "o.jsonl"))
    assert exported.returncode == 0 and "wrote 4 rows" in exported.stdout
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4


def write_batch(out, ids, **extra):
    import pyarrow as pa

    from pipeline.config import OutputConfig
    from pipeline.sinks import ShardWriter

    n = len(ids)
    table = pa.table({S.VIDEO_ID: ids, S.URI: [f"/v/{i}.mp4" for i in ids], S.CAPTION: [f"caption {i}" for i in ids],
                      S.ERROR: pa.nulls(n, pa.string()), S.ERROR_STAGE: pa.nulls(n, pa.string()),
                      S.ERROR_REASON: pa.nulls(n, pa.string()), **extra})
    ShardWriter(OutputConfig(output=str(out)), run_id="r1")(table)


@pytest.fixture()
def mixed_output(tmp_path):
    """Two files whose extra list columns differ: ``rank`` is an integer in the file listed first and text in
    the second, and ``late`` exists only in the second (a reader that takes the first file's schema fails)."""
    from pipeline.io.output_store import batch_name

    first = next(ids for ids in (["a", "b", f"x{n}"] for n in range(100)) if batch_name(ids) < batch_name(["c"]))
    write_batch(tmp_path / "out", first, rank=[1, 2, 3])
    write_batch(tmp_path / "out", ["c"], rank=["third"], late=[True])
    return tmp_path / "out"


def test_files_with_different_extra_columns_are_read_together(mixed_output):
    rows = {r[S.VIDEO_ID]: r for r in CaptionQuery([str(mixed_output)]).select().to_pylist()}
    assert [(r["rank"], r["late"]) for k, r in sorted(rows.items()) if k != "c"] == [("1", None), ("2", None),
                                                                                      ("3", None)]
    assert (rows["c"]["rank"], rows["c"]["late"]) == ("third", True)


@pytest.mark.parametrize("where", ["1=1; copy (select 1) to '{out}'", "1=1) union all select * from captions where (1=1",
                                   "1=1 --", "(1=1"])
def test_where_accepts_one_expression_only(mixed_output, tmp_path, where):
    q = CaptionQuery([str(mixed_output)])
    with pytest.raises(ValueError, match="--where"):
        q.select(where.format(out=tmp_path / "pwned.csv"))
    assert not (tmp_path / "pwned.csv").exists()
    assert [r[S.VIDEO_ID] for r in q.select("caption like '%(%' or rank = '2'").to_pylist()] == ["b"]


def test_duckdb_reads_no_files_unless_free_sql_is_asked_for(mixed_output, tmp_path):
    import duckdb

    (tmp_path / "private.csv").write_text("secret\n42\n")
    peek = f"exists (select * from read_csv('{tmp_path / 'private.csv'}'))"
    with pytest.raises(duckdb.PermissionException):
        CaptionQuery([str(mixed_output)]).select(peek)
    free = CaptionQuery([str(mixed_output)], file_access=True)
    assert free.sql(f"select * from read_csv('{tmp_path / 'private.csv'}')").to_pylist() == [{"secret": 42}]


@pytest.mark.slow
def test_query_command_rejects_a_where_with_two_statements(mixed_output, tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = tmp_path / "written.csv"
    result = subprocess.run([sys.executable, "jobs/query_captions.py", str(mixed_output), "--where",
                             f"1=1; COPY (select 1) TO '{target}'"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "one SQL expression" in result.stderr
    assert not target.exists()


# -- bounds and clear errors (issue 22) -----------------------------------------------------------------------

ENDLESS = "(select sum(hash(range)) from range(1000000000000000)) > 0"  # days of work, no memory to speak of


def test_a_where_that_runs_too_long_is_stopped(mixed_output):
    import time

    from pipeline.tools.query import QueryTimeout

    q = CaptionQuery([str(mixed_output)], timeout_s=1)
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"longer than 1 s and was stopped \(--timeout-s\)"):
        q.select(ENDLESS)
    assert time.monotonic() - started < 120  # stopped, not run to its end (a loose bound: CI machines are slow)
    assert q.select("rank = '2'").num_rows == 1  # the connection still works, no interrupt left behind


def query_command(*args):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "jobs/query_captions.py", *map(str, args)], cwd=repo,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_query_command_times_out_and_names_bad_sql_and_missing_outputs(mixed_output, tmp_path):
    (empty := tmp_path / "empty" / "parquet").mkdir(parents=True)
    slow = query_command(mixed_output, "--where", ENDLESS, "--timeout-s", "1")
    assert slow.returncode == 1 and "longer than 1 s and was stopped" in slow.stderr, slow.stderr[-2000:]
    problems = {
        "bad sql": query_command(mixed_output, "--sql", "selec 1"),
        "unknown column": query_command(mixed_output, "--where", "no_such_column = 1"),
        "unknown view": query_command(mixed_output, "--view", "nope"),
        "missing": query_command(tmp_path / "nowhere"),
        "empty": query_command(empty),
        "bad limit": query_command(mixed_output, "--limit", "-1"),
        "bad timeout": query_command(mixed_output, "--timeout-s", "nan"),
    }
    for name, result in problems.items():
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
    assert "Parser Error: syntax error" in problems["bad sql"].stderr
    assert "no_such_column" in problems["unknown column"].stderr
    assert "unknown view 'nope'" in problems["unknown view"].stderr
    assert "nowhere/parquet: not found" in problems["missing"].stderr
    assert "no Parquet files in it" in problems["empty"].stderr
    assert "--limit: must be between 1 and" in problems["bad limit"].stderr


@pytest.mark.slow
def test_a_listing_reads_only_the_rows_it_shows(mixed_output):
    q = CaptionQuery([str(mixed_output)], timeout_s=5)
    # A hundred billion rows listed in a blink: only the first three are ever produced.
    assert q.sql("select * from range(100000000000)", max_rows=3).num_rows == 3
    q.sql("set threads = 1")  # a statement without a result
    shown = query_command(mixed_output, "--sql", "select * from range(100000000000)", "--limit", "2")
    assert shown.returncode == 0 and "... more rows" in shown.stdout, shown.stderr[-2000:]
