"""The output's state at scale: partitions by id hash made by tasks, finished ids looked up by hash then compared as
strings, and the same answers whether the scan runs as Ray tasks or in this process."""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from pipeline import resume
from pipeline import schema as S
from pipeline.done_set import DonePart, DoneSet, hash_ids
from pipeline.io.output_store import OutputStore
from pipeline.progress import Progress
from pipeline.resume import _Tasks, reconcile_and_scan, scan_output

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def write_rows(out: str, name: str, rows: list[tuple[str, bool, int]], model: str = "m", prompt: str = "p") -> None:
    """One batch file of the output: ``(video_id, captioned, minutes after T0)`` per row."""
    n = len(rows)
    columns = {f.name: pa.nulls(n, f.type) for f in S.OUTPUT_SCHEMA}
    columns.update({
        S.VIDEO_ID: pa.array([r[0] for r in rows], pa.string()), S.URI: pa.array([f"/v/{r[0]}.mp4" for r in rows]),
        S.ERROR: pa.array([None if r[1] else "decode: broken" for r in rows], pa.string()),
        S.CAPTION: pa.array([f"caption of {r[0]}" if r[1] else None for r in rows], pa.string()),
        S.CREATED_AT: pa.array([T0 + timedelta(minutes=r[2]) for r in rows], S.OUTPUT_SCHEMA.field(S.CREATED_AT).type),
        S.MODEL: pa.array([model] * n), S.PROMPT_ID: pa.array([prompt] * n)})
    OutputStore(out).write_batch(name, pa.table(columns, schema=S.OUTPUT_SCHEMA))


def random_output(out: str, seed: int, files: int = 12) -> dict[str, list[tuple[str, bool, int]]]:
    """Files of random rows; ids repeat across and within files (a retried or re-captioned video)."""
    rng = random.Random(seed)
    written = {}
    for f in range(files):
        rows = [(f"v{rng.randrange(200)}", rng.random() < 0.6, rng.randrange(1000)) for _ in range(rng.randrange(40))]
        if rows:
            written[f"{f:016x}"] = rows
            write_rows(out, f"{f:016x}", rows)
    return written


def expected_keep(written: dict) -> dict[str, tuple[bool, int]]:
    """Each id's preferred row by the rule stated in words: a caption beats an error, then the newest row, then the
    later file, then the earlier row of a file."""
    best: dict = {}
    for name, rows in written.items():
        for position, (video_id, ok, minute) in enumerate(rows):
            key = (ok, minute, name, -position)
            if video_id not in best or key > best[video_id][0]:
                best[video_id] = (key, (ok, minute))
    return {video_id: kept for video_id, (_, kept) in best.items()}


@pytest.fixture
def many_partitions(monkeypatch):
    monkeypatch.setattr(resume, "PARTITION_BYTES", 2_000)  # a few KiB of Parquet make several partitions
    monkeypatch.setattr(resume, "TASK_BYTES_PER_PARTITION", 1_000)  # and several scanning tasks


# -- the set of finished ids ---------------------------------------------------------------------------------
def test_ids_are_found_by_hash_and_compared_as_strings():
    done = DoneSet.of(pa.array([f"clip-{i}" for i in range(0, 1000, 2)]))
    ids = pa.array([f"clip-{i}" for i in range(1000)] + ["", "clip-x"])
    assert done.contains(ids).tolist() == [i % 2 == 0 for i in range(1000)] + [False, False]
    assert len(done) == 500 and sorted(done.ids().to_pylist()) == sorted(f"clip-{i}" for i in range(0, 1000, 2))
    assert DoneSet().contains(ids).sum() == 0 and DoneSet.of([]).size == 0
    assert done.contains(pa.array([], pa.string())).tolist() == []


def test_an_id_that_shares_its_hash_with_a_finished_one_is_not_taken_for_it():
    # Three finished ids made to share one hash (a 64-bit collision, which real ids reach rarely but surely).
    part = DonePart.of(pa.array(["a", "b", "c", "z"]), np.array([7, 7, 7, 9], np.uint64), sorted_by_hash=True)
    asked = pa.array(["c", "d", "a", "z", "y"])
    found = np.zeros(5, dtype=bool)
    part.contains(np.array([7, 7, 7, 9, 8], np.uint64), asked, found)
    assert found.tolist() == [True, False, True, True, False]


