"""DuckDB queries over a small pipeline run: views, filtered exports, and comparing two runs."""

import json
import os

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline import schema as S
from pipeline.query import CaptionQuery


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
