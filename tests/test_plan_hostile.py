"""The plan command as a hostile or careless user meets it: malformed, huge or non-regular plan files under
``_plans/``, plans made in the same second, flags out of range, a run compared with a plan when videos fail,
lists with custom URI columns, conflicting ids, repeated rows and clip windows.

Each test names the expected behaviour (found by a hostile review of the feature, then fixed, or an edge that
held)."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc

import pyarrow as pa
import pytest

from helpers import job_config
from pipeline import schema as S
from pipeline.io.output_store import OutputStore
from pipeline.plan import new_plan_id, project
from pipeline.plan_check import compare_with_plan, well_formed
from pipeline.runner import format_summary

CLUSTER = {"caption_actors": 1, "gpus_per_caption_actor": 1.0, "decode_cpus": 1.0, "pool_cpus": 2.0}
RUN = {"videos": 10, "failed": 1, "videos_per_s": 0.5, "decode_cpu_s_per_video": 1.5, "caption_s_per_video": 9.0,
       "failure_rate": 0.1}


def _the_runners_comparison(output: str) -> dict | None:
    """What ``pipeline.runner`` does at the end of every run that processed videos: the latest plan, compared
    with the run's figures, then printed."""
    plan = OutputStore(output).latest_plan(accept=well_formed)
    compared = compare_with_plan(RUN, plan) if plan else None
    format_summary(_SUMMARY | {"vs_plan": compared})
    return compared


_SUMMARY = {
    "run_id": "r", "output": "/out", "complete": True,
    "this_run": {"list_rows": 10, "windows_added": 0, "videos": 10, "ok": 9, "failed": 1, "failed_by_reason": {},
                 "skipped_already_done": 0, "duplicates_skipped": 0, "wall_s": 20.0, "videos_per_s": 0.5,
                 "gpu_hours": 0.0, "videos_per_gpu_hour": None, "decode_cpu_s_per_video": 1.5,
                 "caption_s_per_video": 9.0, "decode_cores_per_caption_actor": 0.17, "tokens_generated": 80,
                 "hit_token_limit": 0, "flagged": {}, "read_retries": 0, "write_retries": 0, "files_written": 1,
                 "decode_s": 1.0, "caption_s": 1.0, "decode_cpu_s": 1.0, "gpus": 0.0, "failure_rate": 0.1},
    "output_total": {"videos": 10, "ok": 9, "failed": 1, "parquet_files": 1},
    "repairs": {"before": {}, "after": {}},
}


def _good_plan() -> dict:
    videos = [{"decode_cpu_s": 1.0, "caption_s": 2.0, "failure": None}, {"decode_cpu_s": 2.0, "caption_s": 3.0,
                                                                         "failure": None}]
    return {"plan_id": "plan-20200101T000000Z-aaaaaa", "projection": project(videos, 10, CLUSTER)}


# -- a hostile _plans/ must never fail (or hang) a real run ------------------------------------------------
@pytest.mark.parametrize("projection", [
    "fast",
    [1, 2],
    {"videos_per_s": 5},
    {"videos_per_s": {"value": "fast", "range": [0, 1]}},
    {"videos_per_s": {"value": [1], "range": [0, 1]}},
    {"videos_per_s": {"value": 1.0, "range": [0]}},
    {"videos_per_s": {"value": 1.0, "range": [0, "a"]}},
], ids=["str", "list", "figure-not-dict", "value-str", "value-list", "range-short", "range-str"])
def test_a_malformed_latest_plan_is_skipped_not_a_crash_at_the_end_of_a_run(tmp_path, projection):
    store = OutputStore(str(tmp_path))
    store.write_plan("plan-20200101T000000Z-aaaaaa", _good_plan())
    (tmp_path / "_plans" / "plan-29991231T235959Z-ffffff.json").write_text(
        json.dumps({"plan_id": "plan-29991231T235959Z-ffffff", "projection": projection}))
    compared = _the_runners_comparison(str(tmp_path))  # raises today
    assert compared is None or compared["plan_id"] == "plan-20200101T000000Z-aaaaaa"