def test_a_null_id_in_the_output_matches_no_id_of_a_list():
    # pandas hashes None like the text "None": the string compare after the hash must tell them apart.
    done = DoneSet.of(pa.array([None, "x"], pa.string()))
    assert done.contains(pa.array(["None", "x", "y"])).tolist() == [False, True, False]


def test_a_set_made_of_several_parts_answers_for_each_part():
    parts = DoneSet.of(["a", "b"]).plus(pa.array(["c"])).plus([])
    assert len(parts.parts) == 2 and parts.size == 3
    assert parts.contains(pa.array(["a", "c", "d"])).tolist() == [True, True, False]


def test_id_hashes_are_the_same_for_arrow_and_python_strings_and_across_calls():
    values = ["x", "clip-1", "ü/ñ", ""]
    assert hash_ids(pa.array(values)).tolist() == hash_ids(values).tolist() == hash_ids(iter(values)).tolist()
    assert hash_ids(pa.chunked_array([values[:2], values[2:]])).tolist() == hash_ids(values).tolist()
    assert hash_ids([]).dtype == np.uint64 and len(set(hash_ids(values).tolist())) == 4


# -- the scan in partitions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_a_partitioned_scan_keeps_each_ids_preferred_row_and_nothing_else(tmp_path, many_partitions, seed):
    out = str(tmp_path / "out")
    written = random_output(out, seed)
    stats, state = reconcile_and_scan(out)
    assert state.bits >= 1 and len(state.parts) == 1 << state.bits
    kept = expected_keep(written)
    table = state.table()
    assert sorted(table.column(S.VIDEO_ID).to_pylist()) == sorted(kept)  # one row per id
    assert {r[S.VIDEO_ID]: (r["ok"], r[S.CREATED_AT]) for r in table.to_pylist()} == \
        {v: (ok, T0 + timedelta(minutes=m)) for v, (ok, m) in kept.items()}
    assert stats["duplicate_rows"] == sum(len(rows) for rows in written.values()) - len(kept)
    assert (state.num_rows, state.ok) == (len(kept), sum(ok for ok, _ in kept.values()))
    assert sorted(state.done_ids(retry_errors=True).to_pylist()) == sorted(v for v, (ok, _) in kept.items() if ok)
    assert sorted(state.done_ids(retry_errors=False).to_pylist()) == sorted(kept)
    assert reconcile_and_scan(out)[0]["duplicate_rows"] == 0


def test_a_scan_reusing_the_previous_one_equals_a_full_scan(tmp_path, many_partitions):
    out = str(tmp_path / "out")
    random_output(out, seed=11)
    _, before = reconcile_and_scan(out)
    # A run writes new files (a retried id among them) and an old file disappears (compacted elsewhere, say).
    write_rows(out, "f000000000000001", [("v-new", True, 2000), ("v1", True, 3000)])
    write_rows(out, "f000000000000002", [("v-new-2", False, 2000)])
    gone = sorted(before.files)[0]
    os.remove(gone)
    _, after = reconcile_and_scan(out, previous=before, written=["part-f000000000000001.parquet",
                                                                  "part-f000000000000002.parquet"])
    _, full = reconcile_and_scan(out)
    assert gone not in after.files and after.bits == before.bits
    key = [(S.VIDEO_ID, "ascending")]
    assert after.table().drop_columns(["file"]).sort_by(key).equals(full.table().drop_columns(["file"]).sort_by(key))
    assert (after.num_rows, after.ok) == (full.num_rows, full.ok)


def test_partitions_split_when_the_output_grows_during_a_run(tmp_path, many_partitions):
    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("first", True, 1)])
    before = scan_output(out)
    written = random_output(out, seed=5, files=12)  # a first run writes far more than was there
    after = scan_output(out, previous=before, changed=[f"part-{name}.parquet" for name in written])
    fresh = scan_output(out)
    assert after.bits == fresh.bits > before.bits
    def rows(part):
        return sorted(part.to_pylist(), key=lambda r: (r[S.VIDEO_ID], r["file"], r["row"]))

    for mine, theirs in zip(_Tasks().get(after.parts), _Tasks().get(fresh.parts)):
        assert rows(mine) == rows(theirs)  # the same rows in each partition


