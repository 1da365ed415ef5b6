"""Compaction merges small batch files into large ones and never loses or duplicates a row, whatever moment it
is stopped at: the next reconcile (any job's, or the next compaction's) finishes or undoes what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from pipeline import schema as S
from pipeline.compaction import compact, finish_compaction, merged_name, plan_groups
from pipeline.io.output_store import OutputStore, webdataset_tar
from pipeline.io.storage import get_fs
from pipeline.resume import reconcile_and_scan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(ids: list[str], failed: set[str] = frozenset(), drop: str | None = None) -> pa.Table:
    """Full output rows (``drop``: a column an older version did not write)."""
    n = len(ids)
    columns = {field.name: pa.nulls(n, field.type) for field in S.OUTPUT_SCHEMA}
    columns[S.VIDEO_ID] = pa.array(ids, pa.string())
    columns[S.URI] = pa.array([f"s3://videos/{i}.mp4" for i in ids], pa.string())
    columns[S.CAPTION] = pa.array([None if i in failed else f"caption of {i}" for i in ids], pa.string())
    columns[S.ERROR] = pa.array(["broken" if i in failed else None for i in ids], pa.string())
    columns[S.MODEL] = pa.array(["tiny"] * n, pa.string())
    columns[S.PROMPT_ID] = pa.array(["p1"] * n, pa.string())
    columns[S.CREATED_AT] = pa.array([datetime(2026, 1, 1, tzinfo=timezone.utc)] * n, S.OUTPUT_SCHEMA.field(
        S.CREATED_AT).type)
    table = pa.table(columns, schema=S.OUTPUT_SCHEMA)
    return table.drop_columns([drop]) if drop else table


def small_output(root: str, batches: int = 9, per_batch: int = 3) -> OutputStore:
    store = OutputStore(root)
    for b in range(batches):
        ids = [f"v{b:02d}-{i}" for i in range(per_batch)]
        failed = {ids[0]} if b % 4 == 0 else set()
        store.write_batch(f"b{b:02d}", batch(ids, failed, drop=S.FRAME_INDICES if b == 1 else None),
                          webdataset_tar([(i, {"caption": i}, b"jpeg" + i.encode()) for i in ids if i not in failed]))
    return store


def largest(store: OutputStore) -> int:
    """The largest Parquet file or shard of the output, in bytes (a tar is at least 10 KiB: its padding)."""
    return max([*store.batch_sizes().values(), *store.shard_sizes().values()])


def contents(store: OutputStore) -> tuple[list[tuple], list[tuple[str, bytes]]]:
    """Every row (as sorted tuples of id, caption, error) and every shard member (name, bytes), sorted."""
    rows = []
    for uri in store.parquet_files():
        t = store.read_table(uri, columns=[S.VIDEO_ID, S.CAPTION, S.ERROR])
        rows += list(zip(*(t.column(c).to_pylist() for c in t.column_names)))
    members = []
    for uri in store.shard_files():
        fs, path = get_fs(uri)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return sorted(rows), sorted(members)


def test_small_files_are_merged_to_the_target_size_with_every_row_and_sample_once(tmp_path):
    store = small_output(str(tmp_path))
    before = contents(store)
    sizes = store.parquet_sizes()
    target_mb = 3.5 * largest(store) / 2**20  # three or four batches per merged batch
    stats = compact(str(tmp_path), target_mb=target_mb)
    assert stats["files_before"] == 9 and stats["files_after"] == len(store.parquet_files()) < 9
    assert stats["rows_merged"] == sum(len(store.read_table(u)) for u in store.parquet_files()
                                       if u not in sizes) > 0
    assert contents(store) == before  # same rows, same keyframes and captions, nothing twice
    assert store.orphan_shards(store.parquet_files()) == [] and store.temporaries() == []
    assert not os.path.exists(store.compaction_journal_uri())
    merged = [u for u in store.parquet_files() if u not in sizes]
    assert S.FRAME_INDICES in store.read_table(merged[0]).column_names  # an older file's rows are widened
    # Compacting again changes nothing that is already large; the output's state reads the same.
    _, state = reconcile_and_scan(str(tmp_path))
    assert sorted(state.done_ids(retry_errors=True).to_pylist()) == sorted(r[0] for r in before[0] if r[2] is None)
    again = compact(str(tmp_path), target_mb=target_mb)
    assert contents(store) == before and again["files_after"] <= stats["files_after"]


def test_an_output_on_s3_is_compacted_through_the_same_calls(s3_endpoint):
    import s3fs

    s3fs.S3FileSystem().mkdir("compaction")
    store = small_output("s3://compaction/out", batches=5)
    before = contents(store)
    assert len(store.parquet_sizes()) == 5 and all(n > 0 for n in store.parquet_sizes().values())
    stats = compact("s3://compaction/out", target_mb=1000)
    assert stats["files_after"] == len(store.parquet_files()) == 1 and contents(store) == before
    assert reconcile_and_scan("s3://compaction/out")[0]["compacted_inputs"] == 0


def test_grouping_keeps_large_batches_and_never_merges_one_alone():
    parquet_only = {name: (size, 0) for name, size in {"a": 10, "b": 10, "c": 100, "d": 10, "e": 95, "f": 10}.items()}
    assert plan_groups(parquet_only, 25) == [["a", "b"], ["d", "f"]]  # c and e stay as they are
    assert plan_groups({"a": (10, 0)}, 25) == [] and plan_groups({}, 25) == []
    assert plan_groups({"a": (30, 0), "b": (40, 0)}, 25) == []  # each at the target already
    assert all(len(g) > 1 for g in plan_groups({str(i): (7, 0) for i in range(10)}, 20))
    # Shards count too: keyframes make a batch's shard far larger than its Parquet file.
    assert plan_groups({"a": (1, 12), "b": (1, 12), "c": (1, 12)}, 25) == [["a", "b"]]
    assert plan_groups({"a": (1, 30), "b": (1, 1), "c": (1, 1)}, 25) == [["b", "c"]]
    assert merged_name(["b1", "b2"]) == merged_name(["b1", "b2"]) != merged_name(["b1", "b3"])


class Stop(Exception):
    """The compaction stopped here (its lease lost, the process killed)."""


@pytest.mark.parametrize("stop_at", range(0, 8))
def test_a_compaction_stopped_at_any_check_loses_and_duplicates_nothing(tmp_path, stop_at):
    store = small_output(str(tmp_path))
    before = contents(store)
    target_mb = 2.5 * largest(store) / 2**20
    calls = []

    def check():
        calls.append(1)
        if len(calls) > stop_at:
            raise Stop

    with pytest.raises(Stop):
        compact(str(tmp_path), target_mb=target_mb, threads=1, check=check)
    # What a reader may see now holds every row (maybe some twice, until the next reconcile).
    assert set(contents(store)[0]) == set(before[0])
    repaired, state = reconcile_and_scan(str(tmp_path))
    assert contents(store) == before, repaired
    assert state.num_rows == len(before[0]) and not os.path.exists(store.compaction_journal_uri())
    compact(str(tmp_path), target_mb=target_mb)
    assert contents(store) == before


def test_inputs_half_removed_when_killed_are_finished_from_the_journal(tmp_path):
    store = small_output(str(tmp_path), batches=4)
    before = contents(store)
    inputs = store.parquet_files()
    compact(str(tmp_path), target_mb=1000)  # everything into one file...
    (merged,) = store.parquet_files()
    # ...then the state of a kill after the merged file and one input's removal: the others are back.
    journal = {"groups": [{"merged": store.batch_of(merged), "inputs": [store.batch_of(u) for u in inputs]}]}
    assert journal["groups"][0]["merged"] == merged_name(journal["groups"][0]["inputs"])
    for uri in inputs[1:]:
        name = store.batch_of(uri)
        ids = [f"v{int(name[1:]):02d}-{i}" for i in range(3)]
        failed = {ids[0]} if int(name[1:]) % 4 == 0 else set()
        store.write_batch(name, batch(ids, failed), webdataset_tar([(i, {}, b"x") for i in ids if i not in failed]))
    with open(store.compaction_journal_uri(), "w") as f:
        json.dump(journal, f)
    assert finish_compaction(store) == 3
    assert store.parquet_files() == [merged] and contents(store) == before
    assert not os.path.exists(store.compaction_journal_uri())


def test_a_damaged_journal_is_dropped_and_removes_nothing(tmp_path):
    store = small_output(str(tmp_path), batches=3)
    before = contents(store)
    os.makedirs(os.path.dirname(store.compaction_journal_uri()), exist_ok=True)
    for text in ["{not json", json.dumps({"groups": [{"merged": 3, "inputs": "b00"}]}), json.dumps([1])]:
        with open(store.compaction_journal_uri(), "w") as f:
            f.write(text)
        assert finish_compaction(store) == 0 and contents(store) == before
        assert not os.path.exists(store.compaction_journal_uri())


@pytest.mark.slow
def test_the_compact_command_holds_the_lease_and_reports(tmp_path):
    small_output(str(tmp_path / "out"))
    lease = OutputStore(str(tmp_path / "out")).lease_uri()
    run = [sys.executable, os.path.join(ROOT, "jobs", "compact.py"), str(tmp_path / "out"), "--target-mb", "0.1"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["files_before"] == 9 and report["files_after"] < 9 and not os.path.exists(lease)
    missing = subprocess.run([*run[:2], str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not a recaption output" in missing.stderr


@pytest.mark.slow
def test_a_job_that_compacts_at_its_end_leaves_one_file_and_resumes_from_it(ray_local, tmp_path):
    from helpers import job_config
    from pipeline.generated_videos import write_video
    from pipeline.runner import run_job

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 96, 64, 8, 8, seed=i) for i in range(4)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + [str(tmp_path / "missing.mp4")]) + "\n")
    out = str(tmp_path / "out")
    summary = run_job(job_config(str(listing), out, output={"compact_after": True, "compact_target_mb": 1}))
    assert summary["this_run"]["files_written"] >= 2 and summary["compaction"]["groups"] == 1
    assert summary["output_total"] == {"videos": 5, "ok": 4, "failed": 1, "parquet_files": 1}
    store = OutputStore(out)
    assert len(store.parquet_files()) == len(store.shard_files()) == 1
    rows, members = contents(store)
    assert len({r[0] for r in rows}) == len(rows) == 5 and sum(r[2] is None for r in rows) == 4
    assert len([m for m in members if m[0].endswith(".json")]) == 4
    again = run_job(job_config(str(listing), out))
    assert again["this_run"]["videos"] == 0 and again["this_run"]["skipped_already_done"] == 5
