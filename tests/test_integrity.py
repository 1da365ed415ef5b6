"""Integrity at the edges (issue 22): a caption once written is never lost, a different video under a taken id
never vanishes, and one job writes an output at a time. Each test reproduces a hole a hostile review found."""

from __future__ import annotations

import os

import pyarrow.dataset as pads
import pytest

from helpers import job_config
from pipeline.generated_videos import write_video


def rows_by_id(out: str) -> dict[str, dict]:
    table = pads.dataset(os.path.join(out, "parquet"), format="parquet").to_table()
    ids = table.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)), f"ids repeated: {sorted(ids)}"
    return {row["video_id"]: row for row in table.to_pylist()}


def test_a_recaption_changed_run_that_fails_never_replaces_the_old_captions(ray_local, tmp_path):
    from pipeline.runner import run_job

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos) + "\n")
    out = str(tmp_path / "out")
    run_job(job_config(str(listing), out))
    before = rows_by_id(out)
    assert all(r["caption"] for r in before.values())
    os.remove(videos[0])  # gone: read/not_found this time
    open(videos[1], "wb").close()  # emptied: a decode error this time
    run_job(job_config(str(listing), out, prompt="Say something else.", output={"recaption_changed": True}))
    after = rows_by_id(out)
    assert set(after) == set(before)
    for video_id, row in after.items():
        assert row["caption"], f"{video_id} lost its caption: {row['error']}"
    # The video that could be read again got the new prompt's caption; the other two kept their old ones.
    assert sorted(r["prompt_id"] == before[i]["prompt_id"] for i, r in after.items()) == [False, True, True]


def test_a_list_giving_one_id_to_two_videos_is_refused_naming_both(ray_local, tmp_path):
    """Before: the second video was counted as a "repeated row" and never captioned. Now the list is refused
    before anything runs (exit 2 from the job script), naming the id and both videos; the same video listed
    twice under one id is still just a repeat."""
    from pipeline.list_ids import IdConflict
    from pipeline.runner import run_job

    a = write_video(str(tmp_path / "a.mp4"), 160, 120, 12, 12, seed=1)
    b = write_video(str(tmp_path / "b.mp4"), 160, 120, 12, 12, seed=2)
    listing = tmp_path / "list.csv"
    listing.write_text(f"video_id,uri\nsame,{a}\nother,{b}\nsame,{a}\nsame,{b}\n")
    out = tmp_path / "out"
    with pytest.raises(IdConflict) as caught:
        run_job(job_config(str(listing), str(out)))
    message = str(caught.value)
    assert "'same'" in message and a in message and b in message and "other" not in message.split("Nothing")[1]
    assert not (out / "parquet").exists()  # nothing was written
    # Clips: one id for two windows of the same file is two inputs too; with --limit the check still runs first.
    listing.write_text(f"video_id,uri,start_s,end_s\nclip,{a},0,0.2\nclip,{a},0.2,0.4\n")
    with pytest.raises(IdConflict, match=r"'clip'.*\[0\.0, 0\.2\] s.*\[0\.2, 0\.4\] s"):
        run_job(job_config(str(listing), str(out), source={"limit": 2}))
    # One video listed twice under one id is the same input: captioned once.
    listing.write_text(f"video_id,uri\nsame,{a}\nsame,{a}\nother,{b}\n")
    summary = run_job(job_config(str(listing), str(out)))
    assert summary["this_run"]["duplicates_skipped"] == 1 and set(rows_by_id(str(out))) == {"same", "other"}


def test_which_list_ids_have_the_form_of_a_clip_windows_id():
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.done_set import hash_ids
    from pipeline.list_ids import window_shaped
    from pipeline.windows import window_id

    made = window_id("x", 0.0, 1.2345)  # what the window stage names a window: the form matched
    refs = pa.table({S.VIDEO_ID: ["clip", "clip_t0-500", "a_t12-", "plain_t", None, made, "_t0-1", "two\nlines_t0-1"]})
    ids, sources = window_shaped(refs)
    assert list(ids) == list(hash_ids(["clip_t0-500", made, "_t0-1", "two\nlines_t0-1"]))
    assert list(sources) == list(hash_ids(["clip", "x", "", "two\nlines"]))
    assert [len(a) for a in window_shaped(pa.table({S.VIDEO_ID: ["a", "b"]}))] == [0, 0]


