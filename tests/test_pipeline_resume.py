"""Resume: a driver killed with SIGKILL mid-run, then rerun, ends with exactly one row per video;
--retry-errors replaces error rows instead of adding rows; repairs of a damaged output."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml

from helpers import ROOT, job_config
from pipeline import schema as S
from pipeline.config import OutputConfig
from pipeline.resume import reconcile, reconcile_and_scan, scan_output
from pipeline.runner import run_job
from pipeline.generated_videos import write_video
from pipeline.sinks import ShardWriter



def visible_parquet(out_dir):
    folder = os.path.join(out_dir, "parquet")
    return sorted(f for f in os.listdir(folder) if not f.startswith(".")) if os.path.isdir(folder) else []


def read_rows(out_dir):
    files = [os.path.join(out_dir, "parquet", f) for f in visible_parquet(out_dir)]
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def wait_until_quiet(out_dir, quiet_s=3.0, timeout_s=60.0):
    """Until the output's visible files have not changed for ``quiet_s``."""
    deadline, last, since = time.time() + timeout_s, None, time.time()
    while time.time() < deadline:
        now = visible_parquet(out_dir)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet_s:
            return
        time.sleep(0.2)


def run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "jobs/recaption.py", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_sigkilled_driver_then_rerun_gives_exactly_one_row_per_video(tmp_path):
    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(10)]
    (tmp_path / "bad.mp4").write_text("not a video")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + [str(tmp_path / "bad.mp4")]) + "\n")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "generation": {"max_new_tokens": 400, "min_new_tokens": 400},  # slow enough to be killed mid-run
        "resources": {"batch_size": 1, "rows_per_file": 1, "decode_concurrency": 1, "decode_num_cpus": 0.5,
                      "caption_num_cpus": 0.5},
    }))
    out = str(tmp_path / "out")
    args = ["--input", str(listing), "--output", out, "--model", "tiny", "--num-frames", "4",
            "--format", "both", "--config", str(config)]

    first = run_cli(args)
    deadline = time.time() + 300
    while len(visible_parquet(out)) < 3:
        assert first.poll() is None, "the job finished before it could be killed:\n" + first.stdout.read()
        assert time.time() < deadline, "no output appeared in time"
        time.sleep(0.2)
    # The whole job dies at once, as with a lost machine: the driver, and the local Ray it started (GCS, raylet,
    # workers), which the driver's process group does not all hold. Killed alone, the driver leaves workers
    # that finish the batches they already hold.
    tree = psutil.Process(first.pid).children(recursive=True)
    print(f"files at the kill: {len(visible_parquet(out))}; processes: {len(tree)}")
    os.killpg(first.pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    first.wait()
    psutil.wait_procs(tree, timeout=30)
    wait_until_quiet(out)
    before = read_rows(out)  # every visible file reads whole: writes are atomic
    print(f"rows when killed: {len(before)} of 11")
    assert 3 <= len(before) < 11
    assert len({r[S.VIDEO_ID] for r in before}) == len(before)

    second = run_cli(args)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    after = read_rows(out)
    ids = [r[S.VIDEO_ID] for r in after]
    assert len(ids) == 11 and len(set(ids)) == 11
    assert sum(r[S.ERROR] is None for r in after) == 10
    # Finished work was kept, not redone.
    kept = {r[S.VIDEO_ID]: r[S.RUN_ID] for r in before}
    assert all(r[S.RUN_ID] == kept[r[S.VIDEO_ID]] for r in after if r[S.VIDEO_ID] in kept)
    summary = json.loads(max((open(os.path.join(out, "_runs", f)).read() for f in os.listdir(os.path.join(out, "_runs"))),
                             key=lambda text: json.loads(text)["run_id"]))
    assert summary["this_run"]["skipped_already_done"] == len(before)
    assert summary["this_run"]["videos"] == 11 - len(before)
    # The WebDataset shards hold each captioned video once, and only those whose Parquet file exists.
    tars = sorted(os.path.join(out, "webdataset", f) for f in os.listdir(os.path.join(out, "webdataset")))
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert sorted(keys) == sorted(r[S.VIDEO_ID] for r in after if r[S.ERROR] is None)


def test_retry_errors_replaces_the_error_row(ray_local, tmp_path):
    good = write_video(str(tmp_path / "good.mp4"), 160, 120, 12, 12, seed=1)
    late = str(tmp_path / "late.mp4")  # listed, but not there yet
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\n{late}\n")
    out = str(tmp_path / "out")
    first = run_job(job_config(str(listing), out))
    assert first["this_run"]["failed_by_reason"] == {"read/not_found": 1}

    write_video(late, 160, 120, 12, 12, seed=2)
    again = run_job(job_config(str(listing), out))
    assert again["this_run"]["videos"] == 0 and again["this_run"]["skipped_already_done"] == 2

    retried = run_job(job_config(str(listing), out, output={"retry_errors": True}))
    assert retried["this_run"]["videos"] == 1 and retried["this_run"]["ok"] == 1
    rows = read_rows(out)
    assert len(rows) == 2 and all(r[S.ERROR] is None for r in rows)
    assert retried["output_total"] == {"videos": 2, "ok": 2, "failed": 0, "parquet_files": 2}


def test_recaption_changed_captions_again_what_another_prompt_wrote(ray_local, tmp_path):
    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos) + "\n")
    out = str(tmp_path / "out")
    first = run_job(job_config(str(listing), out, prompt="Describe the video."))
    assert first["this_run"]["ok"] == 3
    old = {r[S.VIDEO_ID]: r for r in read_rows(out)}

    # Without the mode a new prompt captions nothing: every video already has a row, so no actor pool starts.
    from ray._private.state import actors

    def caption_actors() -> int:  # every caption actor this cluster ever had (dead ones stay listed)
        return sum("Captioner" in (a.get("ActorClassName") or "") for a in actors().values())

    started = caption_actors()
    plain = run_job(job_config(str(listing), out, prompt="What moves in the clip?"))
    assert plain["this_run"]["videos"] == 0 and plain["this_run"]["skipped_already_done"] == 3
    assert plain["complete"] and caption_actors() == started > 0

    changed = job_config(str(listing), out, prompt="What moves in the clip?", output={"recaption_changed": True})
    second = run_job(changed)
    assert second["this_run"]["videos"] == 3 and second["this_run"]["ok"] == 3
    rows = read_rows(out)
    assert len(rows) == 3 and len({r[S.VIDEO_ID] for r in rows}) == 3  # still one row per video: the newest
    new_prompt = {r[S.PROMPT_ID] for r in rows}
    assert len(new_prompt) == 1 and new_prompt != {r[S.PROMPT_ID] for r in old.values()}
    assert all(r[S.RUN_ID] == second["run_id"] for r in rows)
    assert len(list((tmp_path / "out" / "webdataset").glob("*.tar"))) == len(visible_parquet(out))

    # Same model and prompt again: nothing left to do; the old prompt again in this mode: all three again.
    assert run_job(changed)["this_run"]["skipped_already_done"] == 3
    back = run_job(job_config(str(listing), out, prompt="Describe the video.", output={"recaption_changed": True}))
    assert back["this_run"]["videos"] == 3
    assert {r[S.PROMPT_ID] for r in read_rows(out)} == {r[S.PROMPT_ID] for r in old.values()}