def test_a_plan_figure_that_is_not_a_finite_number_is_not_compared():
    plan = {"plan_id": "p", "projection": {"videos_per_s": {"value": float("nan"), "range": [0.0, 1.0]}}}
    compared = compare_with_plan(RUN, plan)
    assert compared is None or "videos_per_s" not in compared["figures"]


def test_unreadable_plans_are_skipped_for_an_older_readable_one(tmp_path):
    store = OutputStore(str(tmp_path))
    store.write_plan("plan-20200101T000000Z-aaaaaa", _good_plan())
    plans = tmp_path / "_plans"
    (plans / "plan-29991231T235959Z-aaaaaa.json").write_text("not json {")
    (plans / "plan-29991231T235959Z-bbbbbb.json").write_text("[1, 2, 3]")
    (plans / "plan-29991231T235959Z-cccccc.json").write_bytes(b'{"plan_id": "\xff\xfe"}')
    (plans / "plan-29991231T235959Z-dddddd.json").write_text("[" * 100_000 + "]" * 100_000)
    (plans / "plan-29991231T235959Z-eeeeee.json").mkdir()  # a folder named like a plan
    # A plan killed midway leaves its scratch output: its run summary and lease are no plans.
    scratch = plans / "plan-29991231T235959Z-ffffff-scratch" / "out"
    (scratch / "_runs").mkdir(parents=True)
    (scratch / "_runs" / "20991231T235959Z-abcdef.json").write_text(json.dumps({"plan_id": "not a plan"}))
    (scratch / "_lease.json").write_text("{}")
    compared = _the_runners_comparison(str(tmp_path))
    assert compared["plan_id"] == "plan-20200101T000000Z-aaaaaa" and compared["figures"]


def test_a_plan_that_is_not_a_regular_file_does_not_hang_the_run(tmp_path):
    store = OutputStore(str(tmp_path))
    store.write_plan("plan-20200101T000000Z-aaaaaa", _good_plan())
    fifo = tmp_path / "_plans" / "plan-29991231T235959Z-ffffff.json"
    os.mkfifo(fifo)
    found: dict = {}
    reader = threading.Thread(target=lambda: found.setdefault("plan", store.latest_plan()), daemon=True)
    reader.start()
    reader.join(10)
    hung = reader.is_alive()
    if hung:  # release the blocked open (a writer end that closes at once), so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert not hung, "latest_plan blocked on a FIFO"
    assert found["plan"]["plan_id"] == "plan-20200101T000000Z-aaaaaa"


def test_a_huge_plan_file_is_not_read_whole(tmp_path):
    store = OutputStore(str(tmp_path))
    store.write_plan("plan-20200101T000000Z-aaaaaa", _good_plan())
    with open(tmp_path / "_plans" / "plan-29991231T235959Z-ffffff.json", "wb") as f:
        f.truncate(64 << 20)  # sparse: no disk, but 64 MB to read
    tracemalloc.start()
    try:
        plan = store.latest_plan()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan["plan_id"] == "plan-20200101T000000Z-aaaaaa"
    assert peak < 16 << 20, f"reading the plans took {peak >> 20} MB"


# -- which plan is the latest ----------------------------------------------------------------------------
def test_of_two_plans_in_the_same_second_the_one_written_last_is_the_latest(tmp_path):
    ids = [new_plan_id() for _ in range(2000)]  # one after the other, many within a second
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    store = OutputStore(str(tmp_path))
    for plan_id in (ids[0], ids[1]):
        store.write_plan(plan_id, {"plan_id": plan_id, "projection": None})
    assert store.latest_plan()["plan_id"] == ids[1]