def test_files_of_one_name_in_different_folders_are_different_files(tmp_path):
    # A copied-in folder under parquet/ holding a file named like one of the job's: the repair must drop the older
    # error row of `a`, not a row at that position in the other file.
    out = str(tmp_path / "out")
    write_rows(str(tmp_path / "copied"), "00000000000000aa", [("a", False, 1), ("c", True, 1)])
    os.makedirs(os.path.join(out, "parquet"))
    os.replace(os.path.join(tmp_path, "copied", "parquet"), os.path.join(out, "parquet", "old"))
    write_rows(out, "00000000000000aa", [("keep-me", True, 1), ("a", True, 9)])
    stats, state = reconcile_and_scan(out)
    rows = sorted(state.table().select([S.VIDEO_ID, "ok", "file"]).to_pylist(), key=lambda r: r[S.VIDEO_ID])
    assert stats["duplicate_rows"] == 1
    assert rows == [{S.VIDEO_ID: "a", "ok": True, "file": "part-00000000000000aa.parquet"},
                    {S.VIDEO_ID: "c", "ok": True, "file": "old/part-00000000000000aa.parquet"},
                    {S.VIDEO_ID: "keep-me", "ok": True, "file": "part-00000000000000aa.parquet"}]


def test_a_piece_of_a_scanning_task_carries_only_the_file_names_it_has_rows_of(tmp_path):
    out = str(tmp_path / "out")
    for f in range(40):
        write_rows(out, f"{f:016x}", [(f"v{f}-{k}", True, 1) for k in range(3)])
    pieces = resume._scan_files(out, None, OutputStore(out).parquet_files(), 4, 4)[:-1]
    for piece in pieces:
        files = piece.column("file").combine_chunks()
        assert len(files.dictionary) == len(set(files.to_pylist()))


def test_key_columns_of_other_types_in_one_file_are_read_as_the_outputs(tmp_path):
    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("a", True, 1)])
    table = pa.table({S.VIDEO_ID: pa.array(["b"], pa.large_string()), S.ERROR: pa.nulls(1, pa.string()),
                      S.CREATED_AT: pa.array([T0], pa.timestamp("ms", tz="UTC")),
                      S.MODEL: pa.array(["m"]).dictionary_encode(), S.PROMPT_ID: pa.array(["p"], pa.large_string())})
    import pyarrow.parquet as pq
    pq.write_table(table, os.path.join(out, "parquet", "part-0000000000000002.parquet"))
    state = scan_output(out)
    assert sorted(state.table().column(S.VIDEO_ID).to_pylist()) == ["a", "b"] and state.ok == 2


def test_same_model_and_prompt_select_what_counts_as_done(tmp_path, many_partitions):
    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("a", True, 1), ("b", True, 1)], model="old")
    write_rows(out, "0000000000000002", [("c", True, 1), ("d", False, 1)], model="new")
    state = scan_output(out)
    assert sorted(state.done_ids(False, same_as=("new", "p")).to_pylist()) == ["c", "d"]
    assert sorted(state.done_ids(True, same_as=("new", "p")).to_pylist()) == ["c"]
    assert state.done_ids(False, same_as=("new", "other prompt")).to_pylist() == []


def test_an_empty_or_missing_output_has_an_empty_state(tmp_path):
    state = scan_output(str(tmp_path / "nothing"))
    assert (state.num_rows, state.ok, state.files, len(state.done_set(False))) == (0, 0, [], 0)
    assert state.table().num_rows == 0


def test_the_summary_of_folded_manifests_equals_the_summary_of_the_list():
    manifests = [{"rows": 3, "ok": 2, "failed": {"decode/undecodable": 1}, "flagged": {S.FLAGS[0]: 1},
                  "duplicates": 1, "file": "a", "decode_s": 1.5, "caption_s": 2.0, "tokens": 30, "truncated": 1,
                  "decoded": 3, "captioned": 2, "decode_cpu_s": 1.0, "read_retries": 2},
                 {"rows": 0, "ok": 0, "failed": {}, "flagged": {}, "duplicates": 2, "file": None, "decode_s": 0.0,
                  "caption_s": 0.0, "tokens": 0, "truncated": 0}]
    folded = Progress.of(manifests)
    assert (folded.written, folded.ok, folded.repeats, folded.files) == (3, 2, 3, ["a"])
    assert folded.sums["read_retries"] == 2 and folded.sums["write_retries"] == 0 and folded.sums["tokens"] == 30
    assert dict(folded.failed) == {"decode/undecodable": 1} and dict(folded.flagged) == {S.FLAGS[0]: 1}