def test_recaption_changed_knows_this_runs_identity_before_loading_the_model(tiny_dir, tiny_lora_dir):
    from model import GenerationSettings
    from model.prompts import PromptText
    from pipeline.captioner import Captioner, caption_identity
    from pipeline.config import ModelConfig

    seen = set()
    for model_cfg, prompt in [(ModelConfig(model=tiny_dir), PromptText("Describe.")),
                              (ModelConfig(model=tiny_dir, template="vicuna_videoqa"), PromptText("Q?", "")),
                              (ModelConfig(model=tiny_lora_dir, lora_alpha=4), PromptText("Describe.")),
                              (ModelConfig(model=tiny_lora_dir, lora_alpha=8), PromptText("Describe."))]:
        stage = Captioner(model_cfg, GenerationSettings(max_new_tokens=2), prompt, num_frames=4, image_size=336,
                          device="cpu")
        assert caption_identity(model_cfg, prompt) == (stage.model_name, stage.prompt_id)
        seen.add((stage.model_name, stage.prompt_id))
    assert len(seen) == 4  # another template, prompt, checkpoint or alpha is another identity


def test_reconcile_removes_temporaries_orphan_shards_and_duplicates(tmp_path):
    out = str(tmp_path / "out")
    writer = ShardWriter(OutputConfig(output=out, formats=("parquet", "webdataset")), run_id="r1")

    def batch(ids, error=None):
        return pa.table({S.VIDEO_ID: ids, S.URI: [f"/v/{i}.mp4" for i in ids],
                         S.ERROR: [error] * len(ids), S.ERROR_STAGE: [error and "decode"] * len(ids),
                         S.ERROR_REASON: [error and "undecodable"] * len(ids),
                         S.CAPTION: [None if error else f"caption {i}" for i in ids]})

    writer(batch(["a", "b"], error="decode: broken"))
    time.sleep(0.01)
    writer(batch(["b", "c"]))  # b retried with success: now in two files
    (tmp_path / "out" / "webdataset" / "shard-0123456789abcdef.tar").write_bytes(b"orphan")
    (tmp_path / "out" / "parquet" / ".tmp-1234-part-x.parquet").write_bytes(b"half")
    stats = reconcile(out)
    assert stats == {"temporaries": 1, "orphan_tars": 1, "duplicate_rows": 1, "compacted_inputs": 0}
    rows = {r[S.VIDEO_ID]: r for r in read_rows(out)}
    assert sorted(rows) == ["a", "b", "c"] and rows["b"][S.CAPTION] == "caption b"
    assert reconcile(out) == {"temporaries": 0, "orphan_tars": 0, "duplicate_rows": 0, "compacted_inputs": 0}
    state = scan_output(out)
    assert sorted(state.done_ids(retry_errors=True).to_pylist()) == ["b", "c"]
    assert sorted(state.done_ids(retry_errors=False).to_pylist()) == ["a", "b", "c"]


