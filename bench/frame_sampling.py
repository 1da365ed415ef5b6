"""Sampled frames/s and pixels: FrameSampler's decoders and resize modes vs the reference's loader, on generated clips.

    python bench/frame_sampling.py [--repeats 3]

Reference = what PLLaVA's recaption loader and processor do: decord at full resolution, ``vr[i]`` frame by
frame, then PIL bicubic to short side 360 / long side 640, PIL bicubic to short side 336, centre crop.
Ours: ``decoder="decord"`` (the default: decord scaling every decoded frame, one ``get_batch``) and
``decoder="pyav"`` (one pass with keyframe seeks, only the sampled frames converted), both with
``resize="fast"`` (scaled in the decoder, straight to the reference's pre-crop size) and decord with
``resize="reference"`` (the reference's chain on full-resolution frames); one decode thread as in a 1-CPU
decode actor, and PyAV with 2 FFmpeg frame threads. Clips are libx264 (I and P frames) with a 250-frame GOP,
a 1080p clip with a 30-frame GOP (where seeking pays), and clips with pixel-scale texture ("detail", where
resize filters differ). Reported: wall seconds and CPU seconds (all threads of this process) per video,
each the best of --repeats, their ratios to the reference measured in the same run, and the mean absolute
difference to the reference's pixels (grey levels of 255; p99 in brackets).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from pipeline.frames import SamplingConfig, reference_pixels, sample_frames, segment_indices
from pipeline.generated_videos import write_video

# name: (width, height, frames, GOP, detail)
CLIPS = {"1080p": (1920, 1080, 300, 250, False), "4K": (3840, 2160, 120, 250, False),
         "1080p-gop30": (1920, 1080, 300, 30, False), "4K detail": (3840, 2160, 48, 250, True),
         "720p detail": (1280, 720, 96, 250, True), "9:16 detail": (1080, 1920, 96, 250, True)}


def reference_loader(path: str, num_frames: int, side: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    frames = np.stack([vr[int(i)].asnumpy() for i in segment_indices(len(vr), num_frames)])
    return reference_pixels(frames, side)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best CPU seconds (this process, all threads) over ``repeats`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=16)
    args = parser.parse_args()
    n = args.num_frames
    configs = {"decord": SamplingConfig(num_frames=n, decoder="decord"),
               "pyav": SamplingConfig(num_frames=n, decoder="pyav"),
               "pyav 2 threads": SamplingConfig(num_frames=n, decoder="pyav", decode_threads=2),
               "decord resize=reference": SamplingConfig(num_frames=n, decoder="decord", resize="reference")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height, count, gop, detail) in CLIPS.items():
            path = write_video(os.path.join(tmp, "clip.mp4"), width, height, count, 30, gop=gop, detail=detail)
            ref = reference_loader(path, n, 336).astype(int)
            t_ref, cpu_ref = timed(lambda p=path: reference_loader(p, n, 336), args.repeats)
            cells = []
            for label, cfg in configs.items():
                video = sample_frames(path, cfg)
                assert list(video.indices) == list(segment_indices(count, n)), "indices differ"
                diff = np.abs(video.frames.astype(int) - ref)
                t, cpu = timed(lambda p=path, c=cfg: sample_frames(p, c), args.repeats)
                cells.append(f"{label} {t:.2f} s ({t_ref / t:.2f}x), CPU {cpu:.2f} s ({cpu_ref / cpu:.2f}x), "
                             f"pixels {diff.mean():.2f} ({np.percentile(diff, 99):.0f})")
            print(f"{name} ({width}x{height}, {count} frames, GOP {gop}): reference {t_ref:.2f} s/video, CPU "
                  f"{cpu_ref:.2f} s; " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
