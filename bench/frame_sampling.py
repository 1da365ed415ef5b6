"""Sampled frames/s, CPU-seconds per video and pixels: FrameSampler's decoders, frame modes and resize modes
against the decode-all floor and the reference's loader, on generated clips.

    python bench/frame_sampling.py [--repeats 3] [--clips 4K-B,1080p-B]

Baselines, measured in the same run:

- reference: what PLLaVA's recaption loader and processor do: decord at full resolution, ``vr[i]`` frame by
  frame, then PIL bicubic to short side 360 / long side 640, PIL bicubic to short side 336, centre crop;
- decode-all: PyAV decoding every frame up to the last sampled one, converting only the sampled ones (the
  floor for exact frames when every frame is decoded).

Ours: ``decoder="decord"`` (the default: decord scaling every decoded frame, one ``get_batch``);
``decoder="pyav"`` exact (keyframe seeks; the packets that hold no sampled frame decoded with FFmpeg's
``skip_frame=NONREF``, so non-reference B-frames are never decoded; pixels identical to decode-all);
``decoder="pyav", snap="reference_frames"`` (each segment's frame moved to its nearest I/P frame, every B-frame
skipped); PyAV exact with 2 frame threads; and decord with ``resize="reference"``. One decode thread unless
said, as in a 1-CPU decode actor. Clips: long-GOP libx264 with 3 B-frames (b-pyramid) at 4K and 1080p, I/P-only
clips (a 250-frame and a 30-frame GOP), and clips with pixel-scale texture ("detail", where resize filters
differ). Per cell: wall seconds and CPU seconds (all threads of this process) per video, each the best of
--repeats; the ratio of CPU seconds to decode-all's (lower is better) and the reference's CPU over ours
(higher is better); the mean absolute difference to the reference's pixels (grey levels of 255; p99 in
brackets), and for snap the frames moved. The last line per clip: decode cores one caption actor needs at a
given caption rate (--captions-per-s) with each mode.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from pipeline.decode_pyav import decode_in_order
from pipeline.frames import SamplingConfig, decode_size, reference_pixels, sample_frames, segment_indices
from pipeline.generated_videos import write_video

# name: (width, height, frames, GOP, B-frames, detail)
CLIPS = {"4K-B": (3840, 2160, 120, 250, 3, False), "1080p-B": (1920, 1080, 300, 250, 3, False),
         "1080p": (1920, 1080, 300, 250, 0, False), "1080p-gop30": (1920, 1080, 300, 30, 0, False),
         "4K detail": (3840, 2160, 48, 250, 0, True), "720p detail": (1280, 720, 96, 250, 0, True),
         "9:16 detail": (1080, 1920, 96, 250, 0, True)}


def reference_loader(path: str, num_frames: int, side: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    frames = np.stack([vr[int(i)].asnumpy() for i in segment_indices(len(vr), num_frames)])
    return reference_pixels(frames, side)


def decode_all(path: str, count: int, width: int, height: int, n: int) -> dict:
    wanted = [int(i) for i in segment_indices(count, n)]
    return decode_in_order(path, wanted, max(wanted), decode_size(width, height, SamplingConfig()), 1)


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
    parser.add_argument("--clips", default=",".join(CLIPS), help="comma-separated names of " + ", ".join(CLIPS))
    parser.add_argument("--captions-per-s", type=float, default=4.0,
                        help="one caption actor's rate, to turn CPU-s per video into decode cores (default 4)")
    args = parser.parse_args()
    n = args.num_frames
    configs = {"decord": SamplingConfig(num_frames=n, decoder="decord"),
               "pyav exact": SamplingConfig(num_frames=n, decoder="pyav"),
               "pyav snap": SamplingConfig(num_frames=n, decoder="pyav", snap="reference_frames"),
               "pyav exact 2 threads": SamplingConfig(num_frames=n, decoder="pyav", decode_threads=2),
               "decord resize=reference": SamplingConfig(num_frames=n, decoder="decord", resize="reference")}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips.split(","):
            width, height, count, gop, bframes, detail = CLIPS[name]
            path = write_video(os.path.join(tmp, "clip.mp4"), width, height, count, 30, gop=gop, detail=detail,
                               bframes=bframes)
            ref = reference_loader(path, n, 336).astype(int)
            _, cpu_ref = timed(lambda p=path: reference_loader(p, n, 336), args.repeats)
            _, cpu_all = timed(lambda p=path: decode_all(p, count, width, height, n), args.repeats)
            cells, cores = [], {"reference": cpu_ref, "decode-all": cpu_all}
            for label, cfg in configs.items():
                video = sample_frames(path, cfg)
                moved = int(np.sum(video.indices != segment_indices(count, n)))
                assert moved == 0 or cfg.snap != "exact", f"{label}: exact frames moved"
                diff = np.abs(video.frames.astype(int) - ref)
                t, cpu = timed(lambda p=path, c=cfg: sample_frames(p, c), args.repeats)
                cores[label] = cpu
                cells.append(f"  {label:24s} {t:5.2f} s, CPU {cpu:5.2f} s = {cpu / cpu_all:4.2f}x decode-all, "
                             f"reference/ours {cpu_ref / cpu:4.2f}x; pixels {diff.mean():.2f} "
                             f"({np.percentile(diff, 99):.0f})" + (f"; {moved} of {n} frames moved" if moved else ""))
            print(f"{name} ({width}x{height}, {count} frames, GOP {gop}, {bframes} B-frames): reference CPU "
                  f"{cpu_ref:.2f} s/video, decode-all CPU {cpu_all:.2f} s/video", flush=True)
            print("\n".join(cells), flush=True)
            print("  decode cores per caption actor at " + f"{args.captions_per_s:g} captions/s: " + ", ".join(
                f"{label} {cpu * args.captions_per_s:.1f}" for label, cpu in cores.items()), flush=True)


if __name__ == "__main__":
    main()
