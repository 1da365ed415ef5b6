"""The pipeline's own overhead at scale: list rows/s, driver memory, resume scans and name lookups.

    python bench/scale.py [--rows 1000000] [--files 10000] [--names 2000] [--parts pipeline,scan,names]

- ``pipeline``: ``--rows`` txt-list rows whose videos are missing run through the whole job (read, skip,
  sample -> error rows, captioner pass-through, Parquet): rows/s, with the driver's peak RSS (sampled every
  0.2 s) and its growth over the run. Baseline in the same run: reading and normalising the same list alone
  (``read_video_refs(...).count()``), the floor any job over that list pays.
- ``scan``: ``--files`` one-row Parquet files of an output on a loopback S3 endpoint (moto's server): a full
  resume scan (what every job does first) against the after-run scan that reuses it and reads only the 10
  files a run wrote (what the job does last since the second full scan was removed); then the output is
  compacted (``jobs/compact.py``) and the full scan timed again.
- ``rerun``: a finished output of ``--rows`` missing-video rows, written here as a job writes it (files of
  ``resources.rows_per_file`` rows, ids as the list reader derives them), then the job run again over its list:
  every row skipped. Wall time and the driver's peak RSS, for the output as a job leaves it and compacted.
- ``names``: ``--names`` Inter4K annotation names against a folder on the same endpoint (half of them
  missing): one listing for all names (what the list reader does) against one existence check per
  extension and name (what it did before).

Everything runs on this machine: local Ray with its CPUs, local files, S3 on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> subprocess.Popen:
    """moto's S3 server on loopback, configured like a user's S3-compatible store (environment variables)."""
    url = f"http://127.0.0.1:{_free_port()}"
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench-key", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


class PeakRss:
    """This process's resident memory, sampled in a thread: the start and the peak, in MiB. Also its private part
    (resident less shared: the pages of Ray's object store that the driver touched count in its RSS, but belong to
    the store, not the driver)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        info = self.process.memory_info()
        self.start = self.peak = info.rss
        self.private_start = self.private_peak = info.rss - info.shared
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            info = self.process.memory_info()
            self.peak = max(self.peak, info.rss)
            self.private_peak = max(self.private_peak, info.rss - info.shared)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> tuple[float, float]:
        return self.start / 2**20, self.peak / 2**20


def bench_pipeline(rows: int, tmp: str, segment_rows: int | None = None) -> None:
    from pipeline.config import JobConfig, SourceConfig
    from pipeline.io.sources import read_video_refs
    from pipeline.runner import run_job

    listing = os.path.join(tmp, "list.txt")
    with open(listing, "w", encoding="utf-8") as f:
        f.writelines(f"/no/such/folder/clip-{i:07d}.mp4\n" for i in range(rows))
    started = time.perf_counter()
    assert read_video_refs(SourceConfig(input=listing)).count() == rows
    t_read = time.perf_counter() - started
    cfg = JobConfig.from_dict({"source": {"input": listing}, "output": {"output": os.path.join(tmp, "out")},
                               "model": {"model": "tiny"},
                               "resources": {"segment_rows": segment_rows} if segment_rows else {}})
    with PeakRss() as rss:
        started = time.perf_counter()
        summary = run_job(cfg)
        t_job = time.perf_counter() - started
    run = summary["this_run"]
    assert run["videos"] == rows and run["failed_by_reason"] == {"read/not_found": rows}, run
    start, peak = rss.mib()
    print(f"pipeline: {rows} missing-video rows, defaults (batch {cfg.resources.batch_size}, "
          f"{cfg.resources.rows_per_file} rows per file, segments of {cfg.resources.segment_rows} rows), "
          f"{os.cpu_count()} CPUs")
    print(f"  list read + normalise alone: {rows / t_read:,.0f} rows/s ({t_read:.1f} s)")
    print(f"  whole job:                   {rows / t_job:,.0f} rows/s ({t_job:.1f} s, Ray start and model load "
          f"included): {t_read / t_job:.2f}x the list-reading floor")
    print(f"  driver RSS: {start:.0f} MiB before, peak {peak:.0f} MiB (+{peak - start:.0f} MiB), "
          f"{run['files_written']} files written; private (RSS less shared): {rss.private_start / 2**20:.0f} MiB "
          f"before, peak {rss.private_peak / 2**20:.0f} MiB "
          f"(+{(rss.private_peak - rss.private_start) / 2**20:.0f} MiB)")
    started = time.perf_counter()
    again = run_job(cfg)
    t_resume = time.perf_counter() - started
    assert again["this_run"]["skipped_already_done"] == rows and again["this_run"]["videos"] == 0
    print(f"  rerun (everything done, skipped): {rows / t_resume:,.0f} rows/s ({t_resume:.1f} s)")


