"""The jobs' stage lists are data: each stage's arguments are bound by name to its constructor, and its pool,
resources and retries can be read before anything runs (no Ray is started here)."""

from __future__ import annotations

import inspect
import tempfile

import pytest
import ray

from helpers import job_config
from model.prompts import PromptText
from pipeline.captioner import Captioner, VllmCaptioner
from pipeline.resources import PipelinePlan
from pipeline.runner import CAPTION_MAX_RESTARTS, MAX_DECODER_CRASHES, recaption_stages
from pipeline.sampler import FrameSampler
from pipeline.stages import Stage
from training.config import TrainConfig
from training.data import train_stages

PLAN = PipelinePlan(decode_concurrency=3, decode_num_cpus=0.75, caption_concurrency=2, caption_num_cpus=1.5,
                    caption_num_gpus=0.5, device="cpu")


def stages_of(engine: str = "hf", **sections) -> dict[str, Stage]:
    cfg = job_config("list.txt", "out", **sections)
    stages = recaption_stages(cfg, PromptText(query="Describe."), "run-1", None, PLAN, engine=engine)
    return {stage.name: stage for stage in stages}


def test_the_recaption_job_is_a_list_of_named_stages_in_order():
    assert list(stages_of()) == ["mark_repeats", "decode", "caption", "write"]
    windows = stages_of(source={"window_s": 4})
    assert list(windows) == ["split_windows", "skip_done_windows", "mark_repeats", "decode", "caption", "write"]
    assert windows["split_windows"].kwargs["window_s"] == 4
    assert windows["skip_done_windows"].kwargs["counts_reads"] is False


def test_every_setting_reaches_the_decode_actor_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the crash journal the actor opens goes here
    decode = stages_of(resources={"decode_io_threads": 3, "decode_max_in_memory_mb": 12, "decode_timeout_s": 7.5},
                       output={"keyframes": True})["decode"]
    assert decode.fn is FrameSampler and decode.on_actors
    bound = inspect.signature(FrameSampler).bind(**decode.kwargs).arguments
    assert (bound["io_threads"], bound["max_in_memory_mb"], bound["decode_timeout_s"]) == (3, 12, 7.5)
    assert bound["keyframes"] is True and bound["max_crashes"] == MAX_DECODER_CRASHES
    sampler = FrameSampler(**decode.kwargs)  # what each decode actor builds
    assert sampler.max_in_memory_bytes == 12 * 1024 * 1024 and sampler.decode_timeout_s == 7.5
    assert sampler.journal.folder.startswith(str(tmp_path))
    assert decode.map_batches["compute"].min_size == PLAN.decode_concurrency
    assert decode.map_batches["num_cpus"] == PLAN.decode_num_cpus and decode.map_batches["max_restarts"] == -1


@pytest.mark.parametrize("engine, stage_class", [("hf", Captioner), ("vllm", VllmCaptioner)])
def test_the_caption_pool_takes_what_the_plan_gives_it(engine, stage_class):
    caption = stages_of(engine, vllm={"max_concurrent_batches": 3})["caption"]
    assert caption.fn is stage_class and caption.kwargs["device"] == PLAN.device
    settings = caption.map_batches
    assert (settings["num_gpus"], settings["num_cpus"]) == (PLAN.caption_num_gpus, PLAN.caption_num_cpus)
    assert settings["compute"].min_size == settings["compute"].max_size == PLAN.caption_concurrency
    assert settings["max_restarts"] == CAPTION_MAX_RESTARTS
    if engine == "vllm":
        assert settings["max_concurrency"] == 3 and "vllm_settings" in caption.kwargs
    else:
        assert "max_concurrency" not in settings and "vllm_settings" not in caption.kwargs


def test_a_stage_whose_arguments_do_not_fit_its_constructor_fails_when_declared():
    with pytest.raises(TypeError, match="stage 'decode'.*io_thread"):
        Stage("decode", FrameSampler, {"sampling": None, "io_thread": 2})
    with pytest.raises(TypeError, match="stage 'caption'"):
        Stage("caption", Captioner, {"model_cfg": None})  # required arguments missing
    assert not Stage("write", FrameSampler, {"sampling": None}, {"num_cpus": 0.25}).on_actors
    assert Stage("x", FrameSampler, {"sampling": None}, {"compute": ray.data.ActorPoolStrategy(size=1)}).on_actors


def test_training_samples_frames_through_the_same_decode_stage_with_its_seed():
    cfg = TrainConfig.from_dict({"data": {"uri": "x.json"}, "run": {"output": "/tmp/x", "seed": 7},
                                 "optim": {"batch_size": 2}})
    (decode,) = train_stages(cfg, decode_concurrency=2, decode_num_cpus=0.25)
    assert decode.fn is FrameSampler and decode.kwargs["seed"] == 7
    assert decode.kwargs["sampling"] is cfg.sampling and decode.map_batches["batch_size"] == 2
    assert decode.map_batches["compute"].min_size == 2 and decode.map_batches["num_cpus"] == 0.25
