"""Know the bill before the run: measure a seeded sample of the list on the real pipeline, project the whole list.

``plan_job(cfg, sample_size)``:

1. reads the list once (the list only, no video) where the job reads it, counting its rows and the rows the
   output already holds, and keeps a seeded random sample of the rest: the ``sample_size`` rows whose
   ``sha256(seed, video_id)`` is smallest (the same sample whatever the order the list is read in);
2. runs the sample through the real job (same model, settings, cluster) into a scratch output under
   ``<output>/_plans/`` (nothing else of the output is touched), and reads back per video: bytes read,
   duration, resolution, decode CPU-seconds, caption seconds, tokens, failure reason, output bytes;
3. projects the list's remaining rows (:func:`project`): wall time on this cluster, GPU-hours, CPU-hours, the
   decode cores each caption actor needs (and whether the cluster has them), output size, failures by reason and
   the cost, each with a bootstrap range over the sample (the 5th and 95th percentiles); suggests settings where
   the sample shows a bottleneck (:func:`suggest`), as YAML for ``--config``;
4. writes the plan to ``<output>/_plans/<plan id>.json`` (:class:`~pipeline.io.output_store.OutputStore`) and
   removes the scratch output. A later run's summary compares its own figures with the latest plan
   (:func:`pipeline.plan_check.compare_with_plan`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 200
BOOTSTRAP_ROUNDS = 1000


# -- the sample ----------------------------------------------------------------------------------------
def sample_key(seed: int, video_id: str) -> int:
    """The order the sample is drawn in: a hash of the seed and the id (independent of the list's order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{video_id}".encode()).digest()[:8], "big")


def smallest_keys(table: pa.Table, count: int, seed: int) -> pa.Table:
    """The ``count`` rows of ``table`` whose :func:`sample_key` is smallest, in key order, one per id (a list
    that names a video twice has it sampled once, as the run captions it once)."""
    if table.num_rows < 2:
        return table
    keys = np.array([sample_key(seed, v) for v in table.column(S.VIDEO_ID).to_pylist()], dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    first = order[np.concatenate(([True], keys[order][1:] != keys[order][:-1]))]
    return table.take(pa.array(first[:count]))


class SampleByKey:
    """A list-reading filter: applies ``inner`` filters in turn (the run's id check, the skip of what is done,
    the count of what is left), then keeps each block's ``count`` rows of smallest key (the driver then keeps
    the ``count`` smallest of all)."""

    def __init__(self, count: int, seed: int, *inner) -> None:
        self.count, self.seed, self.inner = count, seed, inner

    def __call__(self, batch: pa.Table) -> pa.Table:
        for step in self.inner:
            batch = step(batch)
        return smallest_keys(batch, self.count, self.seed)


# -- projection ----------------------------------------------------------------------------------------
def _range(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 5)), float(np.percentile(values, 95))]