def _write_done_files(args: tuple[str, list[str], int]) -> int:
    """One worker's share of a synthetic finished output: error rows (``read/not_found``) for ``uris``."""
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.io.output_store import OutputStore
    from pipeline.io.sources import stable_video_id

    out, uris, first_file = args
    store, now, per_file = OutputStore(out), _utc_now(), 256
    for n, start in enumerate(range(0, len(uris), per_file)):
        chunk = uris[start:start + per_file]
        columns = {f.name: pa.nulls(len(chunk), f.type) for f in S.OUTPUT_SCHEMA}
        columns.update({S.VIDEO_ID: pa.array([stable_video_id(u) for u in chunk]), S.URI: pa.array(chunk),
                        S.ERROR: pa.array(["read: no such file"] * len(chunk)),
                        S.ERROR_STAGE: pa.array(["read"] * len(chunk)),
                        S.ERROR_REASON: pa.array(["not_found"] * len(chunk)),
                        S.MODEL: pa.array(["tiny"] * len(chunk)), S.PROMPT_ID: pa.array(["p"] * len(chunk)),
                        S.CREATED_AT: pa.array([now] * len(chunk), S.OUTPUT_SCHEMA.field(S.CREATED_AT).type)})
        store.write_batch(f"{first_file + n:016x}", pa.table(columns, schema=S.OUTPUT_SCHEMA))
    return len(uris)


