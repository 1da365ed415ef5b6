"""Each piece of knowledge has one owner: the judge's settings are a checked settings section that never shows a
credential, configs mask secrets the same way, shared helpers behave as each of their callers needs."""

from __future__ import annotations

import pickle
import re

import pytest

from pipeline.evaluation.judge import JudgeConfig

PASSWORD = "judge-pass-77"


def test_the_judge_config_is_a_checked_section_that_never_shows_the_urls_password():
    judge = JudgeConfig(f"https://user:{PASSWORD}@judge:8000/v1", "m", concurrency=2)
    assert judge.url == f"https://user:{PASSWORD}@judge:8000/v1"  # the client gets it whole
    for shown in (repr(judge), str(judge), str(judge.to_dict()), f"{judge}"):
        assert PASSWORD not in shown and "judge:8000/v1" in shown
    assert judge.to_dict()["concurrency"] == 2 and pickle.loads(pickle.dumps(judge)) == judge
    with pytest.raises(ValueError):  # frozen: shared by the judging threads
        judge.concurrency = 3


@pytest.mark.parametrize("settings, message", [
    ({"timeout_s": float("nan")}, "timeout_s: Input should be a finite number"),
    ({"max_tokens": 10**9}, "max_tokens: Input should be less than or equal to"),
    ({"attempts": 0}, "attempts: Input should be greater than or equal to 1"),
    ({"max_retries": -1}, "max_retries: Input should be greater than or equal to 0"),
    ({"api_key": "sk-x"}, "api_key: unknown key"),
])
def test_judge_settings_out_of_bounds_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message) as info:
        JudgeConfig(f"http://user:{PASSWORD}@judge/v1", "m", **settings)
    assert str(info.value).startswith("invalid judge config") and PASSWORD not in str(info.value)


def test_a_judge_config_without_a_url_or_model_names_both():
    with pytest.raises(ValueError, match="url: required; model: required"):
        JudgeConfig()


def test_a_training_config_masks_secrets_in_every_string_as_a_job_config_does():
    import json

    from pipeline.config import JobConfig
    from training.config import TrainConfig

    uri, signed = "s3://AKIAX:list-secret@bucket/qa.json", "s3://bucket/videos?X-Amz-Signature=sig-secret"
    train = TrainConfig.from_dict({"data": {"uri": uri, "video_root": signed}, "run": {"output": uri},
                                   "storage_options": {"secret": "option-secret"}})
    job = JobConfig.from_dict({"source": {"input": uri, "videos_prefix": signed}, "output": {"output": uri},
                               "storage_options": {"secret": "option-secret"}})
    for cfg in (train, job):
        shown = json.dumps(cfg.to_dict())
        assert not [s for s in ("list-secret", "sig-secret", "option-secret") if s in shown], shown
        assert "s3://***@bucket/qa.json" in shown
    assert train.to_dict(redacted=False)["data"]["uri"] == uri
    assert train.to_dict(redacted=False)["storage_options"]["secret"] == "option-secret"


def test_lora_keys_are_parsed_in_one_place_for_loading_and_for_exporting_a_training_run(tmp_path):
    import torch
    from safetensors.torch import save_file

    from model.weights import lora_half, read_weights
    from training.config import TrainConfig
    from training.trainer import export_weights_dir

    module = "model.layers.0.self_attn.q_proj"
    assert lora_half(f"language_model.base_model.model.{module}.lora_B.default.weight") == (
        f"language_model.{module}", "b")
    assert lora_half(f"language_model.{module}.lora_A.weight") == (f"language_model.{module}", "a")
    assert lora_half(f"language_model.{module}.weight") is None and lora_half("multi_modal_projector.w") is None
    # A training checkpoint's trainable tensors (PEFT names) -> a weights_dir the loader reads back whole.
    a, b = torch.ones(2, 4), torch.full((3, 2), 2.0)
    save_file({f"language_model.base_model.model.{module}.lora_A.default.weight": a,
               f"language_model.base_model.model.{module}.lora_B.default.weight": b,
               "multi_modal_projector.linear_1.weight": torch.zeros(3, 3)}, str(tmp_path / "trainable.safetensors"))
    cfg = TrainConfig.from_dict({"data": {"uri": "qa.json"}, "run": {"output": str(tmp_path)}})
    out = export_weights_dir(str(tmp_path / "trainable.safetensors"), cfg, str(tmp_path / "weights"), {})
    weights = read_weights(out)
    assert list(weights.lora) == [f"language_model.{module}"] and weights.lora_rank == 2
    assert torch.equal(weights.lora[f"language_model.{module}"].a, a)
    assert torch.equal(weights.lora[f"language_model.{module}"].b, b)
    assert list(weights.tensors) == ["multi_modal_projector.linear_1.weight"]


def test_one_liveness_check_serves_the_lease_and_the_crash_journal(tmp_path):
    import os
    import subprocess
    import sys

    from pipeline.crash_journal import CrashJournal
    from pipeline.lease import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive(os.getpid()) and not process_alive(child.pid)
    assert process_alive(2**80)  # cannot be asked: alive (never judged gone), not an OverflowError
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / f"{child.pid}.inflight").write_text("killer")
    (folder / f"{2**80}.inflight").write_text("unknown")
    journal = CrashJournal(str(folder))
    assert journal.crashes("killer") == 1 and journal.crashes("unknown") == 0


