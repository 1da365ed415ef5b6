"""Processor: CLIP normalisation (on any device), resize + centre crop, left padding; prompt templates."""

import numpy as np
import pytest
import torch

from model.processing_pllava import CLIP_MEAN, CLIP_STD, PllavaProcessor
from model.prompts import DEFAULT_RECAPTION_QUERY, get_template, prompt_id, read_prompt, template_for_tokenizer
from model.tiny import build_tokenizer


@pytest.fixture(scope="module")
def processor():
    return PllavaProcessor(tokenizer=build_tokenizer())


def test_uint8_frames_normalise_with_clip_statistics(processor):
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 336, 336, 3), dtype=np.uint8)
    pixels = processor.pixel_values(frames)
    assert pixels.shape == (2, 3, 3, 336, 336) and pixels.dtype == torch.float32
    expected = (torch.from_numpy(frames).float() / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels, expected.permute(0, 1, 4, 2, 3), rtol=1e-5, atol=1e-5)


def test_non_square_frames_are_resized_short_side_and_centre_cropped(processor):
    frames = np.zeros((1, 2, 360, 640, 3), dtype=np.uint8)
    frames[..., 200:440, :] = 255  # a white band in the middle third of the width
    pixels = processor.pixel_values(frames)
    assert pixels.shape == (1, 2, 3, 336, 336)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    # 640x360 -> 597x336, crop keeps x in [130, 466): the band (x 187..411 after scaling) sits inside.
    centre = pixels[0, 0, :, 168, 168]
    torch.testing.assert_close(centre, white, rtol=1e-3, atol=1e-3)
    assert pixels[0, 0, 0, 168, 5] < 0  # left edge of the crop is outside the band


def test_pixel_values_can_be_made_in_bfloat16(processor):
    frames = np.zeros((1, 1, 336, 336, 3), dtype=np.uint8)
    assert processor.pixel_values(frames, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bad_frame_arrays_are_rejected(processor):
    with pytest.raises(ValueError, match="uint8"):
        processor.pixel_values(np.zeros((1, 1, 336, 336, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        processor.pixel_values(np.zeros((1, 336, 336, 3), dtype=np.uint8))


def test_prompts_are_left_padded(processor):
    batch = processor.tokenize([processor.render("a"), processor.render("a longer question")])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and bool(mask[1].all())


def test_templates_refuse_placeholders_in_text_and_unknown_names():
    # The exact layouts are pinned in test_prompt_layouts.py.
    with pytest.raises(ValueError, match="must not contain"):
        get_template("vicuna").render("look at <image>")
    with pytest.raises(KeyError, match="known"):
        get_template("nope")


def test_template_follows_the_tokenizer():
    assert template_for_tokenizer(build_tokenizer("vicuna")).name == "vicuna"
    assert template_for_tokenizer(build_tokenizer("chatml")).name == "chatml"


def test_chatml_answers_stop_at_im_end():
    processor = PllavaProcessor(tokenizer=build_tokenizer("chatml"), template=get_template("chatml"))
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in processor.stop_token_ids and processor.tokenizer.eos_token_id in processor.stop_token_ids
    ids = processor.tokenizer("A dog runs.<|im_end|>junk", add_special_tokens=False, return_tensors="pt").input_ids
    assert processor.decode(ids) == ["A dog runs."]


def test_user_prompt_from_string_file_or_default(tmp_path):
    assert read_prompt() == DEFAULT_RECAPTION_QUERY
    assert read_prompt(prompt="  Count the cars.\n") == "  Count the cars.\n"  # exactly as given
    path = tmp_path / "prompt.txt"
    path.write_text("Describe the camera motion.\n")  # the file's last line break is not part of the prompt
    assert read_prompt(prompt_file=str(path)) == "Describe the camera motion."
    path.write_bytes(b" Describe it.\r\n\r\n")  # one line break goes; the rest is kept
    assert read_prompt(prompt_file=str(path)) == " Describe it.\r\n"
    with pytest.raises(ValueError, match="not both"):
        read_prompt(prompt="a", prompt_file=str(path))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_prompt(prompt_file=str(tmp_path / "empty.txt"))


def test_prompt_id_changes_with_template_and_text():
    vicuna, chatml = get_template("vicuna"), get_template("chatml")
    a = prompt_id(vicuna, vicuna.render("x"))
    assert a == prompt_id(vicuna, vicuna.render("x"))
    assert a != prompt_id(vicuna, vicuna.render("y")) and a != prompt_id(chatml, chatml.render("x"))
