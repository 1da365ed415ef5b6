"""The plan command: a seeded sample of the list measured on the real pipeline, projections with bootstrap
ranges, suggestions, the plan written under ``_plans/`` only, and a later run compared with it."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from helpers import job_config
from pipeline import schema as S
from pipeline.plan import format_plan, project, sample_key, smallest_keys, suggest
from pipeline.plan_check import compare_with_plan

CLUSTER = {"caption_actors": 2, "gpus_per_caption_actor": 1.0, "decode_cpus": 4.0, "pool_cpus": 6.0}


def _videos(decode, caption, failures=None, size=1000, out=100):
    failures = failures or [None] * len(decode)
    return [{"decode_cpu_s": d, "caption_s": c, "failure": f, "bytes_read": size, "output_bytes": out, "tokens": 50}
            for d, c, f in zip(decode, caption, failures)]


# -- projection math -----------------------------------------------------------------------------------
def test_projections_follow_from_fixed_measurements():
    p = project(_videos([1.0] * 4, [2.0] * 4), remaining=100, cluster=CLUSTER, overhead_s=10.0,
                gpu_hour_cost=3.0, cpu_hour_cost=0.1)
    # Caption-bound: 100 videos x 2 s over 2 actors = 100 s; decode: 100 x 1 CPU-s over 4 CPUs = 25 s.
    wall = 100 + 10
    assert p["bottleneck"] == "caption" and p["wall_s"]["value"] == pytest.approx(wall)
    assert p["videos_per_s"]["value"] == pytest.approx(100 / wall)
    assert p["gpu_hours"]["value"] == pytest.approx(2 * 1 * wall / 3600)
    assert p["cpu_hours"]["value"] == pytest.approx(6 * wall / 3600)
    assert p["decode_cpu_hours"]["value"] == pytest.approx(100 / 3600)
    assert p["decode_cores_per_caption_actor"]["value"] == pytest.approx(0.5)
    assert p["decode_cores_available_per_caption_actor"] == 2.0
    assert p["bytes_read"]["value"] == 100 * 1000 and p["output_bytes"]["value"] == 100 * 100
    assert p["cost"]["value"] == pytest.approx(3.0 * 2 * wall / 3600 + 0.1 * 6 * wall / 3600)
    assert p["failure_rate"]["value"] == 0.0
    # A sample without spread: every resample gives the same figure.
    assert p["wall_s"]["range"] == pytest.approx([wall, wall])


def test_ranges_come_from_resampling_the_sample_and_failures_scale_with_the_list():
    videos = _videos([0.5, 1.0, 4.0, 0.2], [1.0, 3.0, 2.0, 0.0], [None, None, None, "decode/undecodable"])
    p = project(videos, remaining=1000, cluster=CLUSTER, seed=7)
    for key in ("wall_s", "videos_per_s", "gpu_hours", "decode_cpu_s_per_video", "failure_rate"):
        low, high = p[key]["range"]
        assert low <= p[key]["value"] <= high and low < high, key
    assert p["failures:decode/undecodable"]["value"] == pytest.approx(250)
    low, high = p["failures:decode/undecodable"]["range"]
    assert 0 <= low < 250 < high <= 1000
    assert project(videos, 1000, CLUSTER, seed=7) == p  # seeded: the same plan twice
    with pytest.raises(ValueError, match="no sampled videos"):
        project([], 10, CLUSTER)
    with pytest.raises(ValueError, match="runs nothing"):
        project(videos, 10, {**CLUSTER, "decode_cpus": 0})


def test_a_decode_bound_sample_suggests_more_decode_actors_as_yaml():
    videos = _videos([8.0] * 3, [2.0] * 3)
    p = project(videos, 100, CLUSTER)
    assert p["bottleneck"] == "decode"
    settings = {"decode_concurrency": 4, "decode_num_cpus": 1.0, "caption_concurrency": 2, "max_new_tokens": 100,
                "engine": "hf", "vllm_batch_size": 32}
    lines, layer = suggest(p, settings, videos)
    # One caption actor needs 8 / 2 = 4 decode cores and has 2: 8 decode actors of 1 CPU for 2 caption actors.
    assert layer == {"resources": {"decode_concurrency": 8}} and "decode-bound" in lines[0]
    truncated = [dict(v, truncated=True) for v in _videos([0.1] * 3, [2.0] * 3)]
    lines, layer = suggest(project(truncated, 100, CLUSTER), settings, truncated)
    assert layer == {"generation": {"max_new_tokens": 200}}


def test_the_sample_is_seeded_and_does_not_depend_on_the_lists_order():
    ids = [f"v{i}" for i in range(50)]
    table = pa.table({S.VIDEO_ID: ids, "n": list(range(50))})
    first = smallest_keys(table, 7, seed=3).column(S.VIDEO_ID).to_pylist()
    shuffled = smallest_keys(table.take(pa.array(list(range(49, -1, -1)))), 7, seed=3)
    assert shuffled.column(S.VIDEO_ID).to_pylist() == first
    assert first == sorted(ids, key=lambda v: sample_key(3, v))[:7]
    assert smallest_keys(table, 7, seed=4).column(S.VIDEO_ID).to_pylist() != first


def test_a_run_is_compared_with_its_plan_figure_by_figure():
    plan = {"plan_id": "plan-x", "projection": project(_videos([1.0, 2.0], [2.0, 3.0]), 10, CLUSTER)}
    run = {"videos": 10, "failed": 1, "videos_per_s": 0.5, "decode_cpu_s_per_video": 1.5, "caption_s_per_video": 9.0}
    compared = compare_with_plan(run, plan)
    figures = compared["figures"]
    assert compared["plan_id"] == "plan-x"
    decode, caption = figures["decode_cpu_s_per_video"], figures["caption_s_per_video"]
    assert decode["ratio"] == pytest.approx(1.0) and decode["within"]
    assert caption["ratio"] == pytest.approx(9.0 / 2.5) and not caption["within"]
    assert figures["failure_rate"]["actual"] == 0.1
    assert compare_with_plan(run, {"plan_id": "p", "projection": None}) is None


# -- a plan on the real pipeline -------------------------------------------------------------------------
def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_plan_measures_a_sample_writes_only_its_plan_and_the_run_is_compared_with_it(ray_local, video_dir,
                                                                                          tmp_path):
    from pipeline.plan import plan_job
    from pipeline.runner import format_summary, run_job

    names = [f"{video_dir}/{n}" for n in ("a.mp4", "b.mp4", "c.mkv")] + [str(tmp_path / "gone.mp4")]
    (tmp_path / "list.csv").write_text("video_id,uri\n" + "".join(f"v{i},{u}\n" for i, u in enumerate(names)))
    out = tmp_path / "out"
    cfg = job_config(str(tmp_path / "list.csv"), str(out))
    plan = plan_job(cfg, sample_size=3, seed=1, gpu_hour_cost=2.0, cpu_hour_cost=0.05)
    # Nothing of the output but the plan: no Parquet, no shards, no lease, no scratch left.
    files = _files(out)
    assert files == [f"_plans/{plan['plan_id']}.json"]
    assert json.loads((out / files[0]).read_text())["projection"] == json.loads(json.dumps(plan["projection"]))
    assert (plan["list_rows"], plan["already_done"], plan["remaining"], plan["sample_size"]) == (4, 0, 4, 3)
    expected = sorted([f"v{i}" for i in range(4)], key=lambda v: sample_key(1, v))[:3]
    assert plan["sample_ids"] == expected and plan["sample_run"]["videos"] == 3  # the seeded sample was run
    assert plan["projection"]["failure_rate"]["value"] == ("v3" in expected) / 3  # v3's video is missing
    p = plan["projection"]
    for key in ("wall_s", "videos_per_s", "gpu_hours", "cpu_hours", "decode_cpu_s_per_video", "caption_s_per_video",
                "output_bytes", "bytes_read", "failure_rate", "cost"):
        assert p[key]["value"] is not None and p[key]["range"][0] <= p[key]["value"] <= p[key]["range"][1], key
    assert p["caption_s_per_video"]["value"] > 0 and p["output_bytes"]["value"] > 0
    assert p["gpu_hours"]["value"] == 0 and plan["cluster"]["gpus_per_caption_actor"] == 0  # CPU here
    actor = plan["per_caption_actor"]
    assert actor["captions_per_s"] == pytest.approx(1 / p["caption_s_per_video"]["value"]) and actor["batch_size"] == 2
    assert actor["decode_actors_available"] == 1 and actor["decode_actors_needed"] >= 1
    printed = format_plan(plan)
    assert "wall time:" in printed and "GPU-hours:" in printed and "cost:" in printed

    # The real run: its summary compares its figures with the plan's, from its own measurements.
    summary = run_job(cfg)
    compared = summary["vs_plan"]
    assert compared["plan_id"] == plan["plan_id"]
    for figure, key in (("videos_per_s", "videos_per_s"), ("decode_cpu_s_per_video", "decode_cpu_s_per_video"),
                        ("caption_s_per_video", "caption_s_per_video")):
        f = compared["figures"][figure]
        assert f["actual"] == summary["this_run"][key] and f["planned"] == p[figure]["value"]
        assert f["ratio"] == pytest.approx(f["actual"] / f["planned"], rel=1e-3)
    assert "against plan" in format_summary(summary)
    # A plan of a finished list has nothing to run.
    again = plan_job(cfg, sample_size=3)
    assert again["remaining"] == 0 and again["projection"] is None and math.isfinite(again["list_rows"])