def test_values_defined_once_are_the_same_everywhere():
    import inspect

    from model.modeling_pllava import IGNORE_INDEX as MODEL_IGNORE
    from model.prompts import IGNORE_INDEX
    from model.settings import project_cache_dir
    from model.vllm_inputs import default_cache_dir
    from pipeline.config import ResourceConfig
    from pipeline.io.storage import SPOOL_ABOVE_MB
    from pipeline.sampler import FrameSampler
    from training.data import IGNORE_INDEX as TRAINING_IGNORE

    assert IGNORE_INDEX == MODEL_IGNORE == TRAINING_IGNORE == -100
    assert default_cache_dir() == project_cache_dir("vllm") and project_cache_dir().endswith(".cache/pllava-recaption")
    assert ResourceConfig().decode_max_in_memory_mb == SPOOL_ABOVE_MB == 64
    assert inspect.signature(FrameSampler).parameters["max_in_memory_mb"].default == SPOOL_ABOVE_MB


def _callers():
    """The three bounded text reads, each raising its own error type: ``(name, read(path), error, module, limit)``."""
    from jobs import flags
    from pipeline.evaluation import prompt_set
    from training import data

    return [("config", flags.yaml_layer, ValueError, flags, "MAX_YAML_BYTES"),
            ("prompts", prompt_set.read_prompt_file, prompt_set.PromptSetError, prompt_set, "MAX_SOURCE_BYTES"),
            ("training", lambda p: data._read_items(p, {}), data.TrainingDataError, data, "MAX_DATA_JSON_BYTES")]


@pytest.mark.parametrize("caller", [c[0] for c in _callers()])
def test_one_bounded_text_read_names_the_file_for_each_caller_in_its_own_error_type(tmp_path, monkeypatch, caller):
    _, read, error, module, limit = next(c for c in _callers() if c[0] == caller)
    monkeypatch.setattr(module, limit, 64)
    cases = {"missing.txt": (None, ": not found"), "big.txt": (b"x" * 65, ": larger than 64 bytes"),
             "latin.txt": (b"[\"caf\xe9\"]", ": not UTF-8 text (byte 5)"), "folder": ("dir", ": cannot read")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(error, match=re.escape(message)) as info:
            read(str(path))
        assert str(path) in str(info.value)


def test_the_bounded_read_reads_at_most_one_byte_past_its_limit_and_hides_user_info(monkeypatch):
    import fsspec

    from pipeline.io.storage import TextFileError, read_text_bounded

    class Endless:
        read_sizes: list[int] = []

        def read(self, n):
            self.read_sizes.append(n)
            return b"y" * n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Fs:
        def open(self, path, mode):
            return Endless()

    from pipeline.io import storage

    with monkeypatch.context() as patched:
        patched.setattr(storage, "get_fs", lambda uri, options=None: (Fs(), uri))
        with pytest.raises(TextFileError, match="thing endless: larger than 1 MiB; a hint") as info:
            read_text_bounded("endless", 1 << 20, what="thing", hint="a hint")
    assert info.value.reason == "too_large" and Endless.read_sizes == [(1 << 20) + 1]
    uri = "memory://reader:hidden-pass@bucket/t.txt"
    with fsspec.open(uri, "w") as f:
        f.write("kept")
    try:
        assert read_text_bounded(uri, 10, keep_userinfo=True) == "kept"  # as prompt files are read
        with pytest.raises(TextFileError) as info:  # user info dropped, as every other read: memory://bucket/t.txt
            read_text_bounded(uri, 10, what="list")
    finally:
        fsspec.filesystem("memory").rm("/reader:hidden-pass@bucket", recursive=True)
    assert info.value.reason == "not_found" and "hidden-pass" not in str(info.value)
    assert str(info.value) == "list memory://bucket/t.txt: not found"


def test_the_evaluation_reads_the_row_reconcile_keeps_a_caption_before_a_later_error(tmp_path):
    from datetime import datetime, timezone

    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.evaluation.run import read_answers
    from pipeline.io.output_store import OutputStore
    from pipeline.resume import reconcile, scan_output

    def batch(name, rows):  # (id, caption, error, hour)
        table = pa.table({S.VIDEO_ID: [r[0] for r in rows], S.CAPTION: [r[1] for r in rows],
                          S.ERROR: [r[2] for r in rows],
                          S.CREATED_AT: pa.array([datetime(2026, 1, 1, r[3], tzinfo=timezone.utc) for r in rows],
                                                 S.OUTPUT_SCHEMA.field(S.CREATED_AT).type),
                          S.MODEL: ["m"] * len(rows), S.PROMPT_ID: ["p"] * len(rows)})
        OutputStore(str(tmp_path)).write_batch(name, table)

    batch("first", [("a", "an old caption", None, 1), ("b", "older", None, 1), ("c", None, "old error", 1)])
    batch("second", [("a", None, "a later failure", 2), ("b", "newer", None, 2), ("c", None, "new error", 2)])
    expected = {"a": "an old caption", "b": "newer", "c": None}
    answers = read_answers(str(tmp_path))
    assert {k: v[S.CAPTION] for k, v in answers.items()} == expected and answers["c"][S.ERROR] == "new error"
    assert reconcile(str(tmp_path))["duplicate_rows"] == 3
    assert scan_output(str(tmp_path)).num_rows == 3
    assert {k: v[S.CAPTION] for k, v in read_answers(str(tmp_path)).items()} == expected  # the same rows, kept
