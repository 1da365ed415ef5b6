"""Videos/s of PLLaVA-7B on one GPU: hf vs vllm engine, real decoded videos, forced caption length.

    python bench/gpu_throughput.py [--engines hf,vllm] [--batch-sizes 1,16,64] [--new-tokens 256] [--out r.json]
    python bench/gpu_throughput.py --preset tiny --device cpu --batch-sizes 1,4 --new-tokens 8   # smoke run

The model has the PLLaVA-7B architecture (CLIP ViT-L/14-336, 2-layer projector, Vicuna-7B-sized Llama, 16
frames pooled 16x12x12 = 2304 video tokens) with random weights: nothing is downloaded. It is saved once in
the published layout and loaded through ``load_pllava``, the path real checkpoints take. Videos are
generated with PyAV and decoded by the project's frame sampler (decode time reported apart). Every caption
is forced to --new-tokens tokens, so both engines do the same work.

"batch B" means B videos handed over together and awaited before the next B, for both engines; the vllm
row "B x K in flight" hands over K such batches at once, as the caption stage does. Reported per row:
videos/s, generated tokens/s, peak GPU memory (torch's peak for hf; the device's used memory for vllm, whose
engine preallocates its KV cache), and GPU busy % (NVML, sampled every 0.1 s, when nvidia-ml-py is there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time

import numpy as np
import torch

from model import GenerationSettings, VllmSettings, generate_captions, load_pllava
from model.configuration_pllava import PllavaConfig
from model.loading import _building, save_published
from model.modeling_pllava import PllavaForConditionalGeneration
from model.processing_pllava import PllavaProcessor
from model.prompts import IMAGE_TOKEN, get_template
from model.tiny import build_tokenizer

PRESETS = {
    # CLIP ViT-L/14-336 + Vicuna-7B (LLaVA-NeXT 7B), PLLaVA's 16 frames and 16x12x12 pooling.
    "7b": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
               vocab=32064, frames=16, pooling=(16, 12, 12)),
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
                 vocab=512, frames=4, pooling=(4, 6, 6)),
}
QUERY = "Describe this video in detail."


def write_random_pllava(folder: str, preset: dict, dtype: torch.dtype) -> None:
    """A random-weight PLLaVA of the preset's shape, built on the CPU and saved in the published layout."""
    from transformers import CLIPVisionConfig, LlamaConfig

    tokenizer = build_tokenizer("vicuna")
    filler = preset["vocab"] - len(tokenizer)
    if filler > 0:  # every id the random LM head can pick decodes to a token
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(filler)])
    vision = CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768, **preset["vision"])
    text = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False, **preset["text"])
    config = PllavaConfig(vision_config=vision, text_config=text, pooling_shape=preset["pooling"],
                          num_frames=preset["frames"], image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                          pad_token_id=tokenizer.pad_token_id)
    with _building(torch.device("cpu"), dtype):
        model = PllavaForConditionalGeneration(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    processor = PllavaProcessor(tokenizer=tokenizer, template=get_template("vicuna"))
    save_published(model, processor, folder)


def decoded_videos(count: int, num_frames: int, folder: str) -> tuple[np.ndarray, float]:
    """``count`` distinct generated 720p clips decoded by the frame sampler; also seconds per video."""
    from pipeline.frames import SamplingConfig, sample_frames
    from pipeline.generated_videos import write_video

    paths = [write_video(os.path.join(folder, f"v{i}.mp4"), 1280, 720, 90, 30, seed=i) for i in range(count)]
    started = time.perf_counter()
    frames = np.stack([sample_frames(p, SamplingConfig(num_frames=num_frames)).frames for p in paths])
    return frames, (time.perf_counter() - started) / count


class GpuSampler:
    """Samples GPU utilisation (NVML) and used memory every 0.1 s while it runs."""

    def __init__(self, device_index: int = 0) -> None:
        self.busy: list[float] = []
        self.used: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # noqa: BLE001 - NVML is optional: no busy % without it
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self._nvml is not None:
                self.busy.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                self.used.append(total - free)

    def __enter__(self) -> "GpuSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"gpu_busy_pct": round(float(np.mean(self.busy)), 1) if self.busy else None,
                "device_used_gib": round(max(self.used) / 2**30, 2) if self.used else None}


