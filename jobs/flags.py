"""Flags the entry points share, so the recaption job and the single-video command spell them alike."""

from __future__ import annotations

import argparse


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prompt``/``--prompt-file``, ``--system-prompt``/``--system-prompt-file`` and ``--template``."""
    from model.prompts import TEMPLATES

    parser.add_argument("--prompt", help="instruction or question for the model (default: the recaption prompt)")
    parser.add_argument("--prompt-file", help="read the instruction from this file (local or fsspec URI)")
    parser.add_argument("--system-prompt", help="system prompt before the video ('' for none; default: the "
                                                "project's recaption system prompt)")
    parser.add_argument("--system-prompt-file", help="read the system prompt from this file (local or fsspec URI)")
    parser.add_argument("--template", choices=sorted(TEMPLATES),
                        help="prompt layout: vicuna, chatml (the reference's recaption layouts), vicuna_videoqa "
                             "(its video-QA layout), vicuna_one_turn, chatml_one_turn (this project's earlier "
                             "layouts); default: from the tokenizer, chatml for Yi/34B, else vicuna")


def add_resize_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--resize", default=default, choices=("fast", "reference"),
                        help="pixels: fast (scaled in the decoder to the reference's geometry; the default) or "
                             "reference (the reference's PIL chain on full-resolution frames: its exact pixels)")
