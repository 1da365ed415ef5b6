"""Build a static HTML gallery of a caption output (keyframes, captions, flags, errors; search and filters).

    python jobs/build_gallery.py demo_output/captions --to demo_output/gallery
    python jobs/build_gallery.py s3://bucket/run_a --compare s3://bucket/run_b --to /tmp/compare
    python -m http.server -d demo_output/gallery     # or open demo_output/gallery/index.html directly
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="recaption output folders (local or s3://)")
    parser.add_argument("--to", required=True, help="local folder for index.html, thumbs/ and data/")
    parser.add_argument("--compare", nargs="+", metavar="OUTPUT", help="a second run shown side by side")
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--title", default="Captions")
    args = parser.parse_args(argv)
    if args.page_size < 1:
        parser.error(f"--page-size must be at least 1, got {args.page_size}")
    import pyarrow as pa

    from pipeline.io.masking import mask_text
    from pipeline.tools.gallery import build_gallery

    try:
        index = build_gallery(args.outputs, args.to, compare=args.compare, page_size=args.page_size,
                              title=args.title)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:  # a missing output, a file not Parquet
        if isinstance(exc, OSError) and exc.strerror and exc.filename:
            text = f"{exc.filename}: {exc.strerror}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        print(f"error: {mask_text(text)[:1000]}", file=sys.stderr)
        return 2
    print(f"{index['rows']} videos in {index['pages']} pages: {os.path.join(args.to, 'index.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
