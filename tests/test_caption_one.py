"""The single-video command: a generated mp4 in, a caption printed."""

import os
import subprocess
import sys

import pytest

from model import GenerationSettings, caption_videos, load_pllava
from pipeline.frames import SamplingConfig, sample_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.caption_one", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def test_captions_a_published_checkpoint_like_the_reference_loader(tiny_lora_dir, video_dir):
    # A published-layout folder (LoRA un-merged under PEFT names) captions with the reference's 16 frames and
    # 16x12x12 pooling, whatever its config.json says (the tiny config says 4 frames, 4x6x6).
    video = os.path.join(video_dir, "a.mp4")
    result = run_cli(video, "--model-dir", tiny_lora_dir, "--lora-alpha", "4", "--max-new-tokens", "12",
                     "--prompt", "What happens?", "-v")
    assert result.returncode == 0, result.stderr
    assert "published PLLaVA checkpoint: 16 frames, pooling 16x12x12" in result.stderr
    model, processor = load_pllava(tiny_lora_dir, lora_alpha=4, device="cpu", num_frames=16, pooling_shape=(16, 12, 12))
    frames = sample_frames(video, SamplingConfig(num_frames=16)).frames[None]
    expected = caption_videos(model, processor, frames, "What happens?", GenerationSettings(max_new_tokens=12))[0]
    assert result.stdout.rstrip("\n") == expected


def test_prompt_file_system_prompt_template_and_num_frames(tiny_dir, video_dir, tmp_path):
    prompt, system = tmp_path / "p.txt", tmp_path / "s.txt"
    prompt.write_text("Describe the motion.")
    system.write_text("You watch videos.")
    video = os.path.join(video_dir, "c.mkv")
    result = run_cli(video, "--model-dir", tiny_dir, "--prompt-file", str(prompt), "--system-prompt-file",
                     str(system), "--template", "vicuna_videoqa", "--num-frames", "8", "--max-new-tokens", "6", "-v")
    assert result.returncode == 0, result.stderr
    model, processor = load_pllava(tiny_dir, device="cpu", num_frames=8, template="vicuna_videoqa")
    processor.system_prompt = "You watch videos."
    frames = sample_frames(video, SamplingConfig(num_frames=8)).frames[None]
    expected = caption_videos(model, processor, frames, "Describe the motion.", GenerationSettings(max_new_tokens=6))
    assert result.stdout.rstrip("\n") == expected[0]
    assert "load" in result.stderr and "tokens" in result.stderr


@pytest.mark.parametrize("name", ["missing.mp4", "broken.mp4"])
def test_unreadable_video_is_a_clear_error(tiny_dir, tmp_path, name):
    path = tmp_path / name
    if name == "broken.mp4":
        path.write_text("not a video")
    result = run_cli(str(path), "--model-dir", tiny_dir, "--max-new-tokens", "4")
    assert result.returncode == 2
    assert f"cannot read {path}" in result.stderr


def test_captions_a_video_on_s3(s3_endpoint, tiny_dir, video_dir):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("single-video")
    fs.put(os.path.join(video_dir, "b.mp4"), "single-video/clips/b.mp4")
    result = run_cli("s3://single-video/clips/b.mp4", "--model-dir", tiny_dir, "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
