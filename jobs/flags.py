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


# A config is a few hundred values. These bounds refuse what only an attack or an accident makes: a huge file,
# aliases that expand exponentially ("billion laughs": a few lines, 10**9 values once walked), a document
# that refers to itself, or nesting deep enough to exhaust the stack.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 100


def _expanded_size(node: yaml.Node, name: str) -> int:
    """How many values ``node`` stands for once its aliases are expanded, counted without expanding them (an
    alias is the same node object again, so each node is counted once and its count reused).

    Raises:
        ValueError: nesting deeper than :data:`MAX_YAML_DEPTH`, or a node inside itself.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"{name}: nested deeper than {MAX_YAML_DEPTH} levels")
        if id(node) in open_nodes:
            raise ValueError(f"{name}: an alias refers to a node that contains it (a YAML document without end)")
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_VALUES:  # stop counting: the answer is already "too many"
                break
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(node, 0)


def load_yaml(text: str, name: str) -> Any:
    """One YAML document as plain data, refused when it would expand past :data:`MAX_YAML_VALUES` values or
    nest deeper than :data:`MAX_YAML_DEPTH` (checked on the parsed node graph, before any value is built).

    Raises:
        ValueError: naming ``name`` and what is wrong (invalid YAML included, with its line).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, name) > MAX_YAML_VALUES:
            raise ValueError(f"{name}: expands to more than {MAX_YAML_VALUES} values (aliases that repeat "
                             "aliases?); a config holds far fewer")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{name}: nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        loader.dispose()


def yaml_layer(path: str | None) -> dict[str, Any]:
    """The config layer a YAML file sets (empty without one).

    Raises:
        ValueError: the file is missing, unreadable, over :data:`MAX_YAML_BYTES` or not UTF-8
            (:class:`pipeline.io.storage.TextFileError`), not YAML within the bounds of :func:`load_yaml`, or not a
            mapping.
    """
    if not path:
        return {}
    from pipeline.io.storage import read_text_bounded  # here: --help and flag parsing stay light

    text = read_text_bounded(path, MAX_YAML_BYTES, what="config file", hint="a config file is a few kilobytes")
    data = load_yaml(text, path) or {}
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
    path = os.path.join(PRESETS_DIR, f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        text = string.Template(f.read()).substitute(values)
    return load_yaml(text, path) or {}
