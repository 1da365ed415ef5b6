"""Batched greedy captioning equals captioning the same videos one at a time."""

import pytest

from model import GenerationSettings, caption_videos, generate_captions, load_pllava
from model.prompts import PromptText

SETTINGS = GenerationSettings(max_new_tokens=24)


@pytest.fixture(scope="module")
def loaded(tiny_lora_dir):
    return load_pllava(tiny_lora_dir, lora_alpha=4, device="cpu")


def test_batch_equals_one_at_a_time_with_one_prompt(loaded, frames_batch):
    model, processor = loaded
    batched = caption_videos(model, processor, frames_batch, "Describe the video.", SETTINGS)
    single = [caption_videos(model, processor, frames_batch[i : i + 1], "Describe the video.", SETTINGS)[0]
              for i in range(len(frames_batch))]
    assert batched == single
    assert all(batched)


def test_batch_equals_one_at_a_time_with_left_padded_prompts(loaded, frames_batch):
    model, processor = loaded
    prompts = ["Hi?", "Describe every action in this clip, in order, in detail.", "What moves?"]
    lengths = {len(processor.tokenize([processor.render(p)])["input_ids"][0]) for p in prompts}
    assert len(lengths) == 3  # different lengths: the batch really is padded
    batched = caption_videos(model, processor, frames_batch, prompts, SETTINGS)
    single = [caption_videos(model, processor, frames_batch[i : i + 1], prompts[i], SETTINGS)[0] for i in range(3)]
    assert batched == single


def test_each_video_can_open_its_reply_with_its_own_prefix(loaded, frames_batch):
    """Per-row prompts (evaluation questions): the model continues from the prefix, in a batch as alone."""
    model, processor = loaded
    assert processor.render("Which?", "Best option:(").endswith(" ASSISTANT:Best option:(")
    prompts, prefixes = ["Which one?", "Which one?", "What moves?"], ["Best option:(", "", "In the video,"]
    batched = caption_videos(model, processor, frames_batch, prompts, SETTINGS, prefixes)
    single = [caption_videos(model, processor, frames_batch[i : i + 1], prompts[i], SETTINGS, prefixes[i])[0]
              for i in range(3)]
    assert batched == single
    plain = caption_videos(model, processor, frames_batch[:1], "Which one?", SETTINGS)
    assert batched[0] != plain[0]  # the prefix is part of what the model continues from
    with pytest.raises(ValueError, match="2 reply prefixes for 3 videos"):
        caption_videos(model, processor, frames_batch, prompts, SETTINGS, prefixes[:2])


def test_the_video_changes_the_caption(loaded, frames_batch):
    model, processor = loaded
    captions = caption_videos(model, processor, frames_batch, "Describe the video.", SETTINGS)
    assert len(set(captions)) == len(captions)


def test_token_counts_and_truncation_flag(loaded, frames_batch):
    model, processor = loaded
    results = generate_captions(model, processor, frames_batch[:2], "Describe.", GenerationSettings(max_new_tokens=5))
    for r in results:
        assert 1 <= r.num_tokens <= 5
        assert r.truncated == (r.num_tokens == 5)


def test_stop_token_ends_the_caption(loaded, frames_batch):
    model, processor = loaded
    eos = processor.tokenizer.eos_token_id
    calls = []

    def force_eos_on_third_token(module, args, logits):
        calls.append(1)
        if len(calls) == 3:  # call 1 = prefill -> token 1, call 2 -> token 2, call 3 -> token 3
            logits = logits.clone()
            logits[..., -1, eos] = 1e4
        return logits

    settings = GenerationSettings(max_new_tokens=10)
    handle = model.language_model.lm_head.register_forward_hook(force_eos_on_third_token)
    try:
        stopped = generate_captions(model, processor, frames_batch[:1], "Describe.", settings)[0]
    finally:
        handle.remove()
    first_two = generate_captions(model, processor, frames_batch[:1], "Describe.", GenerationSettings(max_new_tokens=2))[0]
    assert not stopped.truncated and stopped.num_tokens == 3
    assert stopped.text == first_two.text


def test_generation_settings_are_validated():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=1.5)


