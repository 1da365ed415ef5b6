"""Sampled frames/s: FrameSampler's decoder path vs a reference-style loader, on generated 1080p and 4K clips.

    python bench/frame_sampling.py [--repeats 3]

Reference-style = what PLLaVA's eval loader does: decord at full resolution, ``vr[i]`` frame by frame,
then a PIL resize of the short side to 336 and a centre crop. Ours = decord scaling inside the decoder
(short side straight to 336) and one ``get_batch``. Clips are libx264 with a 250-frame GOP and B-frames.
Both loaders run interleaved in the same process; the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from pipeline.frames import SamplingConfig, center_crop, sample_frames, segment_indices
from pipeline.sample_videos import write_video

CLIPS = {"1080p": (1920, 1080, 300), "4K": (3840, 2160, 120)}


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


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=16)
    args = parser.parse_args()
    cfg = SamplingConfig(num_frames=args.num_frames, image_size=336)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height, count) in CLIPS.items():
            path = write_video(os.path.join(tmp, f"{name}.mp4"), width, height, count, 30, gop=250)
            ours = sample_frames(path, cfg).frames
            ref = reference_loader(path, args.num_frames, 336)
            diff = np.abs(ours.astype(int) - ref.astype(int)).mean()
            t_ref = timed(lambda p=path: reference_loader(p, args.num_frames, 336), args.repeats)
            t_ours = timed(lambda p=path: sample_frames(p, cfg), args.repeats)
            print(f"{name} ({width}x{height}, {count} frames): reference {args.num_frames / t_ref:.1f} frames/s "
                  f"({t_ref:.2f} s/video), FrameSampler {args.num_frames / t_ours:.1f} frames/s "
                  f"({t_ours:.2f} s/video): {t_ref / t_ours:.2f}x; mean abs pixel difference {diff:.1f}/255")


if __name__ == "__main__":
    main()
