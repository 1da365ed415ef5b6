"""End-to-end videos/s: the Ray Data pipeline vs a plain sequential loop, same tiny model, same videos.

    python bench/pipeline_throughput.py [--videos 32] [--new-tokens 32] [--batch-size 8]

The loop decodes a batch, then captions it, then the next (no overlap). The pipeline runs decode actors
and a caption actor concurrently, plus writes Parquet. Ray is started before timing; the pipeline's
time includes starting its actors and loading the model in them (the loop loads its model before timing,
so the comparison is conservative for the pipeline). Both runs use the same machine back to back.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from model import GenerationSettings, generate_captions, load_pllava
from model.tiny import ensure_tiny_pllava
from pipeline.config import JobConfig
from pipeline.frames import SamplingConfig, sample_frames
from pipeline.cluster import init_ray
from pipeline.runner import run_job
from pipeline.generated_videos import write_video

import numpy as np


def sequential(paths: list[str], batch_size: int, num_frames: int, settings: GenerationSettings) -> float:
    model, processor = load_pllava(ensure_tiny_pllava(), device="cpu", num_frames=num_frames)
    started = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        frames = np.stack([sample_frames(p, SamplingConfig(num_frames=num_frames)).frames
                           for p in paths[i : i + batch_size]])
        generate_captions(model, processor, frames, "Describe the video.", settings)
    return time.perf_counter() - started


def pipeline(paths: list[str], out: str, batch_size: int, num_frames: int, new_tokens: int) -> float:
    listing = os.path.join(out, "list.txt")
    with open(listing, "w", encoding="utf-8") as f:
        f.write("\n".join(paths))
    cfg = JobConfig.from_dict({
        "source": {"input": listing},
        "output": {"output": os.path.join(out, "captions")},
        "model": {"model": "tiny"},
        "prompt": "Describe the video.",
        "sampling": {"num_frames": num_frames},
        "generation": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens},
        "resources": {"batch_size": batch_size, "decode_concurrency": 1, "decode_num_cpus": 0.5,
                      "caption_num_cpus": 1, "rows_per_file": 64},
    })
    started = time.perf_counter()
    summary = run_job(cfg)
    assert summary["this_run"]["ok"] == len(paths)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=16)
    args = parser.parse_args()
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_video(os.path.join(tmp, f"v{i}.mp4"), 1280, 720, 90, 30, seed=i) for i in range(args.videos)]
        init_ray()
        t_seq = sequential(paths, args.batch_size, args.num_frames, settings)
        t_ray = pipeline(paths, tmp, args.batch_size, args.num_frames, args.new_tokens)
    n = args.videos
    print(f"{n} videos 1280x720, {args.num_frames} frames, batch {args.batch_size}, {args.new_tokens} tokens each, "
          f"{os.cpu_count()} CPUs")
    print(f"sequential loop: {n / t_seq:.2f} videos/s ({t_seq:.1f} s)")
    print(f"Ray pipeline:    {n / t_ray:.2f} videos/s ({t_ray:.1f} s, actor start and model load included): "
          f"{t_seq / t_ray:.2f}x")


if __name__ == "__main__":
    main()
