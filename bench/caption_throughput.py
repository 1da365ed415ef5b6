"""Captions/s of batched vs one-at-a-time generation on CPU, for the tiny model and a ~100M-parameter one.

    python bench/caption_throughput.py [--videos 16] [--new-tokens 64] [--frames 4] [--pooling 4,12,12]

Every run forces the same number of new tokens per video (min_new_tokens = max_new_tokens), so the
ratio measures batching alone. Both batch sizes run in the same process, interleaved, so machine noise
hits them alike; the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model import GenerationSettings, caption_videos
from model.tiny import TinySpec, build_tiny_model

MODELS = {
    "tiny": dict(),
    "100M": dict(vision_hidden=192, vision_layers=4, vision_heads=4, text_hidden=768, text_layers=14,
                 text_heads=12, text_intermediate=2560),
}


def captions_per_second(model, processor, frames, batch_size, settings) -> float:
    started = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        caption_videos(model, processor, frames[i : i + batch_size], "Describe the video.", settings)
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--pooling", default="4,12,12")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--models", default="tiny,100M")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pooling = tuple(int(x) for x in args.pooling.split(","))
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    frames = np.random.default_rng(0).integers(0, 256, (args.videos, args.frames, 336, 336, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.videos} videos, "
          f"{args.frames} frames, pooling {pooling}, {args.new_tokens} new tokens per video")
    for name in args.models.split(","):
        spec = TinySpec(num_frames=args.frames, pooling_shape=pooling, **MODELS[name])
        model, processor = build_tiny_model(spec)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        caption_videos(model, processor, frames[:2], "warm up", GenerationSettings(max_new_tokens=2))
        rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for _ in range(args.repeats):
            for b in batch_sizes:
                rates[b].append(captions_per_second(model, processor, frames, b, settings))
        best = {b: max(r) for b, r in rates.items()}
        base = best[batch_sizes[0]]
        cells = ", ".join(f"batch {b}: {best[b]:.2f} captions/s ({best[b] / base:.2f}x)" for b in batch_sizes)
        print(f"{name:>5} ({params:.1f}M params): {cells}")


if __name__ == "__main__":
    main()
