"""The single-video command: a generated mp4 in, a caption printed. One test runs it as a subprocess (as a user
does); the others call its ``main(argv)``."""

import os
import re
import subprocess
import sys

import pytest

from jobs.caption_video import main
from model import GenerationSettings, caption_videos, load_pllava
from model.prompts import DEFAULT_RECAPTION_QUERY
from pipeline.frames import SamplingConfig, sample_frames

from helpers import ROOT


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jobs.caption_video", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


@pytest.mark.slow
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


def library_caption(model_dir, video, query, tokens, num_frames=4, template=None, system=None):
    model, processor = load_pllava(model_dir, device="cpu", num_frames=num_frames, template=template)
    if system is not None:
        processor.system_prompt = system
    frames = sample_frames(video, SamplingConfig(num_frames=num_frames)).frames[None]
    return caption_videos(model, processor, frames, query, GenerationSettings(max_new_tokens=tokens))[0]


def test_prompt_file_system_prompt_template_and_num_frames(tiny_dir, video_dir, tmp_path, capsys, caplog):
    prompt, system = tmp_path / "p.txt", tmp_path / "s.txt"
    prompt.write_text("Describe the motion.")
    system.write_text("You watch videos.")
    video = os.path.join(video_dir, "c.mkv")
    with caplog.at_level("INFO"):
        code = main([video, "--model-dir", tiny_dir, "--prompt-file", str(prompt), "--system-prompt-file",
                     str(system), "--template", "vicuna_videoqa", "--num-frames", "8", "--max-new-tokens", "6", "-v"])
    assert code == 0
    expected = library_caption(tiny_dir, video, "Describe the motion.", 6, 8, "vicuna_videoqa", "You watch videos.")
    assert capsys.readouterr().out.rstrip("\n") == expected
    assert "8 frames, pooling 4x6x6" in caplog.text and re.search(r"caption [0-9.]+s, [0-9]+ tokens", caplog.text)


@pytest.mark.parametrize(("name", "reason"), [("missing.mp4", "not_found"), ("broken.mp4", "undecodable"),
                                              ("folder", "not_a_file")])
def test_unreadable_video_is_a_clear_error(tiny_dir, tmp_path, capsys, name, reason):
    path = tmp_path / name
    if name == "broken.mp4":
        path.write_text("not a video")
    if name == "folder":
        path.mkdir()
    assert main([str(path), "--model-dir", tiny_dir, "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot read {path}: {reason}:" in err


def test_captions_a_video_on_s3_as_it_captions_the_same_file_on_disk(s3_endpoint, tiny_dir, video_dir, capsys):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("single-video")
    local = os.path.join(video_dir, "b.mp4")
    fs.put(local, "single-video/clips/b.mp4")
    assert main(["s3://single-video/clips/b.mp4", "--model-dir", tiny_dir, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == library_caption(tiny_dir, local, DEFAULT_RECAPTION_QUERY, 6)
