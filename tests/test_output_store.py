"""The output store owns the output's layout: names, batch writes (shard first), listings, rewrites, keyframes."""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.output_store import (OutputStore, batch_name, parquet_location, sample_key, tar_keeping,
                                   webdataset_tar)


def table(ids):
    return pa.table({"video_id": ids, "error": [None] * len(ids), "caption": [f"caption {i}" for i in ids]})


def test_names_follow_one_pattern_and_map_back(tmp_path):
    store = OutputStore(str(tmp_path))
    name = batch_name(["b", "a"])
    assert name == batch_name(["a", "b"]) and len(name) == 16
    assert store.parquet_uri(name) == os.path.join(str(tmp_path), "parquet", f"part-{name}.parquet")
    assert store.shard_uri(name) == os.path.join(str(tmp_path), "webdataset", f"shard-{name}.tar")
    assert store.shard_for(store.parquet_uri(name)) == store.shard_uri(name)
    assert store.summary_uri("r1").endswith(os.path.join("_runs", "r1.json"))
    assert store.lease_uri().endswith("_lease.json")


def test_a_batch_is_written_whole_and_listed(tmp_path):
    store = OutputStore(str(tmp_path))
    shard = webdataset_tar([("a", {"caption": "x"}, b"\xff\xd8jpeg"), ("b/c.d", {"caption": "y"}, None)])
    uri = store.write_batch("n1", table(["a", "b/c.d"]), shard)
    assert store.parquet_files() == [uri] and store.shard_files() == [store.shard_uri("n1")]
    assert store.read_table(uri).column("video_id").to_pylist() == ["a", "b/c.d"]
    assert store.temporaries() == [] and store.orphan_shards(store.parquet_files()) == []
    with tarfile.open(store.shard_uri("n1")) as tar:
        names = tar.getnames()
    assert sorted(names) == ["a.jpg", "a.json", f"{sample_key('b/c.d')}.json"]  # keys never hold dots or slashes
    # A shard whose Parquet file was never written (a killed writer) is an orphan; hidden files are not batches.
    store.write_batch("n2", table(["z"]), webdataset_tar([("z", {}, None)]))
    os.remove(store.parquet_uri("n2"))
    (tmp_path / "parquet" / ".tmp-1-part-x.parquet").write_bytes(b"half")
    assert store.orphan_shards(store.parquet_files()) == [store.shard_uri("n2")]
    assert store.temporaries() == [str(tmp_path / "parquet" / ".tmp-1-part-x.parquet")]


def test_rewriting_a_batch_keeps_its_shard_in_step(tmp_path):
    store = OutputStore(str(tmp_path))
    uri = store.write_batch("n", table(["a", "b"]), webdataset_tar([("a", {}, b"1"), ("b", {}, b"2")]))
    store.rewrite_batch(uri, table(["b"]), captioned_ids=["b"])
    assert store.read_table(uri).column("video_id").to_pylist() == ["b"]
    with tarfile.open(store.shard_uri("n")) as tar:
        assert sorted(tar.getnames()) == ["b.jpg", "b.json"]
    store.rewrite_batch(uri, table([]), captioned_ids=[])  # nothing left: both files go
    assert store.parquet_files() == [] and store.shard_files() == []


def test_tar_keeping_keeps_the_first_samples_of_each_key():
    data = webdataset_tar([("a", {"n": 1}, None), ("a", {"n": 2}, None), ("b", {"n": 3}, b"j")])
    from collections import Counter

    kept = tar_keeping(data, Counter({"a": 1, "b": 1}))
    with tarfile.open(fileobj=io.BytesIO(kept)) as tar:
        members = [(m.name, json.loads(tar.extractfile(m).read()) if m.name.endswith(".json") else None)
                   for m in tar.getmembers()]
    assert sorted(members, key=lambda m: m[0]) == [("a.json", {"n": 1}), ("b.jpg", None), ("b.json", {"n": 3})]


def test_keyframes_stream_each_wanted_key_once(tmp_path):
    store = OutputStore(str(tmp_path))
    store.write_batch("n1", table(["a", "b"]), webdataset_tar([("a", {}, b"A1"), ("b", {}, b"B")]))
    store.write_batch("n2", table(["a"]), webdataset_tar([("a", {}, b"A2")]))
    got = list(store.keyframes({"a", "c"}))
    assert len(got) == 1 and got[0][0] == "a" and got[0][1] in (b"A1", b"A2")


def test_summaries_and_readers_locations(tmp_path):
    store = OutputStore(str(tmp_path))
    uri = store.write_summary("r1", {"run_id": "r1", "ok": 2})
    assert json.loads(open(uri).read()) == {"run_id": "r1", "ok": 2}
    assert "summary: " + uri in store.describe(webdataset=True, run_id="r1")
    root = str(tmp_path)
    assert parquet_location(root) == os.path.join(root, "parquet")
    assert parquet_location(os.path.join(root, "parquet")) == os.path.join(root, "parquet")
    assert parquet_location("s3://b/out/parquet/part-1.parquet") == "s3://b/out/parquet/part-1.parquet"
    assert parquet_location("s3://b/out") == "s3://b/out/parquet"
    pq.write_table(table(["q"]), tmp_path / "loose.parquet")
    assert parquet_location(str(tmp_path / "loose.parquet")) == str(tmp_path / "loose.parquet")