def bench_rerun(rows: int, tmp: str) -> None:
    from multiprocessing import Pool

    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    listing, out = os.path.join(tmp, "rerun-list.txt"), os.path.join(tmp, "rerun-out")
    uris = [f"/no/such/folder/clip-{i:08d}.mp4" for i in range(rows)]
    with open(listing, "w", encoding="utf-8") as f:
        f.writelines(u + "\n" for u in uris)
    started = time.perf_counter()
    share = -(-rows // (256 * os.cpu_count())) * 256
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_done_files, [(out, uris[i:i + share], i // 256) for i in range(0, rows, share)])
    del uris
    print(f"rerun: a finished output of {rows:,} missing-video rows in files of 256 rows (written in "
          f"{time.perf_counter() - started:.0f} s), {os.cpu_count()} CPUs")
    cfg = JobConfig.from_dict({"source": {"input": listing}, "output": {"output": out}, "model": {"model": "tiny"}})
    for layout in ("as a job leaves it", "compacted"):
        if layout == "compacted":  # the command, in its own process (its memory is not the driver's)
            started = time.perf_counter()
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            done = subprocess.run([sys.executable, "jobs/compact.py", out, "--target-mb", "256"], check=True,
                                  capture_output=True, text=True, cwd=root)
            stats = json.loads(done.stdout)
            print(f"  jobs/compact.py: {stats['files_before']:,} files -> {stats['files_after']:,} in "
                  f"{time.perf_counter() - started:.0f} s, peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
        with PeakRss() as rss:
            started = time.perf_counter()
            summary = run_job(cfg)
            t_rerun = time.perf_counter() - started
        run = summary["this_run"]
        assert run["skipped_already_done"] == rows and run["videos"] == 0, run
        start, peak = rss.mib()
        print(f"  rerun, output {layout} ({summary['output_total']['parquet_files']:,} files): {t_rerun:.1f} s "
              f"({rows / t_rerun:,.0f} rows/s, Ray start included); driver RSS {start:.0f} MiB before, peak "
              f"{peak:.0f} MiB (+{peak - start:.0f} MiB)")


def _utc_now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def bench_scan(files: int, compact_mb: float = 64.0) -> None:
    import pyarrow as pa
    import s3fs

    from pipeline.compaction import compact
    from pipeline import schema as S
    from pipeline.io.output_store import parquet_bytes
    from pipeline.resume import reconcile_and_scan, scan_output

    fs = s3fs.S3FileSystem()
    fs.mkdir("scan")
    out = "s3://scan/out"

    def one(i: int) -> None:
        row = {S.VIDEO_ID: [f"v{i}"], S.URI: [f"/v/{i}.mp4"], S.ERROR: pa.nulls(1, pa.string()),
               S.CAPTION: [f"caption {i}"],
               S.CREATED_AT: pa.array([_utc_now()], S.OUTPUT_SCHEMA.field(S.CREATED_AT).type),
               S.MODEL: ["tiny"], S.PROMPT_ID: ["p"]}
        fs.pipe_file(f"scan/out/parquet/part-{i:016x}.parquet", parquet_bytes(pa.table(row)))

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(files)))
    print(f"scan: {files} one-row Parquet files on loopback S3 (written in {time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    before = scan_output(out)
    t_full = time.perf_counter() - started
    assert before.num_rows == files
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(files, files + 10)))
    written = [f"part-{i:016x}.parquet" for i in range(files, files + 10)]
    started = time.perf_counter()
    _, after = reconcile_and_scan(out, previous=before, written=written)
    t_after = time.perf_counter() - started
    assert after.num_rows == files + 10
    started = time.perf_counter()
    reconcile_and_scan(out)
    t_after_full = time.perf_counter() - started
    print(f"  full resume scan (start of every job): {t_full:.1f} s ({files / t_full:,.0f} files/s)")
    print(f"  after-run repair + state, full scan (before): {t_after_full:.1f} s")
    print(f"  after-run repair + state, reusing the first scan (now): {t_after:.2f} s: "
          f"{t_after_full / t_after:.1f}x faster")
    started = time.perf_counter()
    stats = compact(out, target_mb=compact_mb, threads=4)
    t_compact = time.perf_counter() - started
    started = time.perf_counter()
    compacted = scan_output(out)
    t_compacted = time.perf_counter() - started
    assert compacted.num_rows == files + 10 and len(compacted.files) == stats["files_after"]
    print(f"  compaction to {compact_mb:g} MB files: {stats['files_before']} files -> {stats['files_after']} in "
          f"{t_compact:.1f} s; full resume scan after it: {t_compacted:.2f} s, {t_full / t_compacted:.0f}x faster "
          "than before it")


def bench_names(names: int) -> None:
    import s3fs

    from pipeline.io.sources import resolve_names
    from pipeline.io.storage import StorageError, join, object_info

    fs = s3fs.S3FileSystem()
    fs.mkdir("names")
    base, extensions = "s3://names/videos", ("mp4", "mkv", "webm")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: fs.pipe_file(f"names/videos/{i}.webm", b"x"), range(0, names, 2)))
    wanted = [str(i) for i in range(names)]

    def per_name(name: str) -> str | None:  # the old way: the first candidate that exists
        for ext in extensions:
            try:
                object_info(join(base, f"{name}.{ext}"))
                return ext
            except StorageError:
                continue
        return None

    started = time.perf_counter()
    old = [per_name(n) for n in wanted]
    t_old = time.perf_counter() - started
    started = time.perf_counter()
    new = resolve_names(wanted, base, extensions, None)
    t_new = time.perf_counter() - started
    assert [o is not None for o in old] == [reason is None for _, reason, _ in new]
    print(f"names: {names} annotation names, {names // 2} present as .webm, on loopback S3")
    print(f"  one existence check per name and extension (before): {names / t_old:,.0f} names/s ({t_old:.1f} s)")
    print(f"  one listing for all names (now): {names / t_new:,.0f} names/s ({t_new:.2f} s): "
          f"{t_old / t_new:.0f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--names", type=int, default=2_000)
    parser.add_argument("--parts", default="pipeline,scan,names", help="any of pipeline,scan,names,rerun")
    parser.add_argument("--segment-rows", type=int, help="pipeline: resources.segment_rows (default: its default)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    server = start_s3() if parts & {"scan", "names"} else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "names" in parts:
                bench_names(args.names)
            if "scan" in parts:
                bench_scan(args.files)
            if "pipeline" in parts:
                bench_pipeline(args.rows, tmp, args.segment_rows)
            if "rerun" in parts:
                bench_rerun(args.rows, tmp)
    finally:
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
