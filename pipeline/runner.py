"""Run a recaption job: its stage list (:func:`recaption_stages`, data a test can inspect), resume, the
output's lease, the run summary, and compaction at the end when asked.

Where the job runs (local Ray or a cluster) and with what pools is decided here and only here; what each stage
does lives in small callable classes, declared as :class:`~pipeline.stages.Stage` s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter

import ray

from model.prompts import PromptText
from pipeline import schema as S
from model.settings import resolve_engine
from pipeline.captioner import Captioner, VllmCaptioner, caption_identity
from pipeline.cluster import init_ray
from pipeline.compaction import compact
from pipeline.config import JobConfig
from pipeline.done_set import DoneSet
from pipeline.lease import LeaseGuard, LeaseLost, OutputLease, lease_lost_in, new_run_id
from pipeline.metrics import record_manifest
from pipeline.plan_check import compare_with_plan, well_formed
from pipeline.io.masking import mask_values
from pipeline.resources import (LIGHT_NUM_CPUS, SKIP_NUM_CPUS, PipelinePlan, cluster_nodes, cluster_totals,
                                 plan_pipeline)
from pipeline.resume import OutputState, reconcile_and_scan
from pipeline.sampler import FrameSampler
from pipeline.io.output_store import OutputStore
from pipeline.io.storage import StorageError
from pipeline.progress import Progress
from pipeline.sinks import ShardWriter
from pipeline.list_ids import CheckIds, IdRegistry, check_registered_ids
from pipeline.skip import MarkRepeats, RowTally, SkipDone
from pipeline.segments import SegmentStarted, run_in_segments, segment_count
from pipeline.stages import Stage
from pipeline.io.sources import read_video_refs
from pipeline.watchdog import describe_cluster, watched
from pipeline.windows import SplitWindows

logger = logging.getLogger(__name__)

MAX_DECODER_CRASHES = 2  # a video that kills its decode actor this often becomes a decode/crashed row
CAPTION_MAX_RESTARTS = 8



class RunIncomplete(RuntimeError):
    """The run read no list rows (and an empty list was not allowed), or rows read were not all accounted for."""


def plan_for(cfg: JobConfig) -> PipelinePlan:
    """The pool sizes of this job on the connected cluster (explicit settings checked, the rest derived).

    Raises:
        ResourceError: what was asked does not fit what the cluster has.
    """
    res = cfg.resources
    cpus, gpus = cluster_totals()
    caption_gpus = res.caption_num_gpus
    if caption_gpus is None and cfg.model.engine != "hf" and cfg.vllm.tensor_parallel_size > 1:
        caption_gpus = float(cfg.vllm.tensor_parallel_size)  # one actor owns the GPUs its engine shards over
    if res.autoscaling:
        logger.info("resources.autoscaling: the pools are not checked against the %g CPUs and %g GPUs there are "
                    "now; the cluster is expected to grow for them", cpus, gpus)
    return plan_pipeline(cpus, gpus, res.decode_concurrency, res.decode_num_cpus, res.caption_concurrency,
                         res.caption_num_cpus, caption_gpus, nodes=cluster_nodes(), check=not res.autoscaling)


def recaption_stages(
    cfg: JobConfig, prompt: PromptText, run_id: str, done: DoneSet, plan: PipelinePlan, tally=None,
    engine: str = "hf", guard: LeaseGuard | None = None,
) -> list[Stage]:
    """The recaption job's stages, in order, as data: ``VideoRef rows not yet done -> manifest rows`` (one per
    written file). ``done``: the finished ids (in the object store), for clip windows, whose ids exist
    only after the split."""
    res = cfg.resources
    stages = []
    if cfg.source.windows:  # sources not yet finished become windows; windows already done are dropped
        stages += [
            Stage("split_windows", SplitWindows,
                  dict(window_s=cfg.source.window_s, stride_s=cfg.source.window_stride_s,
                       scenes=cfg.source.window_scenes, storage_options=cfg.storage_options, tally=tally),
                  dict(num_cpus=LIGHT_NUM_CPUS)),
            Stage("skip_done_windows", SkipDone, dict(done=done, tally=tally, counts_reads=False),
                  dict(num_cpus=LIGHT_NUM_CPUS)),
        ]
    stages.append(Stage("mark_repeats", MarkRepeats, {},
                        dict(compute=ray.data.ActorPoolStrategy(size=1), num_cpus=SKIP_NUM_CPUS)))
    stages.append(Stage(
        "decode", FrameSampler,
        dict(sampling=cfg.sampling, storage_options=cfg.storage_options, retry=cfg.retry,
             keyframes="webdataset" in cfg.output.formats and cfg.output.keyframes,
             io_threads=res.decode_io_threads, max_in_memory_mb=res.decode_max_in_memory_mb,
             journal_dir=crash_journal_dir(run_id), max_crashes=MAX_DECODER_CRASHES,
             decode_timeout_s=res.decode_timeout_s),
        dict(batch_size=res.batch_size, compute=ray.data.ActorPoolStrategy(size=plan.decode_concurrency),
             num_cpus=plan.decode_num_cpus,
             # Restarts are unbounded here because each crash is charged to its video (the crash journal);
             # a batch is resent a bounded number of times.
             max_restarts=-1, max_task_retries=MAX_DECODER_CRASHES + 2),
    ))
    caption_args = dict(model_cfg=cfg.model, generation=cfg.generation, prompt=prompt,
                        num_frames=cfg.sampling.num_frames, image_size=cfg.sampling.image_size, device=plan.device,
                        quality=cfg.quality)
    caption_settings = dict(num_gpus=plan.caption_num_gpus, num_cpus=plan.caption_num_cpus,
                            # bounded: a captioner that keeps dying ends the job with an error
                            max_restarts=CAPTION_MAX_RESTARTS, max_task_retries=CAPTION_MAX_RESTARTS)
    if engine == "vllm":
        # Several batches in flight per actor: vLLM schedules their requests together, so a batch's
        # longest caption never leaves the GPU idle (the pattern of ray.data.llm's engine stage).
        in_flight = cfg.vllm.max_concurrent_batches
        stages.append(Stage(
            "caption", VllmCaptioner, dict(caption_args, vllm_settings=cfg.vllm),
            dict(caption_settings, batch_size=cfg.vllm.batch_size, max_concurrency=in_flight,
                 compute=ray.data.ActorPoolStrategy(size=plan.caption_concurrency,
                                                    max_tasks_in_flight_per_actor=2 * in_flight)),
        ))
    else:
        stages.append(Stage(
            "caption", Captioner, caption_args,
            dict(caption_settings, batch_size=res.batch_size,
                 compute=ray.data.ActorPoolStrategy(size=plan.caption_concurrency)),
        ))
    stages.append(Stage("write", ShardWriter,
                        dict(out=cfg.output, run_id=run_id, storage_options=cfg.storage_options, guard=guard),
                        dict(batch_size=res.rows_per_file, num_cpus=LIGHT_NUM_CPUS)))
    return stages


def crash_journal_dir(run_id: str) -> str:
    """Node-local folder where this run's decode actors note the video in progress (see CrashJournal)."""
    return os.path.join(tempfile.gettempdir(), "pllava-crash-journal", run_id)


