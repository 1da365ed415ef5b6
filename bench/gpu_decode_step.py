"""Where the hf engine's decode step goes on a GPU: milliseconds per generated token of PLLaVA-7B's language model.

    python bench/gpu_decode_step.py [--out r.json] [--profile profile.txt]

A Vicuna-7B-sized Llama with random bf16 weights is built on the GPU (nothing is downloaded) and fed prompts of
2,350 embeddings (PLLaVA-7B's 2,304 pooled video tokens and a short prompt). Per batch size: the time of a
``generate`` of N tokens minus that of 1 token, over N - 1 (the prefill cancels out). Also a bare forward of one
token without a cache (the floor of eager decoding), the static cache, and a torch.profiler table of 16 steps that
shows whether the step is bound by the host (kernel launches) or by the GPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PROMPT = 2350


def build_language_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, max_position_embeddings=4096, tie_word_embeddings=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)


def step_ms(model, batch: int, new_tokens: int, **kwargs) -> float:
    embeds = torch.randn(batch, PROMPT, model.config.hidden_size, device="cuda", dtype=torch.bfloat16) * 0.02
    mask = torch.ones(batch, PROMPT, device="cuda", dtype=torch.long)

    def generate(count: int) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=count, min_new_tokens=count,
                       do_sample=False, pad_token_id=0, eos_token_id=2, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    generate(2)  # warm-up
    one, full = generate(1), generate(new_tokens)
    return round(1000 * (full - one) / (new_tokens - 1), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,16,32,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--profile", help="write torch.profiler's table of 16 steps at batch 1 here")
    args = parser.parse_args()
    model = build_language_model()
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "attention": model.config._attn_implementation, "prompt_tokens": PROMPT}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        try:
            results[f"step_ms_batch_{batch}"] = step_ms(model, batch, args.new_tokens)
        except torch.cuda.OutOfMemoryError:
            results[f"step_ms_batch_{batch}"] = "out of memory"
            torch.cuda.empty_cache()
        print(results, flush=True)
    results["step_ms_batch_1_static_cache"] = step_ms(model, 1, args.new_tokens, cache_implementation="static")
    token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=token)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(20):
            model(input_ids=token)
        torch.cuda.synchronize()
    results["bare_forward_ms_batch_1"] = round(1000 * (time.perf_counter() - started) / 20, 2)
    print(json.dumps(results, indent=2))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        embeds = torch.randn(1, PROMPT, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(inputs_embeds=embeds, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
        with open(args.profile, "w", encoding="utf-8") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
