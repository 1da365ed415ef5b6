"""Hostile inputs for compaction (jobs/compact.py, pipeline.compaction), each a defect a hostile review found
and that is now fixed. The promise: no row or WebDataset sample lost or doubled, whatever the output's spelling
or contents, and bad input answered with one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.compaction import compact, finish_compaction
from pipeline.io.output_store import OutputStore, webdataset_tar
from pipeline.resume import reconcile_and_scan
from test_compaction import ROOT, batch, contents, small_output


class Stop(Exception):
    """The compaction stopped here."""


def compact_stopped_after_merging(output: str, parquet_dir) -> None:
    """compact() of everything into one file, stopped (lease lost, process killed) once the merged Parquet file
    is written and before its inputs are removed."""
    def batches() -> int:
        return len([n for n in os.listdir(parquet_dir) if n.startswith("part-")])

    count = batches()

    def stop_once_merged():
        if batches() > count:
            raise Stop

    with pytest.raises(Stop):
        compact(output, target_mb=1000, threads=1, check=stop_once_merged)


def write_journal(store: OutputStore, journal) -> None:
    os.makedirs(os.path.dirname(store.compaction_journal_uri()), exist_ok=True)
    with open(store.compaction_journal_uri(), "w") as f:
        f.write(journal if isinstance(journal, str) else json.dumps(journal))


def run_compact_command(argv: list[str]) -> int:
    """jobs/compact.py in this process: its exit status (an exception escaping it is the defect)."""
    from jobs.compact import main

    return main(argv)


# -- the output's spelling: every listed file must match the names the store makes ------------------------
@pytest.mark.parametrize("spelling", ["out", "./out", "file:{root}/out", "file://localhost{root}/out"])
def test_an_output_spelled_relative_or_as_a_file_uri_keeps_every_webdataset_sample(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    store = small_output(str(tmp_path / "out"))
    before = contents(store)
    compact(spelling.format(root=tmp_path), target_mb=1000)
    reconcile_and_scan(spelling.format(root=tmp_path))
    assert contents(store) == before


def test_an_s3_output_given_with_user_info_keeps_every_webdataset_sample(s3_endpoint):
    import s3fs

    s3fs.S3FileSystem().mkdir("hostile-userinfo")
    small_output("s3://hostile-userinfo/out", batches=4)
    store = OutputStore("s3://hostile-userinfo/out")
    before = contents(store)
    compact("s3://AKIAEXAMPLE:hunter2@hostile-userinfo/out", target_mb=1000)
    reconcile_and_scan("s3://AKIAEXAMPLE:hunter2@hostile-userinfo/out")
    assert contents(store) == before


def test_a_killed_compaction_of_a_relative_path_is_finished_from_its_journal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = small_output("out", batches=3)
    compact_stopped_after_merging("out", tmp_path / "out" / "parquet")
    assert finish_compaction(store) == 3


# -- the journal -----------------------------------------------------------------------------------------
def test_a_deeply_nested_journal_is_dropped_like_any_damaged_one(tmp_path):
    store = small_output(str(tmp_path), batches=3)
    before = contents(store)
    write_journal(store, '{"groups": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert finish_compaction(store) == 0 and contents(store) == before
    assert not os.path.exists(store.compaction_journal_uri())


def test_a_journal_whose_merged_file_is_unreadable_removes_no_input(tmp_path):
    store = small_output(str(tmp_path), batches=3)
    inputs = store.parquet_files()
    compact_stopped_after_merging(str(tmp_path), tmp_path / "parquet")
    (merged,) = set(store.parquet_files()) - set(inputs)
    with open(merged, "wb") as f:
        f.write(b"PAR1 truncated")
    finish_compaction(store)
    assert set(inputs) <= set(store.parquet_files())


def test_a_journal_whose_merged_name_is_not_made_from_its_inputs_removes_nothing(tmp_path):
    store = small_output(str(tmp_path), batches=3)
    before = contents(store)
    write_journal(store, {"groups": [{"merged": "b00", "inputs": ["b01", "b02"]}]})
    finish_compaction(store)
    assert contents(store) == before


# -- what the parquet/ folder holds -----------------------------------------------------------------------
def test_a_parquet_file_not_named_as_a_batch_is_left_alone_and_the_rest_compacted(tmp_path):
    store = small_output(str(tmp_path), batches=3)
    pq.write_table(batch(["extra-1", "extra-2"]), str(tmp_path / "parquet" / "extra.parquet"))
    before = contents(store)
    compact(str(tmp_path), target_mb=1000)
    assert os.path.exists(tmp_path / "parquet" / "extra.parquet") and contents(store) == before


def test_a_file_with_a_column_of_another_type_is_merged_or_named_in_a_clear_error(tmp_path, capsys):
    store = small_output(str(tmp_path), batches=3)
    other = batch(["x1", "x2"])
    other = other.set_column(other.schema.get_field_index("num_frames"), "num_frames", pa.array([4, 4], pa.int64()))
    store.write_batch("zz", other)
    before = contents(store)
    status = run_compact_command([str(tmp_path), "--target-mb", "1000"])
    assert contents(store) == before or set(contents(store)[0]) == set(before[0])
    assert status == 0 or "part-zz.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"", b"not parquet at all"])
def test_a_corrupt_parquet_file_gets_one_clear_error_naming_it(tmp_path, capsys, damage):
    small_output(str(tmp_path), batches=3)
    (tmp_path / "parquet" / "part-zz.parquet").write_bytes(damage)
    assert run_compact_command([str(tmp_path)]) != 0
    assert "part-zz.parquet" in capsys.readouterr().err


# -- memory ----------------------------------------------------------------------------------------------
def test_merging_keyframe_shards_holds_memory_near_the_target(tmp_path):
    store = OutputStore(str(tmp_path))
    for b in range(12):
        ids = [f"v{b:02d}-{i}" for i in range(3)]
        store.write_batch(f"b{b:02d}", batch(ids), webdataset_tar([(i, {}, os.urandom(700_000)) for i in ids]))
    target_bytes = 4 * max(store.parquet_sizes().values())  # about four files (8 MB of shards) per group
    tracemalloc.start()
    try:
        compact(str(tmp_path), target_mb=target_bytes / 2**20, threads=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * target_bytes + (2 << 20)


# -- bad input to the command ----------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["", "s3://"])
def test_an_empty_output_is_refused_before_anything_is_written(s3_endpoint, tmp_path, monkeypatch, output):
    import pipeline.lease

    def no_lease(*args, **kwargs):
        raise AssertionError(f"took the lease of {args[0]!r}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline.lease, "OutputLease", no_lease)
    assert run_compact_command([output]) == 2
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output, options", [("weird://bucket/out", None), ("gs://bucket/out", None),
                                             ("s3://bucket/out", "{bogus_option: 1, secret: TOPSECRETVALUE}")])
def test_an_unusable_store_or_storage_option_is_one_line_error(tmp_path, capsys, output, options):
    argv = [output]
    if options:
        (tmp_path / "job.yaml").write_text(f"storage_options: {options}\n")
        argv += ["--config", str(tmp_path / "job.yaml")]
    assert run_compact_command(argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and "TOPSECRETVALUE" not in err


# -- the job path ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_compacting_an_output_given_with_user_info_keeps_its_keyframes(ray_local, s3_endpoint, tmp_path):
    import s3fs

    from helpers import job_config
    from pipeline.generated_videos import write_video
    from pipeline.runner import run_job

    s3fs.S3FileSystem().mkdir("hostile-job")
    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 96, 64, 8, 8, seed=i) for i in range(4)]
    (tmp_path / "list.txt").write_text("\n".join(videos) + "\n")
    out = "s3://AKIAEXAMPLE:hunter2@hostile-job/out"
    run_job(job_config(str(tmp_path / "list.txt"), out, output={"compact_after": True, "compact_target_mb": 1}))
    run_job(job_config(str(tmp_path / "list.txt"), out))
    members = contents(OutputStore("s3://hostile-job/out"))[1]
    assert len([m for m in members if m[0].endswith(".json")]) == 4


@pytest.mark.slow
def test_an_s3_output_without_credentials_is_one_line_error_without_the_url_password(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "compact.py"),
                           "s3://AKIAEXAMPLE:hunter2@no-bucket/out"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines()[-1].startswith("error: StorageError:"), done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