def run_job(cfg: JobConfig, run_id: str | None = None, progress: bool = False) -> dict:
    """Run (or resume) a recaption job; returns the run summary, also written to the output's run summaries
    (:meth:`OutputStore.summary_uri`).

    ``progress`` turns on Ray Data's progress reports; the runner logs each file it writes either way.

    Raises:
        ValueError: invalid configuration (every problem listed).
        ResourceError: the pools asked for do not fit the cluster.
        OutputBusy: another live job is writing this output (its lease names it).
        LeaseLost: this job stalled past the lease's time to live and another job took the output over; it
            stopped without writing more.
        FileNotFoundError: the video list does not exist.
        Stalled: no output for ``resources.stall_fail_s`` (when set); the message says what the cluster waits on.
        IdConflict: the list gives one video_id to different videos (nothing is run; the message names them).
        RunIncomplete: the list yielded no rows (unless ``source.allow_empty``), or not every row read was
            accounted for; the summary is written first, with ``complete: false``.
    """
    prompt = cfg.prompt_text()
    run_id = run_id or new_run_id()
    started = time.perf_counter()
    init_ray(cfg.resources.ray_num_cpus)
    plan = plan_for(cfg)  # before any work: a job that cannot be scheduled stops here, saying why
    engine = resolve_engine(cfg.model.engine, plan.device)  # and so does one whose engine is not installed
    with OutputLease(cfg.output.output, run_id, cfg.storage_options, ttl_s=cfg.output.lease_ttl_s) as lease:
        try:
            summary = _run_holding_the_output(cfg, prompt, run_id, plan, engine, started, progress, lease)
        except LeaseLost:
            raise
        except Exception as exc:
            lost = lease_lost_in(exc)  # a writer task refused (Ray hands its error back wrapped)
            if lost is not None:
                raise LeaseLost(str(lost)) from exc
            lease.check()  # a failure while the lease was lost says so
            raise
    problem = incompleteness(summary, cfg.source.allow_empty)
    if problem:
        raise RunIncomplete(problem)
    return summary


