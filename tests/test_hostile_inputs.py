"""A list written by a careless or hostile user: impossible paths, bounds that are not seconds, rows without a
video, lines that are not csv rows, credentials in URIs and in storage options. The job finishes, every distinct
input is one row with a clear stage and reason, a rerun finds them all done, and no secret reaches the output,
the run summary or the worker logs."""

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from helpers import job_config
from pipeline import schema as S
from pipeline.runner import run_job
from pipeline.generated_videos import write_video

URI_SECRET = "uri-secret-Zq81"
OPTION_SECRET = "option-secret-Hw27"


@pytest.fixture(scope="module")
def hostile_run(ray_local, s3_endpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    good = write_video(str(root / "good.mp4"), 160, 120, 12, 12, seed=1)
    (root / "folder.mp4").mkdir()
    rows = {
        "good": (good, ""),
        "under_file": (good + "/inner.mp4", ""),
        "long_name": (str(root / ("n" * 300 + ".mp4")), ""),
        "folder": (str(root / "folder.mp4"), ""),
        "bad_bounds": (good, "1:30"),
        "no_uri": ("", ""),
        "credentials": (f"s3://AKIAEXAMPLE:{URI_SECRET}@some-bucket/v.mp4", ""),
    }
    lines = ["uri,start_s,label"] + [f"{uri},{start},{label}" for label, (uri, start) in rows.items()]
    lines.append(f"{good},,good-again")  # the same video a second time
    lines.append(f"{good},,too,many,fields")  # not a row of this csv: before, pyarrow's reader ended the job
    (root / "list.csv").write_bytes(("\ufeff" + "\n".join(lines) + "\n").encode() + b"\xff\xfe,,not-utf8\n")
    options = {"key": "AKIAOPTIONS", "secret": OPTION_SECRET, "config_kwargs": {"retries": {"max_attempts": 1}}}
    out = root / "out"
    config = job_config(str(root / "list.csv"), str(out), storage_options=options,
                        retry={"attempts": 2, "backoff_s": 0.01})
    summary = run_job(config)
    table = pa.concat_tables([pq.read_table(f) for f in glob.glob(str(out / "parquet" / "*.parquet"))])
    rows = {r["label"] or " ".join(r[S.ERROR].split(" ")[1:3]): r for r in table.to_pylist()}  # bad lines: "line N"
    return out, summary, rows, config


def test_every_bad_row_is_one_error_row_and_the_job_finishes(hostile_run):
    _, summary, rows, _ = hostile_run
    assert set(rows) == {"good", "under_file", "long_name", "folder", "bad_bounds", "no_uri", "credentials",
                         "line 10", "line 11"}
    assert rows["good"][S.ERROR] is None and rows["good"][S.CAPTION]
    expected = {"under_file": ("read", "bad_path"), "long_name": ("read", "bad_path"),
                "folder": ("read", "not_a_file"), "bad_bounds": ("source", "bad_bounds"),
                "no_uri": ("source", "no_uri"), "line 10": ("source", "bad_row"), "line 11": ("source", "bad_row"),
                # read without the URI's credentials (the bucket does not exist on the test endpoint)
                "credentials": ("read", "not_found")}
    assert {k: (rows[k][S.ERROR_STAGE], rows[k][S.ERROR_REASON]) for k in expected} == expected
    assert "has 5 csv fields, the header has 3" in rows["line 10"][S.ERROR]
    assert "is not UTF-8 text" in rows["line 11"][S.ERROR]
    assert summary["this_run"]["videos"] == 9 and summary["this_run"]["duplicates_skipped"] == 1
    assert summary["output_total"]["videos"] == 9


def test_a_rerun_finds_every_row_done_bad_lines_included(hostile_run):
    out, _, _, config = hostile_run
    rerun = run_job(config)
    assert rerun["this_run"]["videos"] == 0 and rerun["output_total"]["videos"] == 9 and rerun["complete"]


def test_no_secret_in_rows_shards_summary_or_worker_logs(hostile_run):
    out, _, rows, _ = hostile_run
    assert rows["credentials"][S.URI] == "s3://some-bucket/v.mp4"
    for secret in (URI_SECRET, OPTION_SECRET):
        assert secret not in repr(rows), secret
        for path in glob.glob(str(out / "_runs" / "*.json")) + glob.glob(str(out / "webdataset" / "*.tar")):
            assert secret.encode() not in open(path, "rb").read(), (secret, path)
        for sample in wds.WebDataset(glob.glob(str(out / "webdataset" / "*.tar")), shardshuffle=False):
            assert secret.encode() not in sample["json"]
    logs = glob.glob("/tmp/ray/session_latest/logs/*")
    leaked = [p for p in logs if os.path.isfile(p) and URI_SECRET.encode() in open(p, "rb").read()]
    assert not leaked, leaked
