"""Pool sizes derive from what the cluster has; a setting the cluster cannot hold stops the job at once with a
message naming what was asked and what there is; the default command finishes on a 2-CPU machine."""

import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.resources import LIGHT_RESERVE_CPUS, ResourceError, plan_pipeline
from pipeline.generated_videos import write_video

from helpers import ROOT


def total_cpus(plan):
    return plan.decode_concurrency * plan.decode_num_cpus + plan.caption_concurrency * plan.caption_num_cpus


@pytest.mark.parametrize(("cpus", "gpus"), [(1, 0), (2, 0), (4, 0), (16, 0), (2, 1), (16, 1), (8, 8), (64, 8)])
def test_defaults_fit_every_cluster_shape(cpus, gpus):
    plan = plan_pipeline(cpus, gpus)
    assert total_cpus(plan) + LIGHT_RESERVE_CPUS <= cpus + 1e-9
    assert plan.decode_concurrency >= 1 and plan.caption_concurrency >= 1
    if gpus:
        assert (plan.device, plan.caption_concurrency, plan.caption_num_gpus) == ("cuda", gpus, 1.0)
    else:
        assert (plan.device, plan.caption_concurrency, plan.caption_num_gpus) == ("cpu", 1, 0.0)


def test_decode_actors_take_the_cpus_the_captioners_leave():
    plan = plan_pipeline(16, 1)
    assert (plan.caption_num_cpus, plan.decode_concurrency, plan.decode_num_cpus) == (1.0, 14, 1.0)
    small = plan_pipeline(2, 0)
    assert (small.decode_concurrency, small.decode_num_cpus, small.caption_num_cpus) == (1, 0.75, 0.75)


def test_explicit_settings_are_kept_when_they_fit_and_refused_when_not():
    plan = plan_pipeline(2, 0, decode_concurrency=1, decode_num_cpus=0.5, caption_num_cpus=0.5)
    assert (plan.decode_concurrency, plan.decode_num_cpus, plan.caption_num_cpus) == (1, 0.5, 0.5)
    with pytest.raises(ResourceError) as info:
        plan_pipeline(2, 0, decode_concurrency=2, decode_num_cpus=1.0, caption_num_cpus=1.0)
    text = str(info.value)
    assert "decode actors 2 x (1 CPU)" in text and "caption actors 1 x (1 CPU)" in text
    assert "= 3.5 CPUs" in text and "the cluster has 2 CPUs and 0 GPUs" in text
    with pytest.raises(ResourceError, match="2 GPUs, but the cluster has 16 CPUs and 1 GPUs"):
        plan_pipeline(16, 1, caption_concurrency=2)


