"""End to end against a real S3 API on loopback: list and videos in a bucket, Parquet + WebDataset out to it."""

import io
import json
import os
import tarfile

import duckdb
import pyarrow.parquet as pq
import pytest
import s3fs
import webdataset as wds

from helpers import job_config
from pipeline import schema as S
from pipeline.runner import run_job
from pipeline.generated_videos import write_broken_files, write_video

GOOD = {"a.mp4": dict(codec="libx264"), "b.webm": dict(codec="libvpx-vp9"), "c.mkv": dict(codec="libx264"),
        "d.gif": dict(codec="gif")}
BAD = {"empty.mp4": ("decode", "empty"), "notes.mp4": ("decode", "undecodable"),
       "truncated.mp4": ("decode", "undecodable"), "missing.mp4": ("read", "not_found")}


@pytest.fixture(scope="module")
def s3_run(ray_local, s3_endpoint, tmp_path_factory):
    """One job over a bucket of good and bad videos; the tests below check what it wrote."""
    tmp_path = tmp_path_factory.mktemp("s3videos")
    fs = s3fs.S3FileSystem()
    bucket = "recaption-e2e"
    fs.mkdir(bucket)
    for i, (name, opts) in enumerate(GOOD.items()):
        local = write_video(str(tmp_path / name), 192, 144, 16, 8, seed=i, **opts)
        fs.put(local, f"{bucket}/videos/{name}")
    broken = write_broken_files(str(tmp_path / "broken"))
    for name, kind in (("empty.mp4", "empty"), ("notes.mp4", "text"), ("truncated.mp4", "truncated")):
        fs.put(broken[kind], f"{bucket}/videos/{name}")
    rows = [{"uri": f"s3://{bucket}/videos/{name}", "split": f"s{i}", "video_id": f"vid-{i}"}
            for i, name in enumerate(list(GOOD) + list(BAD))]
    fs.pipe(f"{bucket}/lists/videos.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    # Credentials given as fsspec storage options too (the endpoint comes from AWS_ENDPOINT_URL).
    options = {"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    summary = run_job(job_config(f"s3://{bucket}/lists/videos.jsonl", f"s3://{bucket}/out", storage_options=options))
    fs.invalidate_cache()
    return bucket, rows, summary


def read_output(fs, bucket):
    files = fs.glob(f"{bucket}/out/parquet/*.parquet")
    return pq.ParquetDataset(files, filesystem=fs).read()


def test_one_row_per_video_captions_and_errors(s3_run):
    bucket, rows, summary = s3_run
    fs = s3fs.S3FileSystem()
    table = read_output(fs, bucket)
    assert table.num_rows == len(rows)
    by_uri = {r[S.URI].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert sorted(by_uri) == sorted(list(GOOD) + list(BAD))
    for name in GOOD:
        row = by_uri[name]
        assert row[S.ERROR] is None and row[S.CAPTION], name
        assert row[S.NUM_FRAMES] == 4 and row[S.NUM_TOKENS] >= 1 and row[S.WIDTH] == 192
        assert row[S.MODEL].startswith("tiny@") and len(row[S.PROMPT_ID]) == 16
    assert by_uri["d.gif"][S.DECODER] == "pyav"
    for name, (stage, reason) in BAD.items():
        row = by_uri[name]
        assert row[S.CAPTION] is None and row[S.ERROR], name
        assert (row[S.ERROR_STAGE], row[S.ERROR_REASON]) == (stage, reason), name
    # Input ids and extra columns pass through.
    assert {r[S.VIDEO_ID] for r in by_uri.values()} == {r["video_id"] for r in rows}
    assert {r["split"] for r in by_uri.values()} == {r["split"] for r in rows}
    assert summary["this_run"]["ok"] == len(GOOD) and summary["this_run"]["failed"] == len(BAD)
    assert summary["this_run"]["failed_by_reason"] == {"decode/empty": 1, "decode/undecodable": 2, "read/not_found": 1}
    assert fs.exists(f"{bucket}/out/_runs/{summary['run_id']}.json")


def test_parquet_schema_pyarrow_and_duckdb(s3_run):
    bucket, rows, _ = s3_run
    fs = s3fs.S3FileSystem()
    captions = read_output(fs, bucket)
    for field in S.OUTPUT_SCHEMA:
        assert captions.schema.field(field.name).type == field.type, field.name
    # DuckDB queries the Arrow data read through s3fs (its httpfs extension is not available offline).
    counts = duckdb.sql("select error_stage, count(*) n from captions group by 1 order by 1 nulls first").fetchall()
    assert counts == [(None, 4), ("decode", 3), ("read", 1)]
    assert duckdb.sql("select count(distinct video_id) from captions").fetchall()[0][0] == len(rows)


def test_webdataset_shards_read_back_with_webdataset(s3_run, tmp_path):
    bucket, _, _ = s3_run
    fs = s3fs.S3FileSystem()
    local = []
    for key in fs.glob(f"{bucket}/out/webdataset/*.tar"):
        local.append(str(tmp_path / key.rsplit("/", 1)[-1]))
        fs.get(key, local[-1])
    samples = list(wds.WebDataset(local, shardshuffle=False).decode("rgb8"))
    captions = {r[S.VIDEO_ID]: r[S.CAPTION] for r in read_output(fs, bucket).to_pylist() if r[S.CAPTION]}
    assert {s["json"]["video_id"]: s["json"]["caption"] for s in samples} == captions
    for s in samples:
        assert s["jpg"].shape == (336, 336, 3)


def test_credentials_never_reach_outputs(s3_run):
    bucket, _, summary = s3_run
    assert summary["config"]["storage_options"] == {"key": "***", "secret": "***"}
    fs = s3fs.S3FileSystem()
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    for path in fs.find(f"{bucket}/out"):
        data = fs.cat_file(path)
        if path.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                data = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
        assert secret not in data, path


def test_query_reads_the_output_from_s3(s3_run, tmp_path):
    from pipeline.tools.query import CaptionQuery

    bucket, rows, _ = s3_run
    q = CaptionQuery([f"s3://{bucket}/out"])
    status = {(r["status"], r["error_stage"], r["error_reason"]): r["videos"] for r in q.view("status").to_pylist()}
    assert status == {("ok", None, None): 4, ("failed", "decode", "empty"): 1, ("failed", "decode", "undecodable"): 2,
                      ("failed", "read", "not_found"): 1}
    assert q.export(f"s3://{bucket}/exports/ok.jsonl", "jsonl", "error is null") == 4
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert len(fs.cat_file(f"{bucket}/exports/ok.jsonl").decode().splitlines()) == 4


def test_a_listing_sees_files_another_process_wrote_after_this_one_listed(s3_endpoint):
    """s3fs keeps its listings and find() does not replace them: the driver lists the output before a run and
    must still see (and open) what the workers wrote during it, and annotation names must resolve to it."""
    from pipeline.io.output_store import OutputStore
    from pipeline.io.sources import resolve_names

    bucket = "listing-cache"
    s3fs.S3FileSystem().mkdir(bucket)
    workers = s3fs.S3FileSystem(skip_instance_cache=True)  # another process: its own client and caches
    store = OutputStore(f"s3://{bucket}/out")
    store.write_batch("first", pq_table(["a"]))
    assert [os.path.basename(f) for f in store.parquet_files()] == ["part-first.parquet"]
    assert resolve_names(["x"], f"s3://{bucket}/videos", ("mp4",), None)[0][1] == "not_found"
    buffer = io.BytesIO()
    pq.write_table(pq_table(["b"]), buffer)
    workers.pipe(f"{bucket}/out/parquet/part-second.parquet", buffer.getvalue())
    workers.pipe(f"{bucket}/videos/x.mp4", b"video")
    files = store.parquet_files()
    assert [os.path.basename(f) for f in files] == ["part-first.parquet", "part-second.parquet"]
    assert store.read_table(files[1]).column(S.VIDEO_ID).to_pylist() == ["b"]
    assert resolve_names(["x"], f"s3://{bucket}/videos", ("mp4",), None)[0][1] is None


def pq_table(ids):
    import pyarrow as pa

    return pa.table({S.VIDEO_ID: ids, S.CAPTION: [f"caption {i}" for i in ids]})
