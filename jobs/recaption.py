"""Recaption a list of videos with PLLaVA on Ray: object storage in, Parquet / WebDataset out, resumable.

Local (starts its own Ray):
    python jobs/recaption.py --input s3://bucket/list.txt --output s3://bucket/captions \
        --model /models/pllava-7b --lora-alpha 4
On a cluster (the pinned Ray's `ray start` turns on token auth; RAY_AUTH_MODE=token sends ~/.ray/auth_token):
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/recaption.py --config job.yaml
The embedded default (generated sample videos, tiny offline model, local Ray):
    python jobs/recaption.py --demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import add_prompt_arguments, add_resize_argument, flags_layer, load_preset, yaml_layer  # noqa: E402

DEMO_DIR = "demo_output"


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=description)
    parser.add_argument("--config", help="YAML file with sections source, sampling, model, generation, vllm, "
                                         "resources, output, retry, storage_options (flags override it)")
    parser.add_argument("--input", help="video list (txt/csv/jsonl/parquet/annotations.json) or a prefix to list")
    parser.add_argument("--videos-prefix", help="where annotation names and relative list paths point")
    parser.add_argument("--output", help="output folder or object-store prefix")
    parser.add_argument("--model", help="model folder, or 'tiny' for the offline tiny model")
    parser.add_argument("--weights-dir", help="LoRA + projector weights on top of --model")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (published PLLaVA checkpoints: 4)")
    parser.add_argument("--format", choices=("parquet", "webdataset", "both"),
                        help="output: Parquet (always written, the system of record), or also WebDataset shards "
                             "(webdataset or both)")
    parser.add_argument("--num-frames", type=int, help="frames sampled per video (default 16)")
    add_resize_argument(parser)
    parser.add_argument("--engine", choices=("auto", "hf", "vllm"),
                        help="language-model engine: hf (transformers), vllm, or auto (default: vllm on a GPU "
                             "where vLLM is installed, else hf); vLLM knobs go in the config's vllm section")
    parser.add_argument("--batch-size", type=int, help="videos per decode batch and per hf generate call "
                                                       "(default 8; the vllm engine takes vllm.batch_size, 64)")
    parser.add_argument("--max-new-tokens", type=int, help="default 400")
    add_prompt_arguments(parser)
    parser.add_argument("--retry-errors", action="store_true", help="retry videos that failed in earlier runs")
    parser.add_argument("--recaption-changed", action="store_true",
                        help="caption again every video whose row was written with another model (checkpoint, "
                             "LoRA, alpha) or prompt (template, system prompt, query); the newest row is kept")
    parser.add_argument("--compact-after", action="store_true",
                        help="after the run, merge small output files into files of about output.compact_target_mb "
                             "(256 MB; see jobs/compact.py)")
    parser.add_argument("--window-s", type=float,
                        help="split each video into windows of this many seconds, each its own row (video_id "
                             "<source id>_t<start ms>-<end ms>, start_s/end_s, source_video)")
    parser.add_argument("--window-stride-s", type=float, help="seconds between window starts (default: --window-s)")
    parser.add_argument("--window-scenes", action="store_true",
                        help="also end windows at scene cuts (needs scenedetect: pip install scenedetect)")
    parser.add_argument("--limit", type=int, help="only the first N videos of the list")
    parser.add_argument("--plan", action="store_true",
                        help="do not run: caption a seeded random sample of the list on this cluster and project "
                             "time, GPU-hours, CPU-hours, output size, failures and cost for the whole list "
                             "(written to <output>/_plans/; nothing else of the output is touched)")
    parser.add_argument("--plan-sample", type=int, default=None, metavar="K",
                        help="--plan: videos in the sample (default 200; fewer when the list is smaller)")
    parser.add_argument("--plan-seed", type=int, help="--plan: the sample's seed (default 0)")
    parser.add_argument("--gpu-hour-cost", type=float, help="--plan: price of one GPU-hour, for the cost line")
    parser.add_argument("--cpu-hour-cost", type=float, help="--plan: price of one CPU-hour, for the cost line")
    parser.add_argument("--allow-empty", action="store_true", help="an empty list ends the run without an error")
    parser.add_argument("--demo", action="store_true", help=f"run the embedded default into ./{DEMO_DIR}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="also Ray Data's progress reports")
    return parser


# Each flag and the config key it sets (checked against the config's fields by a test).
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("source", "input"), "videos_prefix": ("source", "videos_prefix"), "limit": ("source", "limit"),
    "window_s": ("source", "window_s"), "window_stride_s": ("source", "window_stride_s"),
    "window_scenes": ("source", "window_scenes"),
    "allow_empty": ("source", "allow_empty"), "output": ("output", "output"), "formats": ("output", "formats"),
    "retry_errors": ("output", "retry_errors"), "recaption_changed": ("output", "recaption_changed"),
    "compact_after": ("output", "compact_after"),
    "model": ("model", "model"), "weights_dir": ("model", "weights_dir"), "lora_alpha": ("model", "lora_alpha"),
    "engine": ("model", "engine"), "template": ("model", "template"), "num_frames": ("sampling", "num_frames"),
    "resize": ("sampling", "resize"), "batch_size": ("resources", "batch_size"),
    "max_new_tokens": ("generation", "max_new_tokens"), "prompt": ("prompt",), "prompt_file": ("prompt_file",),
    "system_prompt": ("system_prompt",), "system_prompt_file": ("system_prompt_file",),
}


def config_from_args(args: argparse.Namespace, preset: dict | None = None):
    """Preset < YAML file < flags, merged key by key and checked as a whole."""
    from pipeline.config import JobConfig

    args.formats = {None: None, "parquet": ["parquet"]}.get(args.format, ["parquet", "webdataset"])
    return JobConfig.from_dict(preset or {}, yaml_layer(args.config), flags_layer(args, FLAG_KEYS))


def demo_preset(root: str = DEMO_DIR) -> dict:
    """``jobs/presets/demo.yaml`` over freshly generated sample videos (one broken) under ``root``."""
    from pipeline.generated_videos import write_demo_videos

    videos = write_demo_videos(os.path.join(root, "videos"))
    listing = os.path.join(root, "videos.txt")
    with open(listing, "w", encoding="utf-8") as f:
        f.write("\n".join(os.path.abspath(v) for v in videos) + "\n")
    return load_preset("demo", video_list=os.path.abspath(listing),
                       output=os.path.abspath(os.path.join(root, "captions")))


def run_from_args(args: argparse.Namespace, preset: dict | None = None) -> int:
    """Configure logging, build the config (preset < --config < flags), run, print the summary."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo:
        preset = demo_preset()
    try:
        cfg = config_from_args(args, preset)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    from model.settings import EngineUnavailable
    from pipeline.lease import OutputBusy
    from pipeline.io.masking import mask_text
    from pipeline.resources import ResourceError
    from pipeline.list_ids import IdConflict
    from pipeline.runner import RunIncomplete, format_summary, run_job
    from pipeline.io.sources import VideoListError
    from pipeline.watchdog import Stalled

    plan_only = getattr(args, "plan", False)
    if not plan_only and any(getattr(args, k, None) is not None for k in ("plan_sample", "plan_seed",
                                                                          "gpu_hour_cost", "cpu_hour_cost")):
        print("error: --plan-sample, --plan-seed, --gpu-hour-cost and --cpu-hour-cost go with --plan",
              file=sys.stderr)
        return 2
    try:
        if plan_only:
            return _plan(cfg, args)
        summary = run_job(cfg, progress=args.verbose)
    except (FileNotFoundError, VideoListError, IdConflict, ResourceError, OutputBusy, EngineUnavailable) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    except (RunIncomplete, Stalled) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    from pipeline.io.output_store import OutputStore

    store = OutputStore(mask_text(cfg.output.output))
    print("\n" + store.describe("webdataset" in cfg.output.formats, summary["run_id"]))
    return 0


