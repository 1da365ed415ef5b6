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

DEFAULT_TIMEOUT_S = 300.0  # pipeline.tools.query.DEFAULT_TIMEOUT_S, kept here so --help imports no DuckDB


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
    parser.add_argument("--limit", type=bounded(int, 1, 10**7), default=20,
                        help="rows shown, and the size of the slowest view")
    parser.add_argument("--timeout-s", type=bounded(float, 0, 7 * 86400), default=DEFAULT_TIMEOUT_S,
                        help=f"stop a query that runs longer than this (default {DEFAULT_TIMEOUT_S:g}; 0: no limit)")
    return parser


def bounded(kind: type, low: float, high: float):
    """An argparse type: a ``kind`` number in ``[low, high]`` (NaN and infinity refused), else a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # also false for NaN
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import duckdb
    import pyarrow as pa

    from pipeline.io.masking import mask_text
    from pipeline.tools.query import NoOutput, QueryTimeout

    try:
        return run(args)
    except QueryTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except NoOutput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:  # the SQL: DuckDB's message names the problem and points at it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, pa.ArrowException) as exc:  # reading the outputs or writing the export
        print(f"error: {type(exc).__name__}: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as exc:  # a bad --where, view name or export format
        print(f"error: {mask_text(str(exc.args[0] if isinstance(exc, KeyError) else exc))}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from pipeline.tools.query import CaptionQuery, check_where

    if args.where:
        check_where(args.where)  # before any data is read
    if args.export and not args.to:
        raise ValueError("--export needs --to")
    query = CaptionQuery(args.outputs, limit=args.limit, file_access=bool(args.sql), timeout_s=args.timeout_s)
    if args.export:
        count = query.export(args.to, args.export, args.where)
        print(f"wrote {count} rows to {args.to}")
        return 0
    shown = args.limit + 1  # one more than is shown tells whether there are more, without reading them all
    if args.view:
        table = query.view(args.view, shown)
    elif args.sql:
        table = query.sql(args.sql, shown)
    elif args.compare:
        table = query.compare(args.compare, args.where, shown)
    else:
        table = query.select(args.where, shown)
    print(table.slice(0, args.limit).to_pandas().to_string(index=False, max_colwidth=80))
    if table.num_rows > args.limit:
        print("... more rows (raise --limit to see them, or --export them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
