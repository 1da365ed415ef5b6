"""Sampled frames/s: FrameSampler's decoders vs a reference-style loader, on generated 1080p and 4K clips.

    python bench/frame_sampling.py [--repeats 3]

Reference-style = what PLLaVA's eval loader does: decord at full resolution, ``vr[i]`` frame by frame,
then a PIL resize of the short side to 336 and a centre crop. Ours: ``decoder="decord"`` (the default:
decord scaling every decoded frame, one ``get_batch``) and ``decoder="pyav"`` (one pass with keyframe
seeks, only the sampled frames converted, straight to 336), with one decode thread as in a 1-CPU decode
actor and with 2 FFmpeg frame threads. Clips are libx264 (as the encoder writes them: I and P frames) with a
250-frame GOP, plus a 1080p clip with a 30-frame GOP (where seeking pays). Reported: wall seconds and CPU
seconds (all threads of this process) per video, each the best of --repeats, and their ratios to the
reference measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from pipeline.frames import SamplingConfig, center_crop, sample_frames, segment_indices
from pipeline.sample_videos import write_video

CLIPS = {"1080p": (1920, 1080, 300, 250), "4K": (3840, 2160, 120, 250), "1080p-gop30": (1920, 1080, 300, 30)}


def reference_loader(path: str, num_frames: int, side: int) -> np.ndarray:
    import decord
    from PIL import Image

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    frames = []
    for i in segment_indices(len(vr), num_frames):
        image = Image.fromarray(vr[int(i)].asnumpy())
        scale = side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        frames.append(np.asarray(image))
    return center_crop(np.stack(frames), side)


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
    decoders = {"pyav": SamplingConfig(num_frames=args.num_frames, image_size=336, decoder="pyav"),
                "pyav 2 threads": SamplingConfig(num_frames=args.num_frames, image_size=336, decoder="pyav",
                                                 decode_threads=2),
                "decord": SamplingConfig(num_frames=args.num_frames, image_size=336, decoder="decord")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height, count, gop) in CLIPS.items():
            path = write_video(os.path.join(tmp, f"{name}.mp4"), width, height, count, 30, gop=gop)
            ref = reference_loader(path, args.num_frames, 336)
            t_ref, cpu_ref = timed(lambda p=path: reference_loader(p, args.num_frames, 336), args.repeats)
            cells = []
            for decoder, cfg in decoders.items():
                video = sample_frames(path, cfg)
                assert list(video.indices) == list(segment_indices(count, args.num_frames)), "indices differ"
                diff = np.abs(video.frames.astype(int) - ref.astype(int)).mean()
                t, cpu = timed(lambda p=path, c=cfg: sample_frames(p, c), args.repeats)
                cells.append(f"{decoder} {t:.2f} s ({t_ref / t:.2f}x), CPU {cpu:.2f} s ({cpu_ref / cpu:.2f}x), "
                             f"mean abs difference {diff:.1f}/255")
            print(f"{name} ({width}x{height}, {count} frames, GOP {gop}): reference {t_ref:.2f} s/video, CPU "
                  f"{cpu_ref:.2f} s; " + "; ".join(cells), flush=True)

if __name__ == "__main__":
    main()