# -- the run against its plan ----------------------------------------------------------------------------
def test_a_run_that_measures_exactly_like_its_sample_matches_its_plan(tmp_path):
    from pipeline.plan import _per_video
    from pipeline.resume import scan_output
    from pipeline.runner import summarise
    from pipeline.sinks import _manifest

    rows = []
    for i in range(10):  # half decoded and captioned (1 CPU-s, 2 s), half undecodable
        ok = i % 2 == 0
        rows.append({S.VIDEO_ID: f"v{i}", S.URI: f"/v{i}.mp4", S.ERROR: None if ok else "decode: undecodable",
                     S.ERROR_STAGE: None if ok else "decode", S.ERROR_REASON: None if ok else "undecodable",
                     S.NUM_TOKENS: 8 if ok else None, S.TRUNCATED: False if ok else None,
                     S.DECODE_S: 1.0 if ok else None, S.DECODE_CPU_S: 1.0 if ok else None,
                     S.CAPTION_S: 2.0 if ok else None, **{flag: False for flag in S.FLAGS}})
    # The plan measures these rows as its sample (plan_job's own conversion) ...
    plan = {"plan_id": "p", "projection": project(_per_video(rows, {}, 100.0), 10, CLUSTER)}
    # ... and the run writes the very same rows (the writer's manifest, the runner's summary).
    cfg = job_config(str(tmp_path / "list.csv"), str(tmp_path / "out"))
    run = summarise(cfg, "r", [_manifest(pa.Table.from_pylist(rows), "f", 5)], 20.0, {"read": 10}, {}, {},
                    scan_output(str(tmp_path / "out")))["this_run"]
    figures = compare_with_plan(run, plan)["figures"]
    assert figures["failure_rate"]["ratio"] == pytest.approx(1.0)
    for name in ("decode_cpu_s_per_video", "caption_s_per_video"):
        assert figures[name]["ratio"] == pytest.approx(1.0), (name, figures[name])
        assert figures[name]["within"], (name, figures[name])


def test_a_plan_that_projected_zero_is_compared_without_dividing_by_zero():
    videos = [{"decode_cpu_s": 0.0, "caption_s": 0.0, "failure": None}] * 3
    plan = {"plan_id": "p", "projection": project(videos, 5, CLUSTER)}
    compared = compare_with_plan(RUN, plan)
    assert compared["figures"]["failure_rate"]["planned"] == 0.0
    assert compared["figures"]["failure_rate"]["ratio"] is None
    assert compared["figures"]["caption_s_per_video"]["ratio"] is None
    printed = format_summary(_SUMMARY | {"vs_plan": compared})
    assert "against plan p" in printed and "ratio ?" in printed
    # A run that processed nothing gets no comparison, and prints without one.
    assert "against plan" not in format_summary(_SUMMARY | {"vs_plan": None})


# -- the command line ------------------------------------------------------------------------------------
def _main(tmp_path, *flags: str) -> int:
    from jobs.recaption import main

    return main(["--input", str(tmp_path / "missing-list.csv"), "--output", str(tmp_path / "out"), "--model", "tiny",
                 "-q", *flags])


@pytest.mark.parametrize("flags", [("--plan-sample", "0"), ("--plan-sample", "-5"), ("--gpu-hour-cost", "nan"),
                                   ("--gpu-hour-cost", "inf"), ("--cpu-hour-cost=-1",),
                                   ("--cpu-hour-cost=-inf",)])
def test_plan_flags_out_of_range_are_refused_before_anything_runs(tmp_path, capsys, flags):
    assert _main(tmp_path, "--plan", *flags) == 2
    assert "must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_seed_without_plan_is_refused(ray_local, tmp_path, capsys):
    rc = _main(tmp_path, "--plan-seed", "7")  # the list is missing: a run would stop at once, saying so
    err = capsys.readouterr().err
    assert rc == 2 and "--plan" in err, err


# -- plans on the real pipeline ------------------------------------------------------------------------------
def test_a_plan_of_a_list_with_its_own_uri_column_runs(ray_local, video_dir, tmp_path):
    from pipeline.plan import plan_job

    (tmp_path / "list.csv").write_text(f"name,path\nv0,{video_dir}/a.mp4\n")
    cfg = job_config(str(tmp_path / "list.csv"), str(tmp_path / "out"),
                     source={"uri_column": "path", "id_column": "name"})
    plan = plan_job(cfg, sample_size=1)
    assert plan["sample_run"]["videos"] == 1 and plan["sample_ids"] == ["v0"]