def recaption(args, timeout):
    return subprocess.run([sys.executable, "jobs/recaption.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small_lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    videos = [write_video(str(root / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(3)]
    (root / "list.txt").write_text("\n".join(videos) + "\n")
    pq.write_table(pa.table({"uri": videos}), root / "list.parquet")
    (root / "two_cpus.yaml").write_text("resources: {ray_num_cpus: 2}\ngeneration: {max_new_tokens: 8}\n"
                                        "sampling: {num_frames: 4}\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("listing", ["list.txt", "list.parquet"])
def test_the_default_command_finishes_on_two_cpus(small_lists, listing):
    """No resource settings at all (the README's first example, sized down to two CPUs)."""
    root = small_lists
    out = root / f"out_{listing}"
    result = recaption(["--input", str(root / listing), "--output", str(out), "--model", "tiny",
                        "--config", str(root / "two_cpus.yaml")], timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "this run: 3 list rows read; 3 videos (3 ok, 0 failed)" in result.stdout
    # Ray's messages that the user cannot act on stay out of the job's output.
    for noise in ("Token authentication is enabled", "Progress bars disabled", "`ray_remote_args` is deprecated"):
        assert noise not in result.stdout + result.stderr, noise


@pytest.mark.slow
def test_an_oversized_setting_fails_within_seconds_saying_why(small_lists, tmp_path):
    (tmp_path / "big.yaml").write_text("resources: {ray_num_cpus: 2, decode_concurrency: 8, decode_num_cpus: 1}\n")
    started = time.monotonic()
    result = recaption(["--input", str(small_lists / "list.txt"), "--output", str(tmp_path / "out"), "--model", "tiny",
                        "--config", str(tmp_path / "big.yaml")], timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "decode actors 8 x (1 CPU)" in result.stderr and "the cluster has 2 CPUs" in result.stderr
    # Refused at planning, not after a wait for the scheduler (whose own limit is minutes): a loose bound, as
    # a slow CI machine takes a while only to start Python, Ray and the job.
    assert time.monotonic() - started < 150
    assert not (tmp_path / "out" / "parquet").exists()


def test_training_workers_leave_room_for_their_decode_actor():
    from pipeline.resources import plan_training_cpus

    assert plan_training_cpus(2, 0, num_workers=2, use_gpu=False) == 0.5
    assert plan_training_cpus(16, 8, num_workers=8, use_gpu=True) == 1.0
    with pytest.raises(ResourceError, match=r"training workers 2 x \(1 CPU\).*the cluster has 2 CPUs"):
        plan_training_cpus(2, 0, num_workers=2, use_gpu=False, cpus_per_worker=1.0)
    with pytest.raises(ResourceError, match="GPUs"):
        plan_training_cpus(16, 1, num_workers=2, use_gpu=True)


@pytest.mark.slow
def test_training_with_two_workers_and_no_resource_settings_finishes_on_two_cpus(tmp_path):
    """`jobs/train_lora.py --num-workers 2` used to wait forever on 2 CPUs (two 1-CPU workers, no room for the
    decode actor that feeds them)."""
    import json

    items = []
    for i in range(2):
        write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 16, 8, seed=i)
        items.append({"video": f"v{i}.mp4", "QA": [{"q": "What moves?", "a": f"a square moves {i}"}]})
    (tmp_path / "qa.json").write_text(json.dumps(items))
    (tmp_path / "small.yaml").write_text("lora: {r: 4, alpha: 8}\noptim: {batch_size: 1}\n")
    result = subprocess.run([sys.executable, "jobs/train_lora.py", "--data", str(tmp_path / "qa.json"),
                             "--video-root", str(tmp_path), "--model", "tiny", "--output", str(tmp_path / "run"),
                             "--num-workers", "2", "--max-steps", "1", "--num-frames", "4",
                             "--config", str(tmp_path / "small.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert os.path.isdir(tmp_path / "run" / "weights")


def test_an_actor_larger_than_every_node_is_refused_though_the_totals_fit():
    two_single_gpu_nodes = [(8.0, 1.0), (8.0, 1.0)]
    plan_pipeline(16, 2, nodes=two_single_gpu_nodes)  # one caption actor per GPU: fits
    with pytest.raises(ResourceError, match=r"needs 1 CPUs and 2 GPUs on one node.*never spans nodes"):
        plan_pipeline(16, 2, caption_num_gpus=2, nodes=two_single_gpu_nodes)  # tensor parallel 2 on 1-GPU nodes
    with pytest.raises(ResourceError, match="needs 6 CPUs and 0 GPUs on one node"):
        plan_pipeline(8, 0, caption_num_cpus=6, nodes=[(4.0, 0.0), (4.0, 0.0)])


def test_derived_sizes_pack_onto_the_nodes_and_autoscaling_skips_the_check():
    from pipeline.resources import _unplaced

    nodes = [(3.0, 0.0), (3.0, 0.0), (3.0, 0.0)]  # 9 CPUs, no node larger than 3
    plan = plan_pipeline(9, 0, nodes=nodes)
    assert plan.caption_num_cpus <= 3 and _unplaced(plan.asks(), nodes) is None
    assert plan.decode_concurrency >= 3
    # An autoscaling cluster grows for waiting actors: asks beyond what is there now are allowed.
    grown = plan_pipeline(2, 0, caption_concurrency=4, caption_num_cpus=2, check=False, nodes=[(2.0, 0.0)])
    assert (grown.caption_concurrency, grown.caption_num_cpus) == (4, 2)