def test_with_clip_windows_a_row_whose_id_is_another_rows_window_is_refused(ray_local, tmp_path):
    """Before: 'clip_t0-500' (a missing video: not cut, so it keeps its list id) and the first window of 'clip'
    shared one id, and the output kept one of them. With clip windows such a list is refused before anything
    runs, naming both rows; without windows the same ids are just two videos."""
    from pipeline.list_ids import IdConflict
    from pipeline.runner import run_job

    a = write_video(str(tmp_path / "a.mp4"), 160, 120, 12, 12, seed=1)  # 1 s: windows of 0.5 s
    listing = tmp_path / "list.csv"
    listing.write_text(f"video_id,uri\nclip,{a}\nclip_t0-500,{tmp_path / 'missing.mp4'}\nother,{a}\n")
    out = tmp_path / "out"
    with pytest.raises(IdConflict) as caught:
        run_job(job_config(str(listing), str(out), source={"window_s": 0.5}))
    message = str(caught.value)
    assert "'clip_t0-500'" in message and "window id of 'clip'" in message and "missing.mp4" in message
    assert "'other'" not in message and "Nothing was run" in message
    assert not (out / "parquet").exists()
    summary = run_job(job_config(str(listing), str(out)))  # no windows: three ids, three videos
    assert summary["this_run"]["videos"] == 3 and set(rows_by_id(str(out))) == {"clip", "clip_t0-500", "other"}


def test_the_question_list_an_evaluation_writes_holds_no_user_info(tmp_path):
    """questions.parquet sits in the evaluation's output folder: a benchmark's s3://KEY:SECRET@... URIs lose their
    user info there (never used for access), while a signed URL keeps the query it is read with."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluation.run import write_questions

    uris = ["s3://AKIAQ:question-secret@bucket/v.mp4", "https://host/v.mp4?X-Amz-Signature=sig", None]
    written = write_questions(pa.table({"video_id": ["a", "b", "c"], "uri": uris}), str(tmp_path))
    assert pq.read_table(written).column("uri").to_pylist() == [
        "s3://bucket/v.mp4", "https://host/v.mp4?X-Amz-Signature=sig", None]
    assert b"question-secret" not in open(written, "rb").read()


@pytest.mark.parametrize("uri, public", [
    ("s3://AKIAX:ab/cd+ef@bucket/v.mp4", "s3://bucket/v.mp4"),  # an AWS secret with an unencoded "/"
    ("s3://AKIAX:plain@bucket/v.mp4", "s3://bucket/v.mp4"),
    ("http://host:8080/path@x.mp4", "http://host:8080/path@x.mp4"),  # a port, then an "@" in the path
    ("s3://bucket/dir:x/y@z.mp4", "s3://bucket/dir:x/y@z.mp4"),  # ":" and "@" in a key
])
def test_user_info_is_dropped_and_masked_even_with_a_slash_in_the_secret(uri, public):
    from pipeline.io.masking import mask_text, public_uri
    from pipeline.io.storage import without_userinfo

    assert public_uri(uri) == without_userinfo(uri) == public
    if public != uri:
        assert "cd+ef" not in mask_text(f"failed to read {uri}: denied") and "plain" not in mask_text(uri)


def test_input_keys_tell_inputs_apart_and_spellings_of_one_input_not():
    """The id check's notion of "the same input": credentials, local path spellings and -0 do not make another
    input; other bounds, another file, or bounds the list could not use (that row is not the whole video) do."""
    import pyarrow as pa

    from pipeline.list_ids import input_keys

    def key(uri, start=None, end=None, reason=None, error=None):
        refs = pa.table({"video_id": ["x"], "uri": [uri], "start_s": pa.array([start], pa.float64()),
                         "end_s": pa.array([end], pa.float64()), "error": pa.array([error], pa.string()),
                         "error_reason": pa.array([reason], pa.string())})
        return int(input_keys(refs)[1][0])

    same = {key("/a/v.mp4"), key("file:///a/v.mp4"), key("/a/./b/../v.mp4"), key("//a//v.mp4")}
    assert len(same) == 1
    assert key("s3://KEY:SECRET@bucket/v.mp4") == key("s3://bucket/v.mp4")
    assert key("/a/v.mp4", -0.0, 1.0) == key("/a/v.mp4", 0.0, 1.0)
    different = [key("/a/v.mp4"), key("/a/w.mp4"), key("/a/v.mp4", 0.0, 1.0), key("/a/v.mp4", 1.0, 2.0),
                 key("/a/v.mp4", reason="bad_bounds", error="source: clip bounds start_s='1:30', end_s=None")]
    assert len(set(different)) == len(different)


def test_a_row_with_unusable_bounds_and_the_whole_video_under_one_id_are_refused(ray_local, tmp_path):
    """The hostile review's repro: before, the whole-video row was dropped as a 'repeat' of the bad-bounds row."""
    from pipeline.list_ids import IdConflict
    from pipeline.runner import run_job

    v = write_video(str(tmp_path / "v.mp4"), 160, 120, 12, 12, seed=1)
    listing = tmp_path / "list.csv"
    listing.write_text(f"video_id,uri,start_s\nX,{v},1:30\nX,{v},\n")
    with pytest.raises(IdConflict, match="'X'"):
        run_job(job_config(str(listing), str(tmp_path / "out")))


