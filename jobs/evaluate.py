"""Evaluate a captioner on a benchmark (before and after fine-tuning): multiple choice, MVBench, Video-MME,
reference captions, or open questions and captions graded by an LLM judge (VCG, recaption), scored by the
reference's protocol. Runs on the recaption pipeline, resumable.

    python jobs/evaluate.py --benchmark mvbench --data /data/MVBench --model /models/pllava-7b --lora-alpha 4 \
        --output runs/mvbench-base
    python jobs/evaluate.py --benchmark mvbench --data /data/MVBench --model /models/llava-v1.6-vicuna-7b-hf \
        --weights-dir runs/lora/weights --output runs/mvbench-lora --compare runs/mvbench-base  # its training base
    python jobs/evaluate.py --benchmark vcg --data vcg/Benchmarking_QA --video-root vcg/Videos/Benchmarking \
        --judge-url http://judge-host:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct --output runs/vcg
    # numbers comparable with the PLLaVA paper's: the reference's own prompt strings, from a checkout of it
    python jobs/evaluate.py --benchmark mvbench --data /data/MVBench --model /models/pllava-7b --lora-alpha 4 \
        --reference-repo ~/src/PLLaVA --output runs/mvbench-reference

Writes OUT/predictions/predictions.parquet (one row per question: reply, score or error) and OUT/metrics.json
(per task and overall, counts, errors, protocol, prompt set with a hash of every string, model fingerprint,
prompt_id); OUT/parquet/ holds the raw answers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import add_prompt_arguments, add_resize_argument, flags_layer, yaml_layer  # noqa: E402

FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model", "model"), "weights_dir": ("model", "weights_dir"), "lora_alpha": ("model", "lora_alpha"),
    "engine": ("model", "engine"), "template": ("model", "template"), "num_frames": ("sampling", "num_frames"),
    "resize": ("sampling", "resize"), "batch_size": ("resources", "batch_size"),
    "max_new_tokens": ("generation", "max_new_tokens"), "retry_errors": ("output", "retry_errors"),
    "prompt": ("prompt",), "prompt_file": ("prompt_file",), "system_prompt": ("system_prompt",),
    "system_prompt_file": ("system_prompt_file",),
}


def build_parser() -> argparse.ArgumentParser:
    from pipeline.evaluation.benchmarks import BENCHMARKS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS,
                        help="mcq (JSON/JSONL of MVBench-style items), mvbench (its folder), videomme (its "
                             "Parquet), captions (reference captions: JSON or CSV), vcg (open questions, judged), "
                             "recaption (captions judged against reference captions)")
    parser.add_argument("--data", required=True, help="the benchmark file (the MVBench folder for mvbench; a file "
                                                      "or the Benchmarking_QA folder for vcg)")
    parser.add_argument("--video-root", help="where the benchmark's video names point (default: the data's folder)")
    parser.add_argument("--output", required=True, help="output folder or object-store prefix")
    parser.add_argument("--config", help="YAML with the recaption job's sections (sampling, model, generation, "
                                         "vllm, resources, storage_options, ...); flags override it")
    parser.add_argument("--model", help="model folder, or 'tiny' for the offline tiny model")
    parser.add_argument("--weights-dir", help="LoRA + projector weights on top of --model (a fine-tune)")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (published PLLaVA checkpoints: 4)")
    parser.add_argument("--engine", choices=("auto", "hf", "vllm"), help="language-model engine (default auto)")
    parser.add_argument("--num-frames", type=int, help="frames sampled per video (default 16)")
    add_resize_argument(parser)
    parser.add_argument("--batch-size", type=int, help="videos per decode batch and per hf generate call")
    parser.add_argument("--max-new-tokens", type=int, help="default: 100 for questions, 400 for captions")
    add_prompt_arguments(parser)
    parser.add_argument("--prompts", metavar="FILE", help="YAML of prompt-set entries replacing the project's "
                                                          "wording (see pipeline/evaluation/prompt_set.py)")
    parser.add_argument("--reference-repo", metavar="DIR", help="a local checkout of magic-research/PLLaVA: its "
                                                                "evaluation prompt strings are read from it")
    parser.add_argument("--limit", type=int, help="only the first N questions (a quick check)")
    parser.add_argument("--retry-errors", action="store_true", help="ask again questions whose video failed before")
    parser.add_argument("--judge-url", help="vcg, recaption: the judge's OpenAI-compatible API base "
                                            "(e.g. http://host:8000/v1)")
    parser.add_argument("--judge-model", help="vcg, recaption: the judge model's name at that endpoint")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                        help="environment variable with the judge's API key (default OPENAI_API_KEY; unset: none)")
    parser.add_argument("--compare", metavar="OTHER_OUT", help="print per-task deltas against another evaluation")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the metrics")
    parser.add_argument("-v", "--verbose", action="store_true", help="also Ray Data's progress reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.config import JobConfig
    from pipeline.evaluation import run as E
    from pipeline.evaluation.benchmarks import absolute, load_benchmark
    from pipeline.evaluation.judge import JudgeConfig
    from pipeline.evaluation.prompt_set import load_prompt_set
    from pipeline.evaluation.store import EvaluationStore
    from pipeline.io.masking import mask_text

    judged = args.benchmark in ("vcg", "recaption")
    if judged and not (args.judge_url and args.judge_model):
        print(f"error: --benchmark {args.benchmark} needs --judge-url and --judge-model", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        # Checked before the questions are asked: a judge that cannot be used fails now, not after the run.
        judge = JudgeConfig(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env) if judged \
            else None
        if judge is not None:
            import openai  # noqa: F401
        if args.benchmark == "captions":
            import pycocoevalcap  # noqa: F401
    except ImportError as exc:
        needs = "the judge needs the openai client" if judge else "caption metrics need pycocoevalcap"
        print(f"error: {needs} ({exc.name} is not installed): pip install -e '.[eval]'", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    try:
        user = yaml_layer(args.config)
        storage_options = user.get("storage_options") or {}
        prompts = load_prompt_set(args.prompts, args.reference_repo)
        bench = load_benchmark(args.benchmark, args.data, args.video_root, storage_options, prompts)
        if args.limit:
            bench = E.limited(bench, args.limit)
        # The output as the pipeline's workers see it: a relative folder is the current directory's.
        defaults, fixed = E.job_layers(bench, absolute(args.output))
        cfg = JobConfig.from_dict(defaults, user, flags_layer(args, FLAG_KEYS), fixed)
        other = E.read_metrics(args.compare, storage_options) if args.compare else None
        if other is not None and (other["benchmark"], other["kind"]) != (bench.name, bench.kind):
            raise ValueError(f"--compare {args.compare} is a {other['benchmark']} evaluation, not {bench.name}")
    except (ValueError, OSError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename:
            text = f"no such file: {exc.filename}"
        elif isinstance(exc, OSError) and exc.strerror:  # a folder where a file is expected, no permission
            text = f"cannot read {exc.filename or args.data}: {exc.strerror}"
        else:
            text = str(exc)
        print(f"error: {mask_text(text)}", file=sys.stderr)
        return 2
    from model.settings import EngineUnavailable
    from pipeline.io.sources import VideoListError
    from pipeline.lease import OutputBusy
    from pipeline.resources import ResourceError
    from pipeline.list_ids import IdConflict
    from pipeline.watchdog import Stalled

    try:
        result, complete = E.evaluate(bench, cfg, judge, progress=args.verbose)
    except (FileNotFoundError, VideoListError, IdConflict, ResourceError, OutputBusy, EngineUnavailable) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    except Stalled as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    print(E.format_metrics(result))
    store = EvaluationStore(args.output)
    print(f"\npredictions: {mask_text(store.predictions_uri())}   metrics: {mask_text(store.metrics_uri())}")
    if other is not None:
        print("\ncompared with " + mask_text(args.compare) + ":\n" + "\n".join(E.compare(result, other)))
    failed = E.failure(result)
    if failed:  # every question an error: not a result, whatever the accuracy line says
        where = mask_text(store.predictions_uri())
        print(f"error: {failed}; each question's error is in {where}", file=sys.stderr)
        return 1
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