def test_duplicate_captions_are_removed_from_webdataset_too(tmp_path):
    out = str(tmp_path / "out")
    writer = ShardWriter(OutputConfig(output=out, formats=("parquet", "webdataset")), run_id="r1")
    table = pa.table({S.VIDEO_ID: ["x"], S.URI: ["/v/x.mp4"], S.ERROR: pa.nulls(1, pa.string()),
                      S.ERROR_STAGE: pa.nulls(1, pa.string()), S.ERROR_REASON: pa.nulls(1, pa.string()),
                      S.CAPTION: ["one"]})
    writer(table)
    writer(table.append_column("extra", pa.array([1])))  # same id, another batch name
    reconcile(out)
    tars = [os.path.join(out, "webdataset", f) for f in os.listdir(os.path.join(out, "webdataset"))]
    assert [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)] == ["x"]
    assert len(read_rows(out)) == 1




def test_an_id_twice_in_one_file_keeps_exactly_one_row_and_one_sample(tmp_path):
    """Two copies of an id inside one Parquet file (one batch): reconcile keeps one, not none."""
    out = str(tmp_path / "out")
    writer = ShardWriter(OutputConfig(output=out, formats=("parquet", "webdataset")), run_id="r1")
    ids = ["x", "x", "y", "z", "z"]
    errors = [None, None, None, "decode: broken", None]  # z: an error copy and a caption copy
    writer(pa.table({S.VIDEO_ID: ids, S.URI: [f"/v/{i}.mp4" for i in ids], S.ERROR: errors,
                     S.ERROR_STAGE: [e and "decode" for e in errors], S.ERROR_REASON: [e and "undecodable" for e in errors],
                     S.CAPTION: [None if e else f"caption {i}" for i, e in zip(ids, errors)]}))
    assert reconcile(out)["duplicate_rows"] == 2
    rows = read_rows(out)
    assert sorted(r[S.VIDEO_ID] for r in rows) == ["x", "y", "z"] and all(r[S.ERROR] is None for r in rows)
    tars = [os.path.join(out, "webdataset", f) for f in os.listdir(os.path.join(out, "webdataset"))]
    assert sorted(s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)) == ["x", "y", "z"]
    assert reconcile(out)["duplicate_rows"] == 0  # converged


