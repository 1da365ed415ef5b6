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
    for needle in ("model.engine: Input should be 'auto', 'hf' or 'vllm'", "vllm.batch_size:",
                   "vllm.gpu_memory_utilization:", "vllm.kv_cache_dtype:"):
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


def test_every_flag_sets_a_real_config_key():
    from recaption import FLAG_KEYS as JOB_FLAGS
    from recaption import build_parser as job_parser
    from train_lora import FLAG_KEYS as TRAIN_FLAGS
    from train_lora import build_parser as train_parser

    from jobs.flags import paths_of
    from training.config import TrainConfig

    for flags, model, parser in ((JOB_FLAGS, JobConfig, job_parser()), (TRAIN_FLAGS, TrainConfig, train_parser())):
        assert set(flags.values()) <= paths_of(model), set(flags.values()) - paths_of(model)
        dests = {action.dest for action in parser._actions}
        assert set(flags) - {"formats"} <= dests  # ("formats" is derived from --format)


@pytest.mark.parametrize("name", ["demo", "inter4k"])
def test_every_preset_file_loads_into_a_valid_job(name):
    from jobs.flags import PRESETS_DIR, load_preset

    assert sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml")) == ["demo", "inter4k"]
    layer = load_preset(name, video_list="/v/list.txt", output="/out", data_root="s3://b/Inter4K")
    cfg = JobConfig.from_dict(layer, {"output": {"output": "/out"}, "model": {"model": "tiny"}})
    if name == "inter4k":
        assert (cfg.source.input, cfg.source.videos_prefix) == ("s3://b/Inter4K/annotations.json",
                                                                "s3://b/Inter4K/60fps/UHD")
        assert cfg.model.pooling_shape == (16, 12, 12) and cfg.output.formats == ("parquet", "webdataset")
    else:
        assert cfg.source.input == "/v/list.txt" and cfg.resources.rows_per_file == 4
