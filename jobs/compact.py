"""Merge a recaption output's small files into large ones: fewer files to list, open and scan on every resume.

    python jobs/compact.py s3://bucket/captions                 # files of about 256 MB
    python jobs/compact.py ./captions --target-mb 64
    python jobs/compact.py s3://bucket/captions --config job.yaml   # the job's storage_options and lease TTL

The output's lease is held throughout (no job writes meanwhile; a running job makes this stop, naming it). The
output is repaired first, as a job repairs it. Each merged file is written (WebDataset shard, then Parquet)
before its inputs are removed, so the output stays readable and a kill at any moment loses no row: rerun the
command, or any job on the output, to finish. A job can also compact at its end (``--compact-after``, or
``output.compact_after`` in its config). S3 credentials and endpoint come from the usual AWS variables, or
from the ``storage_options`` of a job's YAML given with ``--config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import yaml_layer  # noqa: E402
from jobs.query_captions import bounded  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="a recaption output folder or object-store prefix")
    parser.add_argument("--target-mb", type=bounded(float, 0.001, 4096), default=256.0,
                        help="size of the merged Parquet files, compressed (default 256); files this large "
                             "already are left as they are")
    parser.add_argument("--threads", type=bounded(int, 1, 64), default=4,
                        help="groups merged at once (each in memory: its rows, about 3-5x its Parquet bytes, "
                             "plus twice its shards; both at most --target-mb)")
    parser.add_argument("--lease-ttl-s", type=bounded(float, 1, 86400), default=None,
                        help="the output lease's time to live (default: the --config's output.lease_ttl_s, or 120)")
    parser.add_argument("--config", help="a recaption job's YAML: its storage_options (and output.lease_ttl_s) "
                                         "are used; nothing else of it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.compaction import compact
    from pipeline.io.masking import mask_text, mask_values
    from pipeline.io.storage import StorageError, get_fs, with_retries
    from pipeline.io.storage_options import option_secrets
    from pipeline.lease import OutputBusy, OutputLease, new_run_id
    from pipeline.resume import reconcile_and_scan

    output = args.output
    try:
        storage_options, ttl_s = job_settings(args.config)
    except ValueError as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    ttl_s = args.lease_ttl_s or ttl_s
    if not output.strip() or not output.split("://", 1)[-1].strip("/"):
        print(f"error: {output!r} names no output folder", file=sys.stderr)
        return 2
    try:
        fs, path = get_fs(output, storage_options)
        if not with_retries(output, "listing", lambda: fs.isdir(path)):  # store errors as StorageError
            print(f"error: {mask_text(output)} is not a recaption output (no such folder)", file=sys.stderr)
            return 2
        run_id = "compact-" + new_run_id()
        with OutputLease(output, run_id, storage_options, ttl_s=ttl_s) as lease:
            repaired, _ = reconcile_and_scan(output, storage_options, check=lease.check)
            stats = compact(output, storage_options, args.target_mb, args.threads, check=lease.check)
    except OutputBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (OSError, StorageError) as exc:
        print(f"error: {type(exc).__name__}: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, ImportError) as exc:  # an unknown store, a bad option, an unreadable file
        print(f"error: {type(exc).__name__}: {mask_text(str(exc), option_secrets(storage_options))}",
              file=sys.stderr)
        return 2
    print(json.dumps(mask_values({"output": output, "repairs": repaired, **stats}), indent=2))
    return 0


def job_settings(config: str | None) -> tuple[dict, float]:
    """The storage options and lease time to live of a job's YAML (defaults without one).

    Raises:
        ValueError: the file, or those two settings, are not valid.
    """
    from pipeline.config import OutputConfig
    from pipeline.io.masking import StorageOptions

    raw = yaml_layer(config)
    options, output = raw.get("storage_options") or {}, raw.get("output") or {}
    if not isinstance(options, dict) or not isinstance(output, dict):
        raise ValueError(f"{config}: storage_options and output must be mappings")
    ttl_s = OutputConfig.model_validate({"output": "-", "lease_ttl_s": output.get("lease_ttl_s", 120.0)}).lease_ttl_s
    return StorageOptions(options), ttl_s


if __name__ == "__main__":
    sys.exit(main())
