"""Cluster metrics: a run's counts reach the Ray metrics endpoint a Prometheus server would scrape, and the run
summary says what the run cost in GPU-hours."""

from __future__ import annotations

import re
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from helpers import job_config
from pipeline.generated_videos import write_video


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def samples(text: str, name: str, run_id: str | None = None) -> dict[str, float]:
    """``{labels: value}`` of one metric's samples (of one run, when given)."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and (run_id is None or f'run_id="{run_id}"' in match.group(1)):
            found[match.group(1)] = float(match.group(2))
    return found


def value_of(found: dict[str, float], **labels: str) -> float:
    return sum(v for k, v in found.items() if all(f'{key}="{val}"' in k for key, val in labels.items()))


def test_a_runs_counts_reach_the_metrics_endpoint(ray_local, tmp_path):
    from pipeline.runner import run_job

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 96, 72, 8, 8, seed=i) for i in range(3)]
    (tmp_path / "list.txt").write_text("\n".join(videos + [str(tmp_path / "missing.mp4")]) + "\n")
    summary = run_job(job_config(str(tmp_path / "list.txt"), str(tmp_path / "out")))
    run = summary["this_run"]
    assert (run["ok"], run["failed"]) == (3, 1)
    assert run["gpus"] == 0 and run["gpu_hours"] == 0 and run["videos_per_gpu_hour"] is None  # CPU only
    # Decode cost per video, and the decode cores that keep one caption actor busy (from the same figures).
    assert run["decode_cpu_s"] > 0 and run["decode_cpu_s_per_video"] == pytest.approx(run["decode_cpu_s"] / 3, abs=1e-3)
    assert run["decode_cores_per_caption_actor"] == pytest.approx(
        run["decode_cpu_s_per_video"] / run["caption_s_per_video"], abs=0.02)
    rows = pq.read_table(str(tmp_path / "out" / "parquet")).to_pylist()
    assert sorted(len(r["frame_indices"] or []) for r in rows) == [0, 4, 4, 4]  # the missing video: none
    assert all((r["decode_cpu_s"] is None) == (r["error"] is not None) for r in rows)

    port = ray_local.nodes()[0]["MetricsExportPort"]
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # the agent publishes every few seconds
        text = scrape(port)
        videos_seen = samples(text, "ray_pllava_videos_total", summary["run_id"])
        if (value_of(videos_seen, status="ok") == 3 and samples(text, "ray_pllava_caption_batch_size_count")
                and samples(text, "ray_pllava_caption_seconds_count", summary["run_id"])):
            break
        time.sleep(2)
    videos_seen = samples(text, "ray_pllava_videos_total", summary["run_id"])
    assert value_of(videos_seen, status="ok") == 3
    assert value_of(videos_seen, status="failed", reason="read/not_found") == 1
    assert value_of(samples(text, "ray_pllava_tokens_generated_total", summary["run_id"])) == run["tokens_generated"]
    assert value_of(samples(text, "ray_pllava_files_written_total", summary["run_id"])) == run["files_written"]
    assert value_of(samples(text, "ray_pllava_decode_seconds_count", summary["run_id"])) == 4
    assert value_of(samples(text, "ray_pllava_caption_seconds_count", summary["run_id"])) == 3
    assert value_of(samples(text, "ray_pllava_caption_seconds_sum", summary["run_id"])) > 0
    # The caption actors' calls (batches of at most 2 good videos here) are exported too.
    assert 1 <= value_of(samples(text, "ray_pllava_caption_batch_size_sum"), engine="hf")


def test_gpu_hours_are_the_caption_gpus_over_the_wall_time():
    from pipeline.resume import OutputState, scan_output
    from pipeline.runner import format_summary, summarise

    cfg = job_config("list.txt", "/nonexistent/out")
    written = [{"rows": 10, "ok": 9, "failed": {"decode/undecodable": 1}, "flagged": {}, "duplicates": 0, "file": "f",
                "decode_s": 1.0, "caption_s": 2.0, "tokens": 100, "truncated": 0}]
    state: OutputState = scan_output("/nonexistent/out")
    summary = summarise(cfg, "r", written, 1800.0, {"read": 10}, {}, {}, state, gpus=4)
    assert summary["this_run"]["gpu_hours"] == 2.0
    assert summary["this_run"]["decode_cores_per_caption_actor"] is None  # no decode figures: none made up
    assert summary["this_run"]["videos_per_gpu_hour"] == 5.0
    assert "2.0000 GPU-hours on 4 GPUs, 5.0 videos per GPU-hour" in format_summary(summary)
    written[0].update(decode_cpu_s=3.0, decoded=10, captioned=9)  # 0.3 CPU-s per video, 2/9 s per caption
    run = summarise(cfg, "r", written, 1800.0, {"read": 10}, {}, {}, state, gpus=4)["this_run"]
    assert (run["decode_cpu_s_per_video"], run["decode_cores_per_caption_actor"]) == (0.3, 1.35)
