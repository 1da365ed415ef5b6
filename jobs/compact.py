"""Merge a recaption output's small files into large ones: fewer files to list, open and scan on every resume.

    python jobs/compact.py s3://bucket/captions                 # files of about 256 MB
    python jobs/compact.py ./captions --target-mb 64

The output's lease is held throughout (no job writes meanwhile; a running job makes this stop, naming it). The
output is repaired first, as a job repairs it. Each merged file is written (WebDataset shard, then Parquet)
before its inputs are removed, so the output stays readable and a kill at any moment loses no row: rerun the
command, or any job on the output, to finish. A job can also compact at its end (``--compact-after``, or
``output.compact_after`` in its config). S3 credentials and endpoint come from the usual AWS variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.query_captions import bounded  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="a recaption output folder or object-store prefix")
    parser.add_argument("--target-mb", type=bounded(float, 0.001, 4096), default=256.0,
                        help="size of the merged Parquet files, compressed (default 256); files this large "
                             "already are left as they are")
    parser.add_argument("--threads", type=bounded(int, 1, 64), default=4,
                        help="groups merged at once (each holds its rows in memory: about 3-5x --target-mb)")
    parser.add_argument("--lease-ttl-s", type=bounded(float, 1, 86400), default=120.0,
                        help="the output lease's time to live (as output.lease_ttl_s of a job)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.compaction import compact
    from pipeline.io.masking import mask_text, mask_values
    from pipeline.io.storage import get_fs
    from pipeline.lease import OutputBusy, OutputLease
    from pipeline.resume import reconcile_and_scan
    from pipeline.runner import new_run_id

    output = args.output
    try:
        fs, path = get_fs(output)
        if not fs.isdir(path):
            print(f"error: {mask_text(output)} is not a recaption output (no such folder)", file=sys.stderr)
            return 2
        run_id = "compact-" + new_run_id()
        with OutputLease(output, run_id, ttl_s=args.lease_ttl_s) as lease:
            repaired, _ = reconcile_and_scan(output, check=lease.check)
            stats = compact(output, target_mb=args.target_mb, threads=args.threads, check=lease.check)
    except OutputBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"error: {type(exc).__name__}: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(mask_values({"output": output, "repairs": repaired, **stats}), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
