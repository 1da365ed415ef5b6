"""Bounds on every setting and on the YAML a config is read from: absurd values (huge, negative, NaN, inf) and
alias bombs are refused before Ray starts, with the key path in the message."""

from __future__ import annotations

import importlib
import inspect
import math
import typing

import annotated_types
import pytest
from pydantic import BaseModel

from jobs.flags import yaml_layer
from model.settings import Settings
from pipeline.config import JobConfig
from training.config import TrainConfig

# Every module that defines a settings section (a new section elsewhere must be added here).
SETTINGS_MODULES = ("model.settings", "pipeline.config", "pipeline.frames", "pipeline.quality", "pipeline.io.storage",
                    "training.config", "pipeline.evaluation.judge")
LOWER = (annotated_types.Ge, annotated_types.Gt)
UPPER = (annotated_types.Le, annotated_types.Lt)


def settings_classes() -> list[type[BaseModel]]:
    found = set()
    for name in SETTINGS_MODULES:
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(cls, Settings) and cls.model_fields:
                found.add(cls)
    return sorted(found, key=lambda c: c.__name__)


def numbers_without_bounds(annotation, metadata: list, where: str) -> list[str]:
    """Each int or float inside ``annotation`` (plain, optional, or a tuple's items) that lacks a lower or an
    upper bound."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return numbers_without_bounds(inner, metadata + [m for e in extra for m in getattr(e, "metadata", [e])], where)
    if annotation in (int, float):
        missing = [side for side, kinds in (("lower", LOWER), ("upper", UPPER))
                   if not any(isinstance(m, kinds) for m in metadata)]
        return [f"{where}: no {' or '.join(missing)} bound"] if missing else []
    out = []
    for i, arg in enumerate(typing.get_args(annotation)):
        out += numbers_without_bounds(arg, metadata if typing.get_origin(annotation) is not tuple else [],
                                      f"{where}[{i}]" if typing.get_origin(annotation) is tuple else where)
    return out


def test_every_number_of_every_settings_section_has_both_bounds():
    classes = settings_classes()
    assert {"JobConfig", "TrainConfig", "SamplingConfig", "RetryPolicy", "GenerationSettings", "VllmSettings",
            "QualityThresholds", "OptimConfig", "JudgeConfig"} <= {c.__name__ for c in classes}
    unbounded = [problem for cls in classes for name, field in cls.model_fields.items()
                 for problem in numbers_without_bounds(field.annotation, list(field.metadata), f"{cls.__name__}.{name}")]
    assert not unbounded, unbounded


BASE = {"source": {"input": "list.txt"}, "output": {"output": "out"}}


@pytest.mark.parametrize("path", [
    ("resources", "batch_size"), ("resources", "rows_per_file"), ("resources", "decode_io_threads"),
    ("resources", "stall_warn_s"), ("resources", "decode_max_in_memory_mb"), ("vllm", "batch_size"),
    ("vllm", "max_model_len"), ("generation", "max_new_tokens"), ("generation", "num_beams"),
    ("generation", "seed"), ("sampling", "num_frames"), ("sampling", "image_size"), ("retry", "attempts"),
    ("retry", "max_backoff_s"), ("quality", "min_words"), ("source", "limit"), ("model", "lora_alpha"),
])
def test_a_huge_value_is_refused_with_its_key_path(path):
    section, key = path
    with pytest.raises(ValueError) as caught:
        JobConfig.from_dict(BASE, {section: {key: 10**100}})
    message = str(caught.value)
    assert f"{section}.{key}: Input should be less than or equal to" in message, message
    assert "number of about 101 digits" in message and len(message) < 300  # not the 101 digits themselves


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_in_every_float(value):
    for section, key in (("generation", "temperature"), ("resources", "decode_timeout_s"), ("retry", "backoff_s"),
                         ("source", "window_s"), ("resources", "decode_max_in_memory_mb")):
        with pytest.raises(ValueError, match=rf"{section}\.{key}: Input should be a finite number"):
            JobConfig.from_dict(BASE, {section: {key: value}})


def test_negative_and_nested_numbers_are_refused():
    problems = str(pytest.raises(ValueError, TrainConfig.from_dict, {
        "data": {"uri": "d.json"}, "run": {"output": "o", "seed": -1, "max_steps": 10**100},
        "optim": {"betas": [0.9, 1.5], "weight_decay": -1, "lr": math.nan},
        "lora": {"alpha": math.inf}}).value)
    for where in ("run.seed", "run.max_steps", "optim.betas.1", "optim.weight_decay", "optim.lr", "lora.alpha"):
        assert f"  - {where}: " in problems, problems
    with pytest.raises(ValueError, match=r"model.pooling_shape.2: Input should be less than or equal to 1024"):
        JobConfig.from_dict(BASE, {"model": {"pooling_shape": [16, 12, 10**9]}})
    with pytest.raises(ValueError, match=r"resources.decode_max_in_memory_mb: Input should be greater"):
        JobConfig.from_dict(BASE, {"resources": {"decode_max_in_memory_mb": -5}})


@pytest.mark.slow
def test_the_recaption_command_refuses_a_huge_batch_before_ray_starts(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import ROOT

    # In a process of its own: the test session may have started Ray already.
    code = ("import json, sys; from jobs import recaption; "
            f"code = recaption.main(['--input', 'list.txt', '--output', 'out', '--batch-size', '1{'0' * 100}']); "
            "ray = sys.modules.get('ray'); print(json.dumps([code, bool(ray and ray.is_initialized())]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, False], done.stderr[-2000:]
    assert "resources.batch_size: Input should be less than or equal to 4096" in done.stderr


# -- YAML -----------------------------------------------------------------------------------------------------

BILLION_LAUGHS = """\
source: {input: list.txt}
output: {output: out}
storage_options:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ValueError, match=r"bomb.yaml: .*expands to more than 100000 values"):
        yaml_layer(str(path))


def test_yaml_aliases_within_reason_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("defaults: &r {batch_size: 4}\nresources: *r\nsource: {input: l.txt}\noutput: {output: o}\n")
    layer = yaml_layer(str(path))
    layer.pop("defaults")
    assert JobConfig.from_dict(layer).resources.batch_size == 4


@pytest.mark.parametrize("text, message", [
    ("x" * (2 << 20), r"larger than 1 MiB"),
    ("source: [" * 5000, r"nested deeper than 100|not valid YAML"),
    ("source: {input: a\n  bad: [", r"not valid YAML"),
    ("- a\n- b\n", r"holds sections \(a YAML mapping\), got list"),
    (b"\xff\xfe not text", r"not UTF-8 text"),
])
def test_bad_yaml_files_are_named_with_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(ValueError, match=message) as caught:
        yaml_layer(str(path))
    assert "bad.yaml" in str(caught.value)


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"config file .*nothing.yaml: not found"):
        yaml_layer(str(tmp_path / "nothing.yaml"))


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ValueError, match=r"nested deeper than 100"):
        yaml_layer(str(path))