def _run_holding_the_output(cfg: JobConfig, prompt: PromptText, run_id: str, plan: PipelinePlan, engine: str,
                            started: float, progress: bool, lease: OutputLease) -> dict:
    """Repair, run the pipeline, repair again and write the summary (the caller holds the output's lease, and
    every write, here or in the writer tasks, checks first that it still does)."""
    out, res = cfg.output, cfg.resources
    repaired, before = reconcile_and_scan(out.output, cfg.storage_options, check=lease.check)
    same_as = caption_identity(cfg.model, prompt) if out.recaption_changed else None
    if same_as:
        logger.info("re-captioning what changed: rows count as done only with model %s and prompt_id %s", *same_as)
    done = before.done_set(out.retry_errors, same_as)  # made by tasks, left in the object store
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    logger.info("run %s: %d videos already done; decode x%d at %g CPU, captioner x%d (%s engine) on %s at %g CPU",
                run_id, len(done), plan.decode_concurrency, plan.decode_num_cpus, plan.caption_concurrency,
                engine, plan.device, plan.caption_num_cpus)
    tally, registry = RowTally.remote(), IdRegistry.remote()
    # Videos already done are dropped where the list is read: a rerun makes blocks only of what is left.
    todo = read_video_refs(cfg.source, cfg.storage_options, rows_per_block=res.batch_size, retry=cfg.retry,
                           keep=CheckIds(registry, SkipDone(done, tally), windows=cfg.source.windows))
    if cfg.source.limit:
        todo = todo.materialize()  # the first `limit` rows, read and checked before any pool starts
    check_registered_ids(cfg, registry)
    written = Progress()  # the manifests' sums: the driver keeps no row and no manifest
    read = ray.get(tally.totals.remote())
    if not cfg.source.limit and read.get("read", 0) == read.get("done", 0):
        # Without a limit the list is read (and filtered) when read_video_refs returns: nothing is left, so no
        # actor pool starts (a rerun of a finished job takes seconds).
        logger.info("run %s: all %d videos of the list are already done; nothing to decode or caption", run_id,
                    read.get("read", 0))
        rows = (row for row in ())
    else:
        stages = recaption_stages(cfg, prompt, run_id, done, plan, tally, engine, lease.guard)
        to_do = todo.count()  # from the blocks' metadata: the list has been read
        segments = segment_count(to_do, res.segment_rows)
        if segments > 1:
            logger.info("run %s: %d list rows to do, in %d segments (resources.segment_rows: %d%s)", run_id, to_do,
                        segments, res.segment_rows, "; with clip windows a segment counts list rows, not windows"
                        if cfg.source.windows else "")
        rows = watched(run_in_segments(todo, stages, segments, before_each=lease.check), res.stall_warn_s,
                       res.stall_fail_s, describe_cluster)
    with contextlib.closing(rows):  # however the loop ends: the watch's thread then starts no further segment
        for row in rows:
            if isinstance(row, SegmentStarted):
                continue
            _take_manifest(json.loads(row["manifest"]), run_id, written, tally, lease)
    wall_s = time.perf_counter() - started
    # The output as it is now, from the first scan plus the files this run wrote: no second full scan.
    repaired_after, after = reconcile_and_scan(out.output, cfg.storage_options, previous=before,
                                               written=written.files, check=lease.check)
    compaction = _compact_after(out.output, cfg.storage_options, out.compact_target_mb, lease) \
        if out.compact_after else None
    counts = ray.get(tally.totals.remote())
    summary = summarise(cfg, run_id, written, wall_s, counts, repaired, repaired_after, after,
                        gpus=plan.caption_concurrency * plan.caption_num_gpus)
    summary["engine"] = engine
    if compaction is not None:
        summary["compaction"] = compaction
        if "files_after" in compaction:
            summary["output_total"]["parquet_files"] = compaction["files_after"]
    if summary["this_run"]["videos"]:
        summary["vs_plan"] = _against_plan(out.output, cfg.storage_options, summary["this_run"])
    summary = mask_values(summary)  # URIs with user info or signatures, in paths, errors and the config
    lease.check()
    OutputStore(out.output, cfg.storage_options).write_summary(run_id, summary)
    return summary


