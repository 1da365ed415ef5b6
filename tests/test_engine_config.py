"""Choosing the caption engine: the setting, the flag, its checks, and what ``auto`` picks."""

import os
import sys

import pytest

from model.settings import EngineUnavailable, resolve_engine, vllm_installed
from pipeline.config import JobConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs"))


def base(**sections):
    return {"source": {"input": "list.txt"}, "output": {"output": "/tmp/out"}, **sections}


def test_the_engine_flag_and_the_vllm_section_reach_the_config(tmp_path):
    import yaml
    from recaption import build_parser, config_from_args

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"vllm": {"batch_size": 32, "gpu_memory_utilization": 0.7,
                                               "kv_cache_dtype": "fp8", "tensor_parallel_size": 2}}))
    args = build_parser().parse_args(["--input", "l.txt", "--output", "o", "--engine", "vllm", "--config",
                                      str(config)])
    cfg = config_from_args(args)
    assert cfg.model.engine == "vllm"
    assert (cfg.vllm.batch_size, cfg.vllm.gpu_memory_utilization, cfg.vllm.kv_cache_dtype,
            cfg.vllm.tensor_parallel_size) == (32, 0.7, "fp8", 2)
    assert cfg.to_dict()["vllm"]["batch_size"] == 32  # recorded in the run summary's config


def test_engine_and_vllm_problems_are_reported_together():
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict(base(model={"engine": "tgi"},
                                 vllm={"batch_size": 0, "gpu_memory_utilization": 1.5, "kv_cache_dtype": "int3"}))
    text = str(info.value)
    for needle in ("model.engine must be one of", "vllm.batch_size", "vllm.gpu_memory_utilization",
                   "vllm.kv_cache_dtype"):
        assert needle in text, needle


def test_beam_search_is_refused_on_vllm_before_the_job_starts():
    with pytest.raises(ValueError, match="beam search"):
        JobConfig.from_dict(base(model={"engine": "vllm"}, generation={"num_beams": 4}))
    assert JobConfig.from_dict(base(model={"engine": "hf"}, generation={"num_beams": 4}))


def test_auto_is_hf_on_cpu_and_vllm_on_a_gpu_where_it_is_installed():
    assert resolve_engine("auto", "cpu") == "hf"
    assert resolve_engine("auto", "cuda") == ("vllm" if vllm_installed() else "hf")
    assert resolve_engine("hf", "cuda") == "hf"


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here: the missing-engine message cannot show")
def test_asking_for_vllm_where_it_is_missing_says_how_to_install_it():
    with pytest.raises(EngineUnavailable, match=r"pip install -e '\.\[vllm\]'"):
        resolve_engine("vllm", "cuda")


@pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed")
def test_asking_for_vllm_where_it_is_installed_gives_vllm():
    assert resolve_engine("vllm", "cpu") == "vllm"


def test_config_precedence_is_preset_then_yaml_then_flags(tmp_path):
    import yaml
    from recaption import build_parser, config_from_args

    preset = {"source": {"input": "preset.txt"}, "model": {"model": "tiny"}, "sampling": {"num_frames": 8},
              "generation": {"max_new_tokens": 48}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"sampling": {"num_frames": 12}, "resources": {"batch_size": 3},
                                      "generation": {"max_new_tokens": 64}}))
    args = build_parser().parse_args(["--output", "o", "--config", str(config), "--num-frames", "6"])
    cfg = config_from_args(args, preset)
    assert cfg.sampling.num_frames == 6  # flag over YAML over preset
    assert (cfg.resources.batch_size, cfg.generation.max_new_tokens) == (3, 64)  # YAML over preset
    assert (cfg.source.input, cfg.model.model) == ("preset.txt", "tiny")  # preset where nothing else says
    assert cfg.resources.rows_per_file == 256  # defaults under all three
