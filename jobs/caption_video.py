"""Caption one video (local path or any fsspec URI such as ``s3://``) and print the caption.

    pllava-caption VIDEO --model-dir DIR [--weights-dir DIR] [--lora-alpha 4] [--num-frames 16] [--prompt TEXT]
        [--engine hf|vllm]
    python jobs/caption_video.py VIDEO ...    (the same, from a checkout)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import add_prompt_arguments, add_resize_argument  # noqa: E402
from pipeline.frames import SamplingConfig, VideoDecodeError, sample_frames  # noqa: E402
from pipeline.io.masking import mask_text  # noqa: E402
from pipeline.io.storage import SPOOL_ABOVE_MB, StorageError  # noqa: E402
from pipeline.sampler import fetch_video  # noqa: E402


def _parse_pooling(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.replace("x", ",").replace("-", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"pooling shape must be T,H,W (e.g. 16,12,12), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pllava-caption", description=__doc__.splitlines()[0])
    parser.add_argument("video", help="local path or fsspec URI (s3://bucket/clip.mp4)")
    parser.add_argument("--model-dir", required=True, help="PLLaVA folder, LLaVA-NeXT base folder or merged export")
    parser.add_argument("--weights-dir", help="LoRA + projector weights applied on top of --model-dir")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (published PLLaVA checkpoints: 4)")
    parser.add_argument("--num-frames", type=int, help="frames sampled from the video (default: the model's; 16 "
                                                       "for published PLLaVA checkpoints, as the reference)")
    parser.add_argument("--pooling-shape", type=_parse_pooling, help="T,H,W pooling (default: the model's; 16,12,12 "
                                                                     "for published PLLaVA checkpoints)")
    add_prompt_arguments(parser)
    add_resize_argument(parser, default="fast")
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--engine", default="auto", choices=("auto", "hf", "vllm"),
                        help="hf (transformers), vllm, or auto: vllm on a GPU where it is installed, else hf")
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    parser.add_argument("--start-s", type=float, help="clip start in seconds")
    parser.add_argument("--end-s", type=float, help="clip end in seconds")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from model import GenerationSettings, generate_captions, read_prompt
    from model.prompts import read_system_prompt
    from model.loading import default_device
    from model.settings import EngineUnavailable, VllmSettings, resolve_engine
    from pipeline.captioner import load_for_captioning
    from pipeline.config import ModelConfig

    try:
        engine = resolve_engine(args.engine, str(args.device or default_device()))
    except EngineUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        query = read_prompt(args.prompt, args.prompt_file)
        system_prompt = read_system_prompt(args.system_prompt, args.system_prompt_file)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spool = tempfile.TemporaryDirectory(prefix="pllava-caption-")
    try:  # the sampler's own read (bounded retries; large objects spooled), before the slow model load
        source = fetch_video(args.video, spool.name, SPOOL_ABOVE_MB << 20)
    except StorageError as exc:
        print(f"error: cannot read {mask_text(args.video)}: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model_cfg = ModelConfig(model=args.model_dir, weights_dir=args.weights_dir, lora_alpha=args.lora_alpha,
                            pooling_shape=args.pooling_shape, template=args.template, dtype=args.dtype,
                            attn_implementation=args.attn_implementation)
    model, processor = load_for_captioning(model_cfg, args.num_frames, args.device)
    processor.system_prompt = system_prompt
    loaded = time.perf_counter()
    sampling = SamplingConfig(num_frames=model.config.num_frames, image_size=model.config.image_size,
                              resize=args.resize)
    try:
        video = sample_frames(source, sampling, start_s=args.start_s, end_s=args.end_s)
    except VideoDecodeError as exc:
        print(f"error: cannot read {mask_text(args.video)}: {exc}", file=sys.stderr)
        return 2
    decoded = time.perf_counter()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    if engine == "vllm":
        # stdout carries the caption alone: vLLM (and its engine processes) log to stderr, quietly unless -v.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
        from model.vllm_engine import VllmCaptionEngine

        prompt_tokens = len(processor.tokenizer(processor.render(query))["input_ids"])
        # One caption: compiling kernels or capturing CUDA graphs would cost more than it saves.
        vllm_engine = VllmCaptionEngine(model, processor, settings, VllmSettings(enforce_eager=True),
                                        max_prompt_tokens=prompt_tokens)
        try:
            result = vllm_engine.caption(video.frames[None], query)[0]
        finally:
            vllm_engine.shutdown()
        if isinstance(result, BaseException):
            print(f"error: captioning failed: {result}", file=sys.stderr)
            return 1
    else:
        result = generate_captions(model, processor, video.frames[None], query, settings)[0]
    done = time.perf_counter()
    print(result.text)
    logging.getLogger(__name__).info(
        "load %.1fs, decode %.2fs, caption %.2fs, %d tokens%s", loaded - started, decoded - loaded,
        done - decoded, result.num_tokens, " (hit max_new_tokens)" if result.truncated else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
