"""Flags the entry points share, so the recaption job and the single-video command spell them alike."""

from __future__ import annotations

import argparse
import os
import string
from typing import Any

import yaml


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


def flags_layer(args: argparse.Namespace, keys: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The config layer the flags set: each given flag (not None, not an unset switch) at its key path."""
    layer: dict[str, Any] = {}
    for dest, path in keys.items():
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def yaml_layer(path: str | None) -> dict[str, Any]:
    """The config layer a YAML file sets (empty without one)."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds sections (a YAML mapping), got {type(data).__name__}")
    return data


def paths_of(model: type, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path of a settings model (sections and their keys), to check flag tables against."""
    from pydantic import BaseModel

    out = set()
    for name, field in model.model_fields.items():
        path = prefix + (name,)
        out.add(path)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= paths_of(field.annotation, path)
    return out


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def load_preset(name: str, **values: str) -> dict[str, Any]:
    """A preset layer from ``jobs/presets/<name>.yaml``, its ``${...}`` placeholders filled from ``values``.

    Raises:
        KeyError: a placeholder without a value.
    """
    with open(os.path.join(PRESETS_DIR, f"{name}.yaml"), encoding="utf-8") as f:
        text = string.Template(f.read()).substitute(values)
    return yaml.safe_load(text) or {}