def test_a_video_the_model_fails_on_becomes_an_error_row_not_a_crash(tiny_dir):
    import numpy as np
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.captioner import Captioner
    from pipeline.config import ModelConfig

    captioner = Captioner(ModelConfig(model=tiny_dir), SETTINGS, PromptText("Describe."), num_frames=4,
                          image_size=336, device="cpu")
    good = np.zeros((4, 336, 336, 3), np.uint8)
    batch = pa.table({S.ERROR: pa.nulls(3, pa.string()), S.ERROR_STAGE: pa.nulls(3, pa.string()),
                      S.ERROR_REASON: pa.nulls(3, pa.string()),
                      S.FRAMES: pa.array([good.tobytes()] * 3, pa.large_binary())})
    original = captioner.model.encode_videos
    calls = []

    def fails_for_the_batch_then_the_second_video(pixels):
        calls.append(len(pixels))
        if len(pixels) > 1 or len(calls) == 3:  # the batch, then the second video alone
            raise RuntimeError("kernel failure")
        return original(pixels)

    captioner.model.encode_videos = fails_for_the_batch_then_the_second_video
    out = captioner(batch)
    assert out.column(S.ERROR_STAGE).to_pylist() == [None, "caption", None]
    assert out.column(S.ERROR_REASON).to_pylist()[1] == "model_error"
    assert "kernel failure" in out.column(S.ERROR).to_pylist()[1]
    assert out.column(S.CAPTION).to_pylist()[0] and out.column(S.CAPTION).to_pylist()[2]


def test_the_caption_stage_asks_each_row_its_own_question_when_told_the_columns(tiny_lora_dir, frames_batch):
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.captioner import Captioner
    from pipeline.config import ModelConfig

    prompt = PromptText("Describe.", "Watch.", query_column="q", reply_prefix_column="start")
    captioner = Captioner(ModelConfig(model=tiny_lora_dir, lora_alpha=4), SETTINGS, prompt, num_frames=4,
                          image_size=336, device="cpu")
    queries, starts = ["Which one?", None, "What moves?"], ["Best option:(", "In the video,", None]
    batch = pa.table({S.ERROR: pa.nulls(3, pa.string()), S.ERROR_STAGE: pa.nulls(3, pa.string()),
                      S.ERROR_REASON: pa.nulls(3, pa.string()), "q": queries, "start": starts,
                      S.FRAMES: pa.array([f.tobytes() for f in frames_batch], pa.large_binary())})
    out = captioner(batch).column(S.CAPTION).to_pylist()
    captioner.processor.system_prompt = "Watch."
    asked = caption_videos(captioner.model, captioner.processor, frames_batch, ["Which one?", "Describe.", "What moves?"],
                           SETTINGS, ["Best option:(", "In the video,", ""])  # blanks: the job's prompt, no prefix
    assert out == asked
    assert out != caption_videos(captioner.model, captioner.processor, frames_batch, "Describe.", SETTINGS)
    with pytest.raises(KeyError, match=r"needs columns \['q', 'start'\]"):
        captioner(batch.drop_columns(["q", "start"]))


def test_the_caption_stage_pools_a_published_checkpoint_as_the_reference(tiny_lora_dir):
    from pipeline.captioner import Captioner
    from pipeline.config import ModelConfig

    published = Captioner(ModelConfig(model=tiny_lora_dir, lora_alpha=4), SETTINGS, PromptText(), num_frames=16,
                          image_size=336, device="cpu")
    assert published.pooling == "16x12x12" and published.model.config.num_frames == 16
    chosen = Captioner(ModelConfig(model=tiny_lora_dir, lora_alpha=4, pooling_shape=(4, 6, 6)), SETTINGS,
                       PromptText(), num_frames=4, image_size=336, device="cpu")
    assert chosen.pooling == "4x6x6"


def test_out_of_memory_halves_the_batch_until_it_fits(tiny_dir, caplog):
    import numpy as np
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.captioner import Captioner
    from pipeline.config import ModelConfig

    captioner = Captioner(ModelConfig(model=tiny_dir), SETTINGS, PromptText("Describe."), num_frames=4,
                          image_size=336, device="cpu")
    frames = [np.full((4, 336, 336, 3), 40 * i, np.uint8) for i in range(4)]
    batch = pa.table({S.ERROR: pa.nulls(4, pa.string()), S.ERROR_STAGE: pa.nulls(4, pa.string()),
                      S.ERROR_REASON: pa.nulls(4, pa.string()),
                      S.FRAMES: pa.array([f.tobytes() for f in frames], pa.large_binary())})
    expected = captioner(batch).column(S.CAPTION).to_pylist()
    original, sizes = captioner.model.encode_videos, []

    def fits_two_videos_at_most(pixels):
        sizes.append(len(pixels))
        if len(pixels) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(pixels)

    captioner.model.encode_videos = fits_two_videos_at_most
    with caplog.at_level("WARNING"):
        out = captioner(batch)
    assert sizes == [4, 2, 2]  # halved once, not retried video by video
    assert out.column(S.CAPTION).to_pylist() == expected and out.column(S.ERROR).null_count == 4
    assert "out of memory at batch 4" in caplog.text