def _take_manifest(manifest: dict, run_id: str, written: Progress, tally, lease: OutputLease) -> None:
    """A writer's manifest reached the driver: fold it into the run's sums, record it, log the progress line."""
    if lease.lost:
        lease.check()  # raises LeaseLost: the heartbeat found another job holding the output
    written.add(manifest)
    record_manifest(run_id, manifest)
    if manifest["file"]:
        so_far = ray.get(tally.totals.remote())
        logger.info("wrote %s; %s", manifest["file"],
                    written.line(so_far.get("read", 0) + so_far.get("windows_added", 0), so_far.get("done", 0)))


def _compact_after(output: str, storage_options: dict | None, target_mb: float, lease: OutputLease) -> dict:
    """``output.compact_after``: what compaction did, or ``{"error": ...}`` when it failed. The run's work is
    written by then and a failed compaction loses nothing (the next job finishes or undoes it), so only a lost
    lease fails the run here."""
    try:
        return compact(output, storage_options, target_mb, check=lease.check)
    except LeaseLost:
        raise
    except (OSError, StorageError, ValueError) as exc:  # pyarrow's errors are ValueErrors too
        logger.warning("compaction after the run failed (%s); the output is whole: run jobs/compact.py to retry",
                       type(exc).__name__)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _against_plan(output: str, storage_options: dict | None, this_run: dict) -> dict | None:
    """This run's figures against the output's latest plan; None without one. A plan is advice: nothing about
    it (unreadable, damaged, a store error) may fail a run that did its work."""
    try:
        plan = OutputStore(output, storage_options).latest_plan(accept=well_formed)
        return compare_with_plan(this_run, plan) if plan else None
    except Exception as exc:  # noqa: BLE001 - see above; the run's summary says nothing of a plan then
        logger.warning("could not compare this run with its plan (%s): left out of the summary", type(exc).__name__)
        return None


def incompleteness(summary: dict, allow_empty: bool) -> str | None:
    """Why a finished run must not count as a success, or None."""
    run, listed = summary["this_run"], summary["config"]["source"]["input"]
    if run["list_rows"] == 0 and not allow_empty:
        return (f"the video list {listed} yielded no rows: nothing was read (check the list; a transient storage "
                "failure can look like an empty list). Pass --allow-empty if an empty list is expected.")
    if not summary["complete"]:
        accounted = run["videos"] + run["skipped_already_done"] + run["duplicates_skipped"]
        windows = f" (+{run['windows_added']} clip windows)" if run.get("windows_added") else ""
        return (f"read {run['list_rows']} rows{windows} from {listed} but accounted for {accounted} (written "
                f"{run['videos']}, already done {run['skipped_already_done']}, repeats {run['duplicates_skipped']}); "
                "rerun the same command to finish the rest")
    return None