def project(videos: list[dict], remaining: int, cluster: dict, overhead_s: float = 0.0,
            gpu_hour_cost: float | None = None, cpu_hour_cost: float | None = None, seed: int = 0,
            rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Projections for ``remaining`` videos from the sample's per-video measurements.

    Args:
        videos: per sampled video: ``decode_cpu_s`` (CPU-seconds decoding it; 0 when it never reached a
            decoder), ``caption_s`` (seconds of a caption actor's time; 0 when not captioned), ``bytes_read``,
            ``output_bytes``, ``tokens``, ``failure`` (``stage/reason`` or None).
        cluster: ``caption_actors``, ``gpus_per_caption_actor``, ``decode_cpus`` (CPUs the decode actors hold),
            ``pool_cpus`` (CPUs all the job's pools hold).
        overhead_s: seconds the run spends beyond its videos in all (start-up, model load and the last file, each
            once per segment of the list): added once.

    Returns:
        per figure ``{"value", "range"}`` (the range: the 5th and 95th percentiles over ``rounds`` bootstrap
        resamples of the sample), the bottleneck, and the failures by reason.

    Raises:
        ValueError: an empty sample or a cluster without caption actors or decode CPUs.
    """
    if not videos:
        raise ValueError("no sampled videos to project from")
    if cluster["caption_actors"] <= 0 or cluster["decode_cpus"] <= 0:
        raise ValueError(f"a cluster with {cluster['caption_actors']} caption actors and {cluster['decode_cpus']} "
                         "decode CPUs runs nothing")
    # A video that never reached a decoder or a caption actor costs those nothing (0 in the totals), and is not
    # part of the seconds per decoded / captioned video (as a run's summary counts them).
    columns = {k: np.array([np.nan if v.get(k) is None else float(v[k]) for v in videos]) for k in
               ("decode_cpu_s", "caption_s", "bytes_read", "output_bytes", "tokens")}
    failures = [v.get("failure") for v in videos]
    reasons = sorted({f for f in failures if f})
    n = len(videos)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(rounds, n)) if rounds else np.zeros((0, n), dtype=int)

    def figures(idx) -> dict[str, float]:
        mean = {k: float(np.nan_to_num(v[idx]).mean()) for k, v in columns.items()}  # per video of the list
        each = {k: float(np.nanmean(v[idx])) if np.isfinite(v[idx]).any() else math.nan  # per video that had it
                for k, v in columns.items()}
        caption_wall = remaining * mean["caption_s"] / cluster["caption_actors"]
        decode_wall = remaining * mean["decode_cpu_s"] / cluster["decode_cpus"]
        wall = max(caption_wall, decode_wall) + overhead_s
        out = {
            "wall_s": wall,
            "videos_per_s": remaining / wall if wall > 0 else math.inf,
            "gpu_hours": cluster["caption_actors"] * cluster["gpus_per_caption_actor"] * wall / 3600,
            "cpu_hours": cluster["pool_cpus"] * wall / 3600,
            "decode_cpu_hours": remaining * mean["decode_cpu_s"] / 3600,
            "decode_cpu_s_per_video": each["decode_cpu_s"],
            "caption_s_per_video": each["caption_s"],
            "tokens_per_video": each["tokens"],
            "bytes_read": remaining * mean["bytes_read"],
            "output_bytes": remaining * mean["output_bytes"],
            "failure_rate": float(np.mean([failures[i] is not None for i in idx])),
            "decode_cores_per_caption_actor": (mean["decode_cpu_s"] / mean["caption_s"] if mean["caption_s"] > 0
                                               else math.nan),
        }
        for reason in reasons:
            out[f"failures:{reason}"] = remaining * float(np.mean([failures[i] == reason for i in idx]))
        if gpu_hour_cost is not None or cpu_hour_cost is not None:
            out["cost"] = out["gpu_hours"] * (gpu_hour_cost or 0.0) + out["cpu_hours"] * (cpu_hour_cost or 0.0)
        return out

    point = figures(np.arange(n))
    resampled = [figures(idx) for idx in draws]
    result: dict[str, Any] = {}
    for key, value in point.items():
        spread = np.array([r[key] for r in resampled]) if resampled else np.array([value])
        finite = spread[np.isfinite(spread)]
        result[key] = {"value": value if math.isfinite(value) else None,
                       "range": _range(finite) if len(finite) else [None, None]}
    totals = {k: float(np.nan_to_num(v).sum()) for k, v in columns.items()}
    result["bottleneck"] = ("decode" if totals["decode_cpu_s"] / cluster["decode_cpus"]
                            > totals["caption_s"] / cluster["caption_actors"] else "caption")
    result["decode_cores_available_per_caption_actor"] = cluster["decode_cpus"] / cluster["caption_actors"]
    return result


def suggest(projection: dict, settings: dict, videos: list[dict]) -> tuple[list[str], dict]:
    """Where the sample shows a bottleneck, what to change: lines for people and a ``--config`` YAML layer.

    ``settings``: the job's ``decode_concurrency``, ``decode_num_cpus``, ``caption_concurrency``,
    ``max_new_tokens``, ``engine`` and ``vllm_batch_size``.
    """
    lines, layer = [], {}
    need = projection["decode_cores_per_caption_actor"]["value"]
    have = projection["decode_cores_available_per_caption_actor"]
    if need is not None and need > have * 1.1 and projection["bottleneck"] == "decode":
        per_actor = settings["decode_num_cpus"] or 1.0
        wanted = math.ceil(need * settings["caption_concurrency"] / per_actor)
        lines.append(f"decode-bound: one caption actor needs {need:.1f} decode cores and has {have:.1f}; "
                     f"{wanted - settings['decode_concurrency']} more decode actors "
                     f"({wanted} in all) would keep the caption actors busy")
        layer.setdefault("resources", {})["decode_concurrency"] = wanted
    captioned = [v for v in videos if v.get("failure") is None]
    truncated = sum(bool(v.get("truncated")) for v in captioned)
    if captioned and truncated / len(captioned) > 0.2:
        lines.append(f"{truncated} of {len(captioned)} sampled captions hit max_new_tokens "
                     f"({settings['max_new_tokens']}): raise generation.max_new_tokens for whole captions")
        layer.setdefault("generation", {})["max_new_tokens"] = int(settings["max_new_tokens"] * 2)
    failed = sum(v.get("failure") is not None for v in videos)
    if videos and failed / len(videos) > 0.2:
        lines.append(f"{failed} of {len(videos)} sampled videos failed: look at the failures by reason before "
                     "paying for the whole list")
    return lines, layer


# -- the plan ------------------------------------------------------------------------------------------
def _per_video(rows: list[dict], sizes: dict[str, int], output_bytes_per_row: float) -> list[dict]:
    videos = []
    for row in rows:
        failure = f"{row[S.ERROR_STAGE]}/{row[S.ERROR_REASON]}" if row.get(S.ERROR) else None
        videos.append({
            "video_id": row[S.VIDEO_ID], "failure": failure, "bytes_read": sizes.get(row[S.URI] or "", 0),
            "decode_cpu_s": row.get(S.DECODE_CPU_S), "caption_s": row.get(S.CAPTION_S),
            "tokens": row.get(S.NUM_TOKENS), "truncated": bool(row.get(S.TRUNCATED)),
            "duration_s": row.get(S.DURATION_S), "width": row.get(S.WIDTH), "height": row.get(S.HEIGHT),
            "output_bytes": output_bytes_per_row,
        })
    return videos


def _sizes(uris: list[str], storage_options: dict | None) -> dict[str, int]:
    """Object sizes (a HEAD each, in parallel); 0 for what cannot be looked up (it failed in the run too)."""
    from pipeline.io.storage import get_fs

    def size(uri: str) -> tuple[str, int]:
        try:
            fs, path = get_fs(uri, storage_options)
            return uri, int(fs.size(path) or 0)
        except Exception:  # noqa: BLE001 - a missing video is a failure the run records; its size is 0
            return uri, 0

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(size, sorted(set(u for u in uris if u))))


def _folder_bytes(uri: str, storage_options: dict | None) -> int:
    from pipeline.io.storage import get_fs

    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        return 0
    return int(sum(info.get("size") or 0 for info in fs.find(path, detail=True).values()))


_last_stamp = [0]


def new_plan_id() -> str:
    """``plan-<UTC time to the microsecond>-<random>``: plans made one after the other sort in that order (in one
    process strictly: two ids never share a microsecond)."""
    import uuid
    from datetime import datetime, timezone

    stamp = max(time.time_ns() // 1000, _last_stamp[0] + 1)
    _last_stamp[0] = stamp
    moment = datetime.fromtimestamp(stamp // 1_000_000, timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"plan-{moment}{stamp % 1_000_000:06d}Z-{uuid.uuid4().hex[:6]}"


def _done_sources(store, storage_options: dict | None) -> list[str]:
    """With clip windows the output holds window ids: a list row is done when windows of it are in the output
    (``source_video``). A source some of whose windows failed to be written counts as done here (the run
    finishes it)."""
    found: set[str] = set()
    for uri in store.parquet_files():
        try:
            table = store.read_table(uri, columns=[S.SOURCE_VIDEO])
        except (KeyError, ValueError, pa.ArrowException):  # a file without the column holds no windows
            continue
        found.update(v for v in table.column(S.SOURCE_VIDEO).to_pylist() if v is not None)
    return sorted(found)


def plan_job(cfg, sample_size: int = DEFAULT_SAMPLE, seed: int = 0, gpu_hour_cost: float | None = None,
             cpu_hour_cost: float | None = None, progress: bool = False) -> dict:
    """Measure a sample of ``cfg``'s list on the real pipeline and project the rest (module docstring).

    Raises:
        what :func:`pipeline.runner.run_job` raises for a job that cannot start (resources, list, engine).
        ValueError: ``sample_size`` below 1.
    """
    import ray

    from pipeline.captioner import caption_identity
    from pipeline.cluster import init_ray
    from pipeline.io.masking import mask_values
    from pipeline.io.output_store import OutputStore, parquet_bytes
    from pipeline.io.sources import read_video_refs
    from pipeline.config import SourceConfig
    from pipeline.io.storage import join, remove_tree, write_atomic
    from pipeline.list_ids import CheckIds, IdRegistry, check_registered_ids
    from pipeline.resume import scan_output
    from pipeline.runner import RunIncomplete, plan_for, run_job
    from pipeline.segments import segment_count
    from pipeline.skip import RowTally, SkipDone

    if sample_size < 1:
        raise ValueError(f"the plan's sample must be at least 1 video, got {sample_size}")
    started = time.perf_counter()
    plan_id = new_plan_id()
    store = OutputStore(cfg.output.output, cfg.storage_options)
    init_ray(cfg.resources.ray_num_cpus)
    pools = plan_for(cfg)  # a job that cannot be scheduled stops here, as the run would
    same_as = caption_identity(cfg.model, cfg.prompt_text()) if cfg.output.recaption_changed else None
    done = scan_output(cfg.output.output, cfg.storage_options).done_set(cfg.output.retry_errors, same_as)
    if cfg.source.windows:
        done = done.plus(_done_sources(store, cfg.storage_options))
    # The list read as the run reads it: the same id check (a list the run refuses is refused here), the same
    # skip of what is done; what is left is counted by distinct id (a repeated row is captioned once).
    tally, registry, left = RowTally.remote(), IdRegistry.remote(), IdRegistry.remote()
    check = CheckIds(registry, windows=cfg.source.windows)
    refs = read_video_refs(cfg.source, cfg.storage_options, rows_per_block=cfg.resources.batch_size,
                           retry=cfg.retry, keep=SampleByKey(sample_size, seed, check, SkipDone(done, tally),
                                                             CheckIds(left)))
    blocks = [b for b in refs.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows]
    check_registered_ids(cfg, registry)
    counts = ray.get(tally.totals.remote())
    list_rows, already_done = counts.get("read", 0), counts.get("done", 0)
    remaining = ray.get(left.distinct_ids.remote())
    sample = smallest_keys(pa.concat_tables(blocks, promote_options="default"), sample_size, seed) if blocks \
        else None
    plan: dict[str, Any] = {"plan_id": plan_id, "output": cfg.output.output, "list_rows": list_rows,
                            "already_done": already_done, "remaining": remaining, "seed": seed,
                            "sample_size": 0 if sample is None else sample.num_rows,
                            "sample_ids": [] if sample is None else sample.column(S.VIDEO_ID).to_pylist()}
    if sample is None or not remaining:
        note = "the list yielded no rows" if not list_rows else "every video of the list is already done"
        plan.update(projection=None, suggestions=[], suggested_config={}, note=note,
                    config=cfg.to_dict(redacted=True))
        plan = mask_values(plan)
        store.write_plan(plan_id, plan)
        return plan
    # Rows the list itself gets wrong (no URI, bad bounds) fail where the list is read: counted as sampled,
    # not run (the error would be lost on the way to the scratch list).
    listed_errors = [r for r in sample.to_pylist() if r.get(S.ERROR)]
    runnable = sample.filter(pc.is_null(sample.column(S.ERROR))) if S.ERROR in sample.column_names else sample
    scratch = join(store.plans_uri(), f"{plan_id}-scratch")
    sample_list = join(scratch, "sample.parquet")
    keep = [c for c in runnable.column_names if c not in (S.ERROR, S.ERROR_STAGE, S.ERROR_REASON)]
    write_atomic(sample_list, parquet_bytes(runnable.select(keep)), cfg.storage_options)
    # The scratch list is in the pipeline's own columns: only the windows settings carry over.
    source = SourceConfig(input=sample_list, format="parquet", id_column=S.VIDEO_ID,
                          **{k: getattr(cfg.source, k) for k in ("window_s", "window_stride_s", "window_scenes")})
    sample_cfg = cfg.model_copy(update={
        "source": source,
        "output": cfg.output.model_copy(update={"output": join(scratch, "out"), "retry_errors": False,
                                               "recaption_changed": False}),
        # the sample in one segment: its start-up is measured once, then counted per segment of the list
        "resources": cfg.resources.model_copy(update={"segment_rows": max(cfg.resources.segment_rows,
                                                                            runnable.num_rows)}),
    })
    try:
        if not runnable.num_rows:
            raise ValueError(f"every one of the {sample.num_rows} sampled list rows is an error of the list itself "
                             f"({listed_errors[0][S.ERROR]}): fix the list before planning")
        try:
            summary = run_job(sample_cfg, progress=progress)
        except RunIncomplete as exc:
            raise RunIncomplete(f"the plan's sample run did not finish: {exc}") from exc
        sample_store = OutputStore(join(scratch, "out"), cfg.storage_options)
        rows = pa.concat_tables([sample_store.read_table(f) for f in sample_store.parquet_files()],
                                promote_options="default").to_pylist()
        output_bytes = (_folder_bytes(join(scratch, "out", "parquet"), cfg.storage_options)
                        + _folder_bytes(join(scratch, "out", "webdataset"), cfg.storage_options))
        sizes = _sizes([r[S.URI] for r in rows], cfg.storage_options)
    finally:
        remove_tree(scratch, cfg.storage_options)
    videos = _per_video(rows + listed_errors, sizes, output_bytes / max(1, len(rows)))
    run = summary["this_run"]
    cluster = {"caption_actors": pools.caption_concurrency,
               "gpus_per_caption_actor": pools.caption_num_gpus,
               "decode_cpus": pools.decode_concurrency * pools.decode_num_cpus,
               "pool_cpus": pools.decode_concurrency * pools.decode_num_cpus
               + pools.caption_concurrency * pools.caption_num_cpus}
    # What the sample run spent beyond its videos' own work: start-up, model load, the last file.
    busy = max(sum(v["caption_s"] or 0.0 for v in videos) / cluster["caption_actors"],
               sum(v["decode_cpu_s"] or 0.0 for v in videos) / cluster["decode_cpus"])
    overhead_s = max(0.0, run["wall_s"] - busy)
    segments = segment_count(remaining, cfg.resources.segment_rows)  # each starts the pools again
    # With clip windows each list row becomes several output rows (videos): the projection is in those.
    windows_per_row = len(rows) / runnable.num_rows if cfg.source.windows and runnable.num_rows else 1.0
    projected_videos = max(1, round(remaining * windows_per_row))
    projection = project(videos, projected_videos, cluster, overhead_s * segments, gpu_hour_cost, cpu_hour_cost,
                         seed)
    plan["projected_videos"] = projected_videos
    plan["segments"] = segments
    plan["windows_per_list_row"] = round(windows_per_row, 4) if cfg.source.windows else None
    settings = {"decode_concurrency": pools.decode_concurrency, "decode_num_cpus": pools.decode_num_cpus,
                "caption_concurrency": pools.caption_concurrency,
                "max_new_tokens": cfg.generation.max_new_tokens, "engine": summary.get("engine"),
                "vllm_batch_size": cfg.vllm.batch_size}
    lines, layer = suggest(projection, settings, videos)
    plan.update({
        "created_s": time.time(), "plan_wall_s": round(time.perf_counter() - started, 3),
        "sample_run": {k: run.get(k) for k in ("videos", "ok", "failed", "failed_by_reason", "wall_s",
                                              "videos_per_s", "decode_cpu_s_per_video", "caption_s_per_video",
                                              "tokens_generated", "hit_token_limit")},
        "engine": summary.get("engine"), "cluster": cluster, "overhead_s": round(overhead_s, 3),
        # One caption actor's speed at the batch size the job uses, and the decode actors it needs to stay busy.
        "per_caption_actor": {
            "captions_per_s": (1 / projection["caption_s_per_video"]["value"]
                               if projection["caption_s_per_video"]["value"] else None),
            "batch_size": cfg.vllm.batch_size if summary.get("engine") == "vllm" else cfg.resources.batch_size,
            "decode_actors_needed": (math.ceil(projection["decode_cores_per_caption_actor"]["value"]
                                               / (pools.decode_num_cpus or 1.0) - 1e-9)
                                     if projection["decode_cores_per_caption_actor"]["value"] is not None else None),
            "decode_actors_available": pools.decode_concurrency / pools.caption_concurrency,
        },
        "costs": {"gpu_hour": gpu_hour_cost, "cpu_hour": cpu_hour_cost},
        "sample_videos": {"duration_s": _stats([v["duration_s"] for v in videos]),
                          "pixels": _stats([(v["width"] or 0) * (v["height"] or 0) for v in videos
                                            if v["width"]]),
                          "bytes_read": _stats([v["bytes_read"] for v in videos])},
        "projection": projection, "suggestions": lines, "suggested_config": layer,
        "config": cfg.to_dict(redacted=True),
    })
    plan = mask_values(plan)  # URIs with user info or signatures (the output, the list, errors)
    store.write_plan(plan_id, plan)
    return plan


def _stats(values: list) -> dict | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "p50": float(np.median(values)), "max": float(np.max(values))}


# -- printing ------------------------------------------------------------------------------------------
def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_plan(plan: dict, uri: str | None = None) -> str:
    """The plan for people: what was measured, the projections with their ranges, the suggestions."""
    lines = [f"plan {plan['plan_id']} for {plan['output']}",
             f"  list: {plan['list_rows']} rows, {plan['already_done']} already done, {plan['remaining']} to caption"
             + (f" (clip windows: {plan['windows_per_list_row']:.3g} per row, {plan['projected_videos']} videos)"
                if plan.get("windows_per_list_row") else "")]
    projection = plan.get("projection")
    if not projection:
        lines.append(f"  nothing to plan: {plan.get('note', 'nothing left to caption')}")
        return "\n".join(lines)
    run, actor = plan["sample_run"], plan["per_caption_actor"]
    lines.append(f"  sample: {plan['sample_size']} videos (seed {plan['seed']}) run in {run['wall_s']} s: "
                 f"{run['ok']} ok, {run['failed']} failed; {plan['engine']} engine; "
                 f"{plan['cluster']['caption_actors']} caption actors, {plan['cluster']['decode_cpus']:g} decode CPUs")

    def figure(name: str, show) -> str:
        f = projection[name]
        low, high = f["range"]
        return f"{show(f['value'])} ({show(low)} - {show(high)})"

    lines += [
        f"  wall time: {figure('wall_s', _hours)}; {figure('videos_per_s', lambda v: f'{v:.3g}' if v else '?')} "
        "videos/s",
        f"  GPU-hours: {figure('gpu_hours', lambda v: f'{v:.3g}' if v is not None else '?')}; CPU-hours "
        f"(pools): {figure('cpu_hours', lambda v: f'{v:.3g}' if v is not None else '?')}",
        f"  per video: decode {figure('decode_cpu_s_per_video', lambda v: f'{v:.3g}' if v is not None else '?')} "
        f"CPU-s, caption {figure('caption_s_per_video', lambda v: f'{v:.3g}' if v is not None else '?')} s",
        f"  one caption actor: {_num(actor['captions_per_s'])} captions/s at batch size {actor['batch_size']}; "
        f"needs {_num(projection['decode_cores_per_caption_actor']['value'])} decode cores "
        f"({actor['decode_actors_needed']} decode actors), has "
        f"{projection['decode_cores_available_per_caption_actor']:.3g} ({_num(actor['decode_actors_available'])} "
        f"actors): {projection['bottleneck']}-bound",
        f"  read {figure('bytes_read', _size)}; output {figure('output_bytes', _size)}",
        f"  failures: {figure('failure_rate', lambda v: f'{100 * v:.1f}%' if v is not None else '?')}",
    ]
    for key in sorted(k for k in projection if k.startswith("failures:")):
        lines.append(f"    {key.removeprefix('failures:')}: {figure(key, lambda v: f'{v:.0f}')}")
    if "cost" in projection:
        lines.append(f"  cost: {figure('cost', lambda v: f'{v:,.4g}' if v is not None else '?')}")
    lines.append("  ranges: 5th-95th percentile over bootstrap resamples of the sample; the wall time adds the "
                 f"sample run's start-up ({plan['overhead_s']:.0f} s) once")
    for line in plan["suggestions"]:
        lines.append(f"  suggestion: {line}")
    if plan["suggested_config"]:
        import yaml

        lines.append("  as --config YAML:\n" + "\n".join("    " + line for line in
                                                        yaml.safe_dump(plan["suggested_config"]).splitlines()))
    if uri:
        lines.append(f"  plan written to {uri}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}"


def dumps(plan: dict) -> bytes:
    return json.dumps(plan, indent=2, default=str).encode()
