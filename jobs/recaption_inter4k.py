"""Recaption Inter4K the way PLLaVA's recaption benchmark does: annotations.json + the UHD videos.

    python jobs/recaption_inter4k.py --data-root /data/Inter4K --output s3://bucket/inter4k-captions \\
        --model /models/pllava-7b --lora-alpha 4
    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/recaption_inter4k.py --data-root s3://bucket/Inter4K ...

``--data-root`` holds ``annotations.json`` (``[{"video_name": "973"}, ...]``) and ``60fps/UHD/{name}.{mp4|mkv|webm}``
(first existing extension wins). Preset: 16 frames, pooling 16x12x12, greedy decoding, 400 new tokens,
Parquet + WebDataset out. Every flag of jobs/recaption.py applies on top.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.flags import load_preset  # noqa: E402
from jobs.recaption import build_parser, run_from_args  # noqa: E402


def inter4k_preset(data_root: str) -> dict:
    """``jobs/presets/inter4k.yaml`` for this data root."""
    return load_preset("inter4k", data_root=data_root.rstrip("/"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    parser.add_argument("--data-root", required=True,
                        help="Inter4K folder (local or s3://) holding annotations.json and 60fps/UHD/")
    args = parser.parse_args(argv)
    return run_from_args(args, preset=inter4k_preset(args.data_root))


if __name__ == "__main__":
    sys.exit(main())