def test_nan_ids_in_a_float_id_column_are_blank_and_derived_from_the_uri(tmp_path):
    """Before: every NaN id became the text 'nan', so the list was refused as one id naming several videos."""
    import pyarrow as pa

    from pipeline.config import SourceConfig
    from pipeline.io.sources import NormaliseRefs, stable_video_id

    table = pa.table({"video_id": pa.array([float("nan"), float("nan"), 7.0]), "uri": ["/v/a.mp4", "/v/b.mp4",
                                                                                        "/v/c.mp4"]})
    refs = NormaliseRefs(SourceConfig(input=str(tmp_path / "l.parquet")), "parquet", str(tmp_path))(table)
    assert refs.column("video_id").to_pylist() == [stable_video_id("/v/a.mp4"), stable_video_id("/v/b.mp4"), "7.0"]


@pytest.mark.parametrize("spelling", ["file:{path}", "file://{path}", "file://localhost{path}", "{path}"])
def test_every_spelling_of_a_local_output_is_one_folder_for_writes_reads_and_the_lease(tmp_path, spelling,
                                                                                       monkeypatch):
    """Before: `file:/abs` was written under the current folder but read at /abs, so a job's own lease never
    read back ("lost the lease ... held by no job")."""
    from pipeline.lease import OutputLease

    monkeypatch.chdir(tmp_path)
    out = spelling.format(path=str(tmp_path / "out"))
    with OutputLease(out, "run-a") as lease:
        lease.check()
        assert (tmp_path / "out" / "_lease.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing under the current folder


def test_mcq_tasks_whose_names_differ_only_in_case_get_distinct_question_ids(tmp_path):
    """Before: "Action Sequence" and "action sequence" both numbered from 0 under one slug: refused as two
    questions with one id."""
    import json as json_

    from pipeline.evaluation.benchmarks import mcq_benchmark

    items = [{"video": f"v{i}.mp4", "question": "q?", "candidates": ["a", "b"], "answer": "a", "task": task}
             for i, task in enumerate(["Action Sequence", "action sequence", "Action Sequence"])]
    (tmp_path / "mcq.json").write_text(json_.dumps(items))
    bench = mcq_benchmark(str(tmp_path / "mcq.json"), str(tmp_path))
    ids = bench.questions.column("video_id").to_pylist()
    assert len(set(ids)) == 3 and sorted(set(bench.questions.column("eval_task").to_pylist())) == [
        "Action Sequence", "action sequence"]
