"""Fine-tune PLLaVA (LoRA on the language model + the projector) with Ray Train; export a weights_dir.

    python jobs/train_lora.py --data s3://bucket/videochat2_it.json --video-root s3://bucket/videos \\
        --model /models/llava-v1.6-vicuna-7b-hf --output s3://bucket/runs/lora1 --num-workers 8 --use-gpu --epochs 3
    python jobs/train_lora.py --data s3://bucket/captions --model tiny --output /tmp/run --max-steps 20
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/train_lora.py --config train.yaml

--data is a VideoChat2-IT style JSON or the recaption pipeline's output (its Parquet captions). Rerunning
the same command resumes from the run's latest checkpoint. The result, <output>/weights, loads with
`load_pllava(model_dir, weights_dir=...)` and `jobs/recaption.py --weights-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import flags_layer, yaml_layer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML with sections data, sampling, lora, optim, run (flags override it)")
    parser.add_argument("--data", help="VideoChat2-IT JSON or a recaption output (folder or parquet)")
    parser.add_argument("--video-root", help="where the JSON's relative video paths point")
    parser.add_argument("--model", help="base model folder (LLaVA-NeXT or PLLaVA), or 'tiny'")
    parser.add_argument("--weights-dir", help="start from these LoRA + projector weights")
    parser.add_argument("--output", help="run folder: checkpoints/, weights/, metrics.jsonl")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-frames", type=int)
    return parser


# Each flag and the config key it sets (checked against the config's fields by a test).
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("data", "uri"), "video_root": ("data", "video_root"), "model": ("model",),
    "weights_dir": ("weights_dir",), "output": ("run", "output"), "num_workers": ("run", "num_workers"),
    "use_gpu": ("run", "use_gpu"), "max_steps": ("run", "max_steps"), "epochs": ("run", "epochs"),
    "num_frames": ("sampling", "num_frames"),
}


def config_from_args(args: argparse.Namespace):
    """YAML file < flags, merged key by key and checked as a whole."""
    from training.config import TrainConfig

    return TrainConfig.from_dict(yaml_layer(args.config), flags_layer(args, FLAG_KEYS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    from pipeline.resources import ResourceError
    from training.data import TrainingDataError
    from training.recipe import NoUsableSamples
    from training.trainer import run_training

    try:
        result = run_training(cfg)
    except (ResourceError, TrainingDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoUsableSamples as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = result["history"][-1] if result["history"] else {}
    print(json.dumps({"weights_dir": result["weights_dir"], "steps": result["steps"], "examples": result["examples"],
                      "final_loss": last.get("loss"), "skipped_videos": last.get("skipped_videos")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