def test_a_plan_refuses_a_list_the_run_refuses(ray_local, tmp_path):
    from pipeline.list_ids import IdConflict
    from pipeline.plan import plan_job

    # One id, two videos (missing files: the run refuses the list before opening any).
    (tmp_path / "list.csv").write_text(f"video_id,uri\nv0,{tmp_path}/x.mp4\nv0,{tmp_path}/y.mp4\n")
    cfg = job_config(str(tmp_path / "list.csv"), str(tmp_path / "out"))
    with pytest.raises(IdConflict):
        plan_job(cfg, sample_size=1)
    # With clip windows, a row under the id of another row's window.
    (tmp_path / "list.csv").write_text(f"video_id,uri\nv0,{tmp_path}/x.mp4\nv0_t0-500,{tmp_path}/y.mp4\n")
    cfg = job_config(str(tmp_path / "list.csv"), str(tmp_path / "out"), source={"window_s": 0.5})
    with pytest.raises(IdConflict, match="'v0_t0-500'.*window id of 'v0'"):
        plan_job(cfg, sample_size=1)


# One output with clip windows, three steps (pipeline runs): a plan on the fresh output, the real run (with a
# malformed plan planted as the newest), a plan of the finished output. The list names one video twice.
HOSTILE_PLAN = "plan-99999999T999999Z-zzzzzz"


@pytest.fixture(scope="module")
def windows_job(ray_local, video_dir, tmp_path_factory):
    from pipeline.plan import plan_job
    from pipeline.runner import run_job

    root = tmp_path_factory.mktemp("plan_windows")
    (root / "list.csv").write_text(f"video_id,uri\nv0,{video_dir}/a.mp4\nv0,{video_dir}/a.mp4\nv1,{video_dir}/c.mkv\n")
    out = root / "out"
    cfg = job_config(str(root / "list.csv"), str(out), source={"window_s": 0.5})
    result: dict = {"out": out}
    result["plan"] = plan_job(cfg, sample_size=50, seed=0)
    (out / "_plans" / f"{HOSTILE_PLAN}.json").write_text(json.dumps(
        {"plan_id": HOSTILE_PLAN, "projection": {"videos_per_s": {"value": "fast", "range": [0, 1]}}}))
    try:
        result["summary"], result["run_error"] = run_job(cfg), None
    except Exception as exc:  # noqa: BLE001 - what the run raised is what the test looks at
        result["summary"], result["run_error"] = None, exc
    (out / "_plans" / f"{HOSTILE_PLAN}.json").unlink()
    result["written_bytes"] = sum(p.stat().st_size for folder in ("parquet", "webdataset")
                                  for p in (out / folder).rglob("*") if p.is_file())
    store = OutputStore(str(out))
    result["rows_written"] = sum(store.read_table(f).num_rows for f in store.parquet_files())
    result["plan_after"] = plan_job(cfg, sample_size=50, seed=0)
    return result


def test_a_windows_plan_projects_the_output_the_run_writes(windows_job):
    plan = windows_job["plan"]
    assert windows_job["rows_written"] > 3  # the windows: more rows than the list has
    projected = plan["projection"]["output_bytes"]["value"]
    ratio = projected / windows_job["written_bytes"]
    assert 0.67 < ratio < 1.5, (projected, windows_job["written_bytes"])


def test_a_plan_counts_a_repeated_list_row_once(windows_job):
    plan = windows_job["plan"]
    assert plan["list_rows"] == 3
    assert plan["remaining"] == 2, plan["remaining"]  # v0 and v1


def test_a_malformed_plan_never_fails_a_real_run(windows_job):
    assert windows_job["run_error"] is None, repr(windows_job["run_error"])
    assert windows_job["summary"]["vs_plan"]["plan_id"] == windows_job["plan"]["plan_id"]


def test_a_plan_of_a_finished_windows_output_has_nothing_left(windows_job):
    assert windows_job["rows_written"] > 0
    after = windows_job["plan_after"]
    assert after["already_done"] == after["list_rows"] and after["remaining"] == 0
    assert after["projection"] is None


def test_a_plan_writes_nothing_of_the_output_but_plans(windows_job):
    out = windows_job["out"]
    plans = sorted(p.name for p in (out / "_plans").iterdir())
    assert plans == sorted(f"{windows_job[k]['plan_id']}.json" for k in ("plan", "plan_after"))  # no scratch left