def summarise(cfg: JobConfig, run_id: str, written: Progress | list[dict], wall_s: float, counts: dict[str, int],
              repaired: dict, repaired_after: dict, state: OutputState, gpus: float = 0.0) -> dict:
    """This run's counts and speeds (``written``: the writers' manifests, or their sums) plus the state of the
    whole output afterwards. ``gpus``: what the caption actors held; GPU-hours are those GPUs over the run's wall
    time (what a user pays for)."""
    run = written if isinstance(written, Progress) else Progress.of(written)
    failed, sums = run.failed, run.sums
    flagged: Counter = Counter({flag: 0 for flag in S.FLAGS})
    flagged.update(run.flagged)
    processed, duplicates = run.written, run.repeats
    list_rows, skipped, windows_added = counts.get("read", 0), counts.get("done", 0), counts.get("windows_added", 0)
    gpu_hours = gpus * wall_s / 3600
    decoded, captioned = sums["decoded"], sums["captioned"]
    decode_cpu_s = sums["decode_cpu_s"]
    caption_s = sums["caption_s"]
    cpu_per_video = decode_cpu_s / decoded if decoded else None
    caption_per_video = caption_s / captioned if captioned else None
    return {
        "run_id": run_id,
        "output": cfg.output.output,
        "complete": list_rows + windows_added == processed + skipped + duplicates,
        "this_run": {
            "list_rows": list_rows,
            "windows_added": windows_added,  # rows beyond one per list row, from clip windows
            "videos": processed,
            "ok": run.ok,
            "failed": sum(failed.values()),
            "failed_by_reason": dict(sorted(failed.items())),
            "skipped_already_done": skipped,
            "duplicates_skipped": duplicates,
            "read_retries": sums["read_retries"],
            "write_retries": sums["write_retries"],
            "files_written": len(run.files),
            "wall_s": round(wall_s, 3),
            "videos_per_s": round(processed / wall_s, 4) if wall_s > 0 else None,
            "gpus": gpus,
            "gpu_hours": round(gpu_hours, 6),
            "videos_per_gpu_hour": round(processed / gpu_hours, 1) if gpu_hours > 0 else None,
            "decode_s": round(sums["decode_s"], 3),
            "caption_s": round(caption_s, 3),
            "decode_cpu_s": round(decode_cpu_s, 3),
            "decode_cpu_s_per_video": round(cpu_per_video, 4) if cpu_per_video is not None else None,
            "caption_s_per_video": round(caption_per_video, 4) if caption_per_video is not None else None,
            # CPU cores of decoding that keep one caption actor busy: decode CPU-seconds per video over the
            # caption actor's seconds per video (with vLLM's batches in flight, caption_s overlaps: a floor).
            "decode_cores_per_caption_actor": (round(cpu_per_video / caption_per_video, 2)
                                               if cpu_per_video is not None and caption_per_video else None),
            "failure_rate": round(sum(failed.values()) / processed, 6) if processed else None,
            "tokens_generated": sums["tokens"],
            "hit_token_limit": sums["truncated"],
            "flagged": dict(flagged),
        },
        "output_total": {
            "videos": state.num_rows,
            "ok": state.ok,
            "failed": state.num_rows - state.ok,
            "parquet_files": len(state.files),
        },
        "repairs": {"before": repaired, "after": repaired_after},
        "config": cfg.to_dict(redacted=True),
    }


def format_summary(summary: dict) -> str:
    run, total = summary["this_run"], summary["output_total"]
    lines = [
        f"run {summary['run_id']} -> {summary['output']}",
        f"  this run: {run['list_rows']} list rows read; {run['videos']} videos ({run['ok']} ok, "
        f"{run['failed']} failed), {run['skipped_already_done']} skipped as already done"
        + (f", {run['duplicates_skipped']} repeated list rows skipped" if run["duplicates_skipped"] else ""),
    ]
    for reason, count in run["failed_by_reason"].items():
        lines.append(f"    failed {reason}: {count}")
    lines += [
        f"  speed: {run['videos_per_s']} videos/s over {run['wall_s']} s"
        + (f" ({run['gpu_hours']:.4f} GPU-hours on {run['gpus']:g} GPUs, {run['videos_per_gpu_hour']} videos per "
           "GPU-hour)" if run.get("gpu_hours") else "") + f"; decode {run['decode_s']} s, "
        f"caption {run['caption_s']} s (summed over workers); {run['tokens_generated']} tokens generated, "
        f"{run['hit_token_limit']} captions hit the token limit",
        *([f"  decode: {run['decode_cpu_s_per_video']} CPU-s per video; one caption actor needs "
           f"{run['decode_cores_per_caption_actor']} decode cores to stay busy"]
          if run.get("decode_cores_per_caption_actor") is not None else []),
        "  flagged captions: " + ", ".join(f"{k.removeprefix('flag_')} {v}" for k, v in run["flagged"].items()),
        f"  output now: {total['videos']} videos ({total['ok']} ok, {total['failed']} failed) "
        f"in {total['parquet_files']} Parquet files",
    ]
    compared = summary.get("vs_plan")
    if compared and compared["figures"]:
        lines.append(f"  against plan {compared['plan_id']} (run / plan):")
        def g(value) -> str:
            return "?" if value is None else f"{value:.4g}"

        for name, f in compared["figures"].items():
            low, high = f["range"]
            lines.append(f"    {name}: {g(f['actual'])} vs {g(f['planned'])} planned (range {g(low)} - {g(high)}): "
                         f"ratio {g(f['ratio'])}{'' if f['within'] else ', outside the range'}")
    return "\n".join(lines)