# -- the same under Ray ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_under_ray_the_state_stays_in_the_object_store_and_answers_the_same(ray_local, tmp_path, many_partitions):
    import ray

    from pipeline.skip import SkipDone

    out = str(tmp_path / "out")
    written = random_output(out, seed=3, files=20)
    stats, state = reconcile_and_scan(out)
    assert all(isinstance(p, ray.ObjectRef) for p in state.parts) and len(state.parts) > 1
    kept = expected_keep(written)
    assert sorted(state.table().column(S.VIDEO_ID).to_pylist()) == sorted(kept)
    assert stats["duplicate_rows"] == sum(len(rows) for rows in written.values()) - len(kept)
    done = state.done_set(retry_errors=True)
    assert all(isinstance(p, ray.ObjectRef) for p in done.parts)
    ids = pa.array(sorted(kept) + ["never-seen"])

    @ray.remote
    def skip_in_a_task(batch):
        return SkipDone(done)(batch).column(S.VIDEO_ID).to_pylist()

    left = ray.get(skip_in_a_task.remote(pa.table({S.VIDEO_ID: ids})))
    assert sorted(left) == sorted([v for v, (ok, _) in kept.items() if not ok] + ["never-seen"])


def test_a_file_whose_footer_is_damaged_is_named_as_unreadable(tmp_path):
    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("a", True, 1), ("b", False, 2)])
    write_rows(out, "0000000000000002", [("c", True, 3)])
    path = os.path.join(out, "parquet", "part-0000000000000002.parquet")
    data = bytearray(open(path, "rb").read())
    footer = int.from_bytes(data[-8:-4], "little")
    named = 0
    for offset in range(0, footer, 8):  # every eighth byte of the footer's metadata
        damaged = bytearray(data)
        damaged[len(data) - 8 - footer + offset] ^= 0xFF
        with open(path, "wb") as f:
            f.write(damaged)
        try:
            scan_output(out)
        except resume.UnreadableOutputFile as exc:
            assert "part-0000000000000002.parquet" in str(exc)
            named += 1
        # else: the flip landed where the reader does not look (statistics, the writer's name)
    assert named > footer // 8 // 2


@pytest.mark.parametrize("failing", ["read", "seek", "tell"])
def test_a_store_that_fails_a_call_is_not_taken_for_a_damaged_file(tmp_path, monkeypatch, failing):
    """A stale NFS handle or a FUSE mount's error fails a read, a seek or a tell: that is the store's error, raised
    as the store raised it, never "damaged, move it out" (which would cost the file's rows)."""
    import io

    from pipeline.io import output_store

    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("a", True, 1)])

    class StaleHandle(io.FileIO):
        calls = 0

        def _maybe_fail(self, name):
            if name == failing:
                StaleHandle.calls += 1
                if StaleHandle.calls >= 2:
                    raise OSError(116, "Stale file handle")

        def read(self, *args):
            self._maybe_fail("read")
            return super().read(*args)

        def seek(self, *args):
            self._maybe_fail("seek")
            return super().seek(*args)

        def tell(self):
            self._maybe_fail("tell")
            return super().tell()

    class Mount:
        def open(self, path, mode="rb"):
            return StaleHandle(path, "r")

    monkeypatch.setattr(output_store, "get_fs", lambda uri, options=None: (Mount(), uri))
    with pytest.raises(OSError, match="Stale file handle") as caught:
        OutputStore(out).read_table(os.path.join(out, "parquet", "part-0000000000000001.parquet"))
    assert not isinstance(caught.value, resume.UnreadableOutputFile)


@pytest.mark.slow
def test_under_ray_an_unreadable_file_is_one_clear_error(ray_local, tmp_path, monkeypatch, capfd):
    import gc

    monkeypatch.setattr(resume, "PARTITION_BYTES", 1)  # as many partitions as there may be
    out = str(tmp_path / "out")
    write_rows(out, "0000000000000001", [("a", True, 1)])
    with open(os.path.join(out, "parquet", "part-0000000000000002.parquet"), "wb") as f:
        f.write(b"PAR1 not really")
    started = time.perf_counter()
    with pytest.raises(resume.UnreadableOutputFile, match=r"part-0000000000000002.parquet is not a readable"):
        scan_output(out)
    assert time.perf_counter() - started < 60  # not retried for minutes
    gc.collect()
    time.sleep(2)
    assert "Unhandled error" not in capfd.readouterr().err  # not one error per partition in the log
