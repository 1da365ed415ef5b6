"""Captions/s of the hf and vllm engines on CPU, for the tiny model and a ~100M-parameter one.

    python bench/caption_throughput.py [--videos 32] [--batch-size 16] [--new-tokens 64] [--engines hf,vllm]

Every caption is forced to the same length (min_new_tokens = max_new_tokens), so the numbers measure the
engines, not what the random weights happen to say. The baseline is hf at --batch-size (transformers
``generate``, left-padded static batches), measured in the same process; also shown: hf one video at a
time, and vllm fed batches of --batch-size that are all in flight at once (as the caption stage does).
The vllm start (20-40 s) is not counted. Best of --repeats.

vLLM's CPU build is pinned to the machine's cores (VLLM_CPU_OMP_THREADS_BIND=0-N) unless set: torch
uses every core for hf too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

if __name__ == "__main__":  # before vLLM reads it; the engine's own default (nobind) suits Ray actors
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")

import numpy as np
import torch

from model import GenerationSettings, VllmSettings, generate_captions, load_pllava
from model.loading import save_published
from model.tiny import TinySpec, build_tiny_model

MODELS = {
    "tiny": dict(),
    "100M": dict(vision_hidden=192, vision_layers=4, vision_heads=4, text_hidden=768, text_layers=14,
                 text_heads=12, text_intermediate=2560),
}
QUERY = "Describe the video."


def hf_rate(model, processor, frames, batch_size, settings) -> float:
    started = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        generate_captions(model, processor, torch.from_numpy(frames[i : i + batch_size]), QUERY, settings)
    return len(frames) / (time.perf_counter() - started)


def vllm_rate(engine, frames, batch_size) -> float:
    async def all_batches():
        return await asyncio.gather(*(engine.acaption(frames[i : i + batch_size], QUERY)
                                      for i in range(0, len(frames), batch_size)))

    started = time.perf_counter()
    results = [r for batch in asyncio.run(all_batches()) for r in batch]
    elapsed = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} captions failed on vllm: {failed[0]}")
    return len(frames) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--pooling", default="4,12,12")
    parser.add_argument("--models", default="tiny,100M")
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pooling = tuple(int(x) for x in args.pooling.split(","))
    engines = args.engines.split(",")
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    frames = np.random.default_rng(0).integers(0, 256, (args.videos, args.frames, 336, 336, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.videos} videos, {args.frames} "
          f"frames, pooling {pooling}, {args.new_tokens} forced new tokens per video, batch {args.batch_size}")
    for name in args.models.split(","):
        spec = TinySpec(num_frames=args.frames, pooling_shape=pooling, **MODELS[name])
        with tempfile.TemporaryDirectory() as folder:
            built, processor = build_tiny_model(spec)
            save_published(built, processor, folder)
            del built
            model, processor = load_pllava(folder, device="cpu")
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rates: dict[str, list[float]] = {}
            if "hf" in engines:
                generate_captions(model, processor, torch.from_numpy(frames[:2]), QUERY,
                                  GenerationSettings(max_new_tokens=2))  # warm up
                for _ in range(args.repeats):
                    rates.setdefault("hf batch 1", []).append(hf_rate(model, processor, frames, 1, settings))
                    rates.setdefault(f"hf batch {args.batch_size}", []).append(
                        hf_rate(model, processor, frames, args.batch_size, settings))
            if "vllm" in engines:
                from model.vllm_engine import VllmCaptionEngine

                vision_model, processor = load_pllava(folder, device="cpu")
                engine = VllmCaptionEngine(vision_model, processor, settings,
                                           VllmSettings(enforce_eager=True, cache_dir=os.path.join(folder, "lm")))
                try:
                    vllm_rate(engine, frames[:2], 2)  # warm up
                    for _ in range(args.repeats):
                        rates.setdefault(f"vllm batches of {args.batch_size} in flight", []).append(
                            vllm_rate(engine, frames, args.batch_size))
                finally:
                    engine.shutdown()
        best = {label: max(r) for label, r in rates.items()}
        base = best.get(f"hf batch {args.batch_size}")
        cells = ", ".join(f"{label}: {rate:.2f} captions/s" + (f" ({rate / base:.2f}x)" if base else "")
                          for label, rate in best.items())
        print(f"{name:>5} ({params:.1f}M params): {cells}", flush=True)


if __name__ == "__main__":
    main()