def _plan(cfg, args: argparse.Namespace) -> int:
    """``--plan``: measure a sample, print the projections, write the plan."""
    import math

    from pipeline.io.masking import mask_text
    from pipeline.io.output_store import OutputStore
    from pipeline.plan import DEFAULT_SAMPLE, format_plan, plan_job

    sample = DEFAULT_SAMPLE if args.plan_sample is None else args.plan_sample
    costs = {"--gpu-hour-cost": args.gpu_hour_cost, "--cpu-hour-cost": args.cpu_hour_cost}
    bad = [k for k, v in costs.items() if v is not None and not (math.isfinite(v) and v >= 0)]
    if sample < 1 or bad:
        print(f"error: --plan-sample must be at least 1 (got {sample})" if sample < 1 else
              f"error: {', '.join(bad)} must be a finite number >= 0", file=sys.stderr)
        return 2
    if cfg.source.limit:
        sample = min(sample, cfg.source.limit)
    try:
        plan = plan_job(cfg, sample, args.plan_seed or 0, args.gpu_hour_cost, args.cpu_hour_cost,
                        progress=args.verbose)
    except ValueError as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    uri = OutputStore(mask_text(cfg.output.output)).plan_uri(plan["plan_id"])
    print(mask_text(format_plan(plan, uri)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