def run_hf(folder: str, frames: np.ndarray, batch_sizes: list[int], settings: GenerationSettings,
           device: str) -> list[dict]:
    model, processor = load_pllava(folder, device=device)
    generate_captions(model, processor, torch.from_numpy(frames[:1]), QUERY, GenerationSettings(max_new_tokens=2))
    rows = []
    for batch in batch_sizes:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        count = max(batch, min(len(frames), 2 * batch))
        row = {"engine": "hf", "batch": batch, "videos": count}
        try:
            with GpuSampler() as sampler:
                started = time.perf_counter()
                for i in range(0, count, batch):
                    generate_captions(model, processor, torch.from_numpy(frames[i : i + batch]), QUERY, settings)
                elapsed = time.perf_counter() - started
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({**row, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        split = phases(model, processor, frames[:batch], settings, elapsed * batch / count)
        rows.append({**row, **rates(count, elapsed, settings), "peak_gib": peak and round(peak, 2),
                     **sampler.summary(), **split})
        print(rows[-1], flush=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def phases(model, processor, frames: np.ndarray, settings: GenerationSettings, batch_s: float) -> dict:
    """Where one batch's time goes: a one-token generate is the vision tower, the pooling and the prefill; the rest
    of the batch's time is decoding, per token."""
    one_token = GenerationSettings(max_new_tokens=1, min_new_tokens=1)
    _synchronize()
    started = time.perf_counter()
    generate_captions(model, processor, torch.from_numpy(frames), QUERY, one_token)
    _synchronize()
    prefill = time.perf_counter() - started
    steps = max(1, settings.max_new_tokens - 1)
    return {"prefill_s": round(prefill, 3), "decode_ms_per_step": round(1000 * (batch_s - prefill) / steps, 2)}


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_vllm(folder: str, frames: np.ndarray, batch_sizes: list[int], settings: GenerationSettings, device: str,
             in_flight: int, enforce_eager: bool) -> list[dict]:
    from model.vllm_engine import VllmCaptionEngine

    model, processor = load_pllava(folder, device=device)
    started = time.perf_counter()
    engine = VllmCaptionEngine(model, processor, settings, VllmSettings(enforce_eager=enforce_eager,
                                                                        cache_dir=os.path.join(folder, "lm")))
    print(f"vllm engine started in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    try:
        engine.caption(frames[:1], QUERY)  # warm up
        plans = [(batch, 1) for batch in batch_sizes] + [(max(batch_sizes), in_flight)]
        for batch, parallel in plans:
            count = batch * parallel if parallel > 1 else max(batch, min(len(frames), 2 * batch))
            videos = np.concatenate([frames] * (count // len(frames) + 1))[:count]
            label = f"{batch} x {parallel} in flight" if parallel > 1 else batch
            with GpuSampler() as sampler:
                began = time.perf_counter()
                results = asyncio.run(_waves(engine, videos, batch, parallel))
                elapsed = time.perf_counter() - began
            failed = [r for r in results if isinstance(r, BaseException)]
            row = {"engine": "vllm", "batch": label, "videos": count, **rates(count, elapsed, settings),
                   **sampler.summary(), "failed": len(failed)}
            if failed:
                row["first_error"] = str(failed[0])[:300]
            rows.append(row)
            print(row, flush=True)
    finally:
        engine.shutdown()
    return rows


async def _waves(engine, videos: np.ndarray, batch: int, parallel: int) -> list:
    results: list = []
    step = batch * parallel
    for start in range(0, len(videos), step):
        wave = [engine.acaption(videos[i : i + batch], QUERY) for i in range(start, min(start + step, len(videos)),
                                                                            batch)]
        results += [r for part in await asyncio.gather(*wave) for r in part]
    return results


def rates(count: int, elapsed: float, settings: GenerationSettings) -> dict:
    return {"seconds": round(elapsed, 2), "videos_per_s": round(count / elapsed, 3),
            "tokens_per_s": round(count * settings.max_new_tokens / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="7b")
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--in-flight", type=int, default=4, help="vllm: batches of the largest size at once")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--distinct-videos", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm without CUDA graphs (faster start)")
    parser.add_argument("--workdir", help="keep the random checkpoint here (default: a temporary folder)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or os.path.join(scratch, "pllava")
        started = time.perf_counter()
        if not os.path.isfile(os.path.join(folder, "config.json")):
            write_random_pllava(folder, preset, dtype)
        print(f"random {args.preset} checkpoint ready in {time.perf_counter() - started:.1f} s", flush=True)
        frames, decode_s = decoded_videos(args.distinct_videos, preset["frames"], scratch)
        frames = np.concatenate([frames] * (2 * max(batch_sizes) // len(frames) + 1))[: 2 * max(batch_sizes)]
        print(f"decoded {args.distinct_videos} 720p clips: {decode_s:.3f} s per video on one core", flush=True)
        results = {"preset": args.preset, "device": args.device, "dtype": str(dtype), "new_tokens": args.new_tokens,
                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   "decode_s_per_video": round(decode_s, 4), "rows": []}
        if "hf" in args.engines.split(","):
            results["rows"] += run_hf(folder, frames, batch_sizes, settings, args.device)
        if "vllm" in args.engines.split(","):
            results["rows"] += run_vllm(folder, frames, batch_sizes, settings, args.device, args.in_flight,
                                        args.enforce_eager)
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
