"""Cluster metrics of recaption runs (``ray.util.metrics``), exported by each node's Ray metrics agent in the
Prometheus format, so a Prometheus / Grafana setup that scrapes the Ray cluster sees them.

Names as Prometheus shows them (Ray adds the ``ray_`` prefix, counters get ``_total``):

- ``ray_pllava_videos_total{run_id, status, reason}``: rows written; ``status`` ok or failed, ``reason``
  ``<stage>/<reason>`` of a failure (``none`` when ok);
- ``ray_pllava_tokens_generated_total{run_id}``, ``ray_pllava_files_written_total{run_id}``;
- ``ray_pllava_decode_seconds{run_id}`` and ``ray_pllava_caption_seconds{run_id}``: histograms per video;
- ``ray_pllava_caption_batch_size{engine}``: videos per caption call, recorded by the caption actors.

The driver records the per-run metrics from the writers' manifests as they arrive (it lives for the whole
run, so nothing is lost when a short-lived task process exits before the agent's next scrape of it).
"""

from __future__ import annotations

from functools import lru_cache

SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@lru_cache(maxsize=None)
def _metrics() -> dict:
    """The metric objects of this process (created once, on first use)."""
    from ray.util.metrics import Counter, Histogram

    run = ("run_id",)
    return {
        "videos": Counter("pllava_videos", description="Videos written (one row each), by status and failure "
                          "reason.", tag_keys=run + ("status", "reason")),
        "tokens": Counter("pllava_tokens_generated", description="Caption tokens generated.", tag_keys=run),
        "files": Counter("pllava_files_written", description="Output Parquet files written.", tag_keys=run),
        "decode_s": Histogram("pllava_decode_seconds", description="Seconds to read and sample one video.",
                              boundaries=SECONDS_BOUNDARIES, tag_keys=run),
        "caption_s": Histogram("pllava_caption_seconds", description="Caption seconds per video (its share of "
                               "the batch).", boundaries=SECONDS_BOUNDARIES, tag_keys=run),
        "batch": Histogram("pllava_caption_batch_size", description="Videos per caption call.",
                           boundaries=BATCH_BOUNDARIES, tag_keys=("engine",)),
    }


def record_manifest(run_id: str, manifest: dict) -> None:
    """Count one written file's rows (a manifest of :class:`pipeline.sinks.ShardWriter`)."""
    m, tags = _metrics(), {"run_id": run_id}
    if manifest["ok"]:
        m["videos"].inc(manifest["ok"], tags={**tags, "status": "ok", "reason": "none"})
    for reason, count in manifest["failed"].items():
        m["videos"].inc(count, tags={**tags, "status": "failed", "reason": reason})
    if manifest["tokens"]:
        m["tokens"].inc(manifest["tokens"], tags=tags)
    if manifest["file"]:
        m["files"].inc(1, tags=tags)
    for seconds in manifest.get("decode_s_each", []):
        m["decode_s"].observe(seconds, tags=tags)
    for seconds in manifest.get("caption_s_each", []):
        m["caption_s"].observe(seconds, tags=tags)


def record_caption_batch(engine: str, size: int) -> None:
    _metrics()["batch"].observe(size, tags={"engine": engine})
