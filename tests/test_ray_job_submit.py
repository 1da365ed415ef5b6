"""`ray job submit --working-dir . -- python jobs/recaption_inter4k.py ...` against a `ray start --head` cluster."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import ROOT, free_port
from pipeline import schema as S
from pipeline.generated_videos import write_video

BIN = os.path.dirname(sys.executable)


@pytest.fixture()
def ray_head():
    """A separate Ray cluster started the way operators start one; torn down by killing its own processes
    only (``ray stop`` would also stop the test session's local Ray)."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # Every port explicit: the test session's own local Ray already holds the default agent ports.
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    subprocess.run([f"{BIN}/ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats", *ports],
                   env=env, check=True, capture_output=True, timeout=180)
    yield f"http://127.0.0.1:{dashboard}", env
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
            proc.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_inter4k_job_runs_under_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    data = tmp_path / "Inter4K"
    uhd = data / "60fps" / "UHD"
    uhd.mkdir(parents=True)
    write_video(str(uhd / "973.mp4"), 384, 216, 24, 24, seed=1)
    write_video(str(uhd / "974.mkv"), 384, 216, 24, 24, seed=2)
    (data / "annotations.json").write_text(json.dumps([{"video_name": n} for n in ("973", "974", "975")]))
    out = tmp_path / "captions"
    submit = [f"{BIN}/ray", "job", "submit", "--address", address, "--working-dir", ROOT, "--",
              "python", "jobs/recaption_inter4k.py", "--data-root", str(data), "--output", str(out),
              "--model", "tiny", "--max-new-tokens", "8", "--batch-size", "2", "--config", str(tmp_path / "small.yaml")]
    (tmp_path / "small.yaml").write_text("resources: {decode_concurrency: 1, decode_num_cpus: 0.5, caption_num_cpus: 0.5}\n")
    deadline = time.time() + 120
    while True:
        result = subprocess.run(submit, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                                timeout=600)
        # Right after `ray start` the head may have no job agent yet; the job was not created, so ask again.
        if "No available agent" not in result.stderr + result.stdout or time.time() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout.lower()
    files = sorted((out / "parquet").glob("*.parquet"))
    rows = {r[S.VIDEO_ID]: r for r in pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()}
    assert sorted(rows) == ["973", "974", "975"]
    assert rows["973"][S.CAPTION] and rows["974"][S.URI].endswith("974.mkv")
    assert rows["975"][S.ERROR_STAGE] == "source"
    assert rows["973"][S.POOLING] == "16x12x12" and rows["973"][S.NUM_FRAMES] == 16
    assert (out / "webdataset").is_dir()