def test_the_after_run_scan_reads_only_new_and_rewritten_files_and_still_repairs(tmp_path):
    """A job scans its output once: afterwards only the files it wrote (and files not seen before) are read;
    the rest keep their rows from the first scan, duplicates across old and new files are still removed."""
    out = str(tmp_path / "out")
    writer = ShardWriter(OutputConfig(output=out, formats=("parquet",)), run_id="r1")

    def batch(ids, error=None):
        return pa.table({S.VIDEO_ID: ids, S.URI: [f"/v/{i}.mp4" for i in ids], S.ERROR: [error] * len(ids),
                         S.ERROR_STAGE: [error and "decode"] * len(ids), S.ERROR_REASON: [error and "undecodable"] * len(ids),
                         S.CAPTION: [None if error else f"caption {i}" for i in ids]})

    writer(batch(["a", "b"])), writer(batch(["c"], error="decode: broken"))
    _, before = reconcile_and_scan(out)
    old_ab, old_c = sorted(before.files, key=lambda f: -pq.read_metadata(f).num_rows)  # 2 rows, then 1
    # Garbage under an old name proves that file is not read again (its rows come from the first scan).
    pq_bytes = open(old_ab, "rb").read()
    open(old_ab, "wb").write(b"not parquet")
    time.sleep(0.01)
    manifest = json.loads(writer(batch(["c", "d"])).column("manifest")[0].as_py())  # c retried: now captioned
    stats, after = reconcile_and_scan(out, previous=before, written=[manifest["file"]])
    assert stats["duplicate_rows"] == 1  # c's old error row, found across an old and a new file
    assert sorted(after.table().column(S.VIDEO_ID).to_pylist()) == ["a", "b", "c", "d"]
    assert sorted(after.done_ids(retry_errors=True).to_pylist()) == ["a", "b", "c", "d"]
    assert old_c not in after.files  # the old file held only c's error row: removed by the repair
    # A file the run rewrote under an old name is read again: its new rows count, not the first scan's.
    open(old_ab, "wb").write(pq_bytes)
    writer(batch(["a", "b"], error="decode: broken"))  # same ids, same batch name: overwrites old_ab
    _, again = reconcile_and_scan(out, previous=after, written=[os.path.basename(old_ab)])
    ok = dict(zip(again.table().column(S.VIDEO_ID).to_pylist(), again.table().column("ok").to_pylist()))
    assert ok == {"a": False, "b": False, "c": True, "d": True}
    assert again.num_rows == scan_output(out).num_rows == 4


def test_a_video_listed_many_times_is_captioned_once_and_kept(ray_local, tmp_path):
    good = write_video(str(tmp_path / "good.mp4"), 160, 120, 12, 12, seed=7)
    other = write_video(str(tmp_path / "other.mp4"), 160, 120, 12, 12, seed=8)
    listing = tmp_path / "list.txt"
    listing.write_text("# the same clip, listed again and again\n" + f"{good}\n" * 40 + f"{other}\n{good}\n")
    out = str(tmp_path / "out")
    summary = run_job(job_config(str(listing), out, source={"limit": 41}))
    assert summary["this_run"]["videos"] == 2 and summary["this_run"]["duplicates_skipped"] == 39
    assert summary["output_total"]["videos"] == 2 and summary["output_total"]["ok"] == 2
    assert sorted(r[S.URI] for r in read_rows(out)) == sorted([good, other])
    again = run_job(job_config(str(listing), out))
    assert again["this_run"]["videos"] == 0 and again["output_total"]["videos"] == 2
