"""Ask questions of caption outputs with DuckDB: views, your own SQL, filtered exports, run comparisons.

    python jobs/query_captions.py s3://bucket/captions --view status
    python jobs/query_captions.py out1 out2 --sql "select model, count(*) from captions group by 1"
    python jobs/query_captions.py s3://bucket/captions --where "error is null and not flag_repetition" \\
        --export jsonl --to s3://bucket/train/clean.jsonl
    python jobs/query_captions.py runs/a --compare runs/b --where "not same"

Views: status, caption_length, prefixes, runs, slowest (--limit), flags. The table is named `captions`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="recaption output folders (local or s3://), or parquet paths")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--view", help="a ready-made view (status, caption_length, prefixes, runs, slowest, flags)")
    what.add_argument("--sql", help="any SQL over the table `captions`")
    what.add_argument("--export", choices=("parquet", "jsonl", "webdataset"), help="write the --where rows to --to")
    what.add_argument("--compare", nargs="+", metavar="OUTPUT", help="another run's outputs to join on video_id")
    parser.add_argument("--where", help="one SQL expression selecting rows (export, compare, listing); DuckDB's "
                                        "file access is off except for --sql")
    parser.add_argument("--to", help="export destination (file URI)")
    parser.add_argument("--limit", type=int, default=20, help="rows shown, and the size of the slowest view")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.tools.query import CaptionQuery, check_where

    try:
        if args.where:
            check_where(args.where)  # before any data is read
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    query = CaptionQuery(args.outputs, limit=args.limit, file_access=bool(args.sql))
    if args.export:
        if not args.to:
            print("error: --export needs --to", file=sys.stderr)
            return 2
        count = query.export(args.to, args.export, args.where)
        print(f"wrote {count} rows to {args.to}")
        return 0
    if args.view:
        table = query.view(args.view)
    elif args.sql:
        table = query.sql(args.sql)
    elif args.compare:
        table = query.compare(args.compare, args.where)
    else:
        table = query.select(args.where)
    with_limit = table.slice(0, args.limit)
    print(with_limit.to_pandas().to_string(index=False, max_colwidth=80))
    if table.num_rows > args.limit:
        print(f"... {table.num_rows - args.limit} more rows (--limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
