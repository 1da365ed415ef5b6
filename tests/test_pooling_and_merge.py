"""The vision path: penultimate CLIP layer without CLS -> projector -> 3-D average pooling -> in-place expansion."""

import pytest
import torch

from model.tiny import TinySpec, build_tiny_model


def vision_layers(model):
    tower = model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model()


@pytest.mark.parametrize(
    ("num_frames", "pooling", "expected_tokens"),
    [(4, (4, 6, 6), 144), (4, (2, 12, 12), 288), (8, (4, 12, 12), 576), (4, (4, 24, 24), 2304)],
)
def test_pooled_token_count_is_product_of_pooling_shape(num_frames, pooling, expected_tokens):
    model, _ = build_tiny_model(TinySpec(num_frames=num_frames, pooling_shape=pooling))
    pixels = torch.randn(2, num_frames, 3, 336, 336)
    tokens = model.encode_videos(pixels)
    assert tokens.shape == (2, expected_tokens, 64)
    assert model.config.num_video_tokens == expected_tokens


def test_pooling_is_projector_then_2x2_spatial_average(tiny):
    model, _ = tiny
    pixels = torch.randn(1, 4, 3, 336, 336)
    with torch.no_grad():
        hidden = model.vision_tower(pixels[0], output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, 576, Dv)
        projected = model.multi_modal_projector(hidden).view(4, 24, 24, -1)  # (T, 24, 24, D)
        # (4, 6, 6) pooling of a 4x24x24 grid: time untouched, 4x4 spatial blocks averaged.
        manual = projected.view(4, 6, 4, 6, 4, -1).mean(dim=(2, 4)).reshape(1, 144, -1)
        pooled = model.encode_videos(pixels)
    torch.testing.assert_close(pooled, manual, rtol=1e-5, atol=1e-5)


def test_features_come_from_penultimate_layer(tiny):
    model, _ = tiny
    pixels = torch.randn(1, 4, 3, 336, 336)
    with torch.no_grad():
        baseline = model.encode_videos(pixels)
        # Changing the last vision layer must not change anything: PLLaVA reads layer -2.
        last = vision_layers(model)[-1]
        saved = {k: v.clone() for k, v in last.state_dict().items()}
        for p in last.parameters():
            p.add_(1.0)
        after_last = model.encode_videos(pixels)
        last.load_state_dict(saved)
        first = vision_layers(model)[0]
        first.mlp.fc1.weight.add_(1.0)
        after_first = model.encode_videos(pixels)
        first.mlp.fc1.weight.sub_(1.0)
    torch.testing.assert_close(after_last, baseline)
    assert not torch.allclose(after_first, baseline)


def test_image_token_expands_in_place_with_left_padding(tiny):
    model, processor = tiny
    prompts = [processor.render("short"), processor.render("a much longer question about the clip")]
    inputs = processor.tokenize(prompts)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    video = torch.randn(2, 144, 64)
    labels = ids.clone()
    embeds, new_mask, new_labels = model.merge_video_tokens(ids, mask, video, labels)
    length = ids.shape[1] + 144 - 1
    assert embeds.shape == (2, length, 64) and new_mask.shape == (2, length)
    image_id = model.config.image_token_index
    for row in range(2):
        pos = int((ids[row] == image_id).nonzero())
        torch.testing.assert_close(embeds[row, pos : pos + 144], video[row])
        assert bool((new_labels[row, pos : pos + 144] == -100).all())
        assert bool((new_mask[row, pos : pos + 144] == 1).all())
        # Text after the video is shifted, not changed.
        text = model.language_model.get_input_embeddings()(ids[row, pos + 1 :])
        torch.testing.assert_close(embeds[row, pos + 144 :], text)
    # The shorter prompt's padding stays on the left.
    assert new_mask[0, 0] == 0 and new_mask[1, 0] == 1


def test_prompt_without_image_token_is_rejected(tiny):
    model, processor = tiny
    ids = processor.tokenize(["no placeholder here"])["input_ids"]
    with pytest.raises(ValueError, match="exactly one <image> token"):
        model(ids, pixel_values=torch.randn(1, 4, 3, 336, 336))


def test_frames_of_wrong_size_are_rejected(tiny):
    model, processor = tiny
    inputs = processor.tokenize([processor.render("q")])
    with pytest.raises(ValueError, match="3x336x336"):
        model(**inputs, pixel_values=torch.randn(1, 4, 3, 224, 224))


def test_forward_returns_logits_and_loss(tiny):
    model, processor = tiny
    inputs = processor.tokenize([processor.render("q")])
    pixels = torch.randn(1, 4, 3, 336, 336)
    out = model(**inputs, pixel_values=pixels, labels=inputs["input_ids"])
    assert out.logits.shape == (1, inputs["input_ids"].shape[1] + 143, model.config.text_config.vocab_size)
    assert torch.isfinite(out.loss)


def test_fewer_frames_than_the_pooling_depth_repeat_each_frame_evenly():
    # 4 sampled frames under a pooling depth of 8: every output step is one frame, each frame twice, the
    # same tokens as feeding the 4 frames repeated twice each (not the reference's uneven repeat, which
    # only arises when its batch holds fewer frames than its num_frames; see README "Frames and pooling").
    model, _ = build_tiny_model(TinySpec(num_frames=4, pooling_shape=(8, 6, 6)))
    pixels = torch.randn(1, 4, 3, 336, 336)
    with torch.no_grad():
        few = model.encode_videos(pixels)
        repeated = model.encode_videos(pixels.repeat_interleave(2, dim=1))
    assert few.shape == (1, 8 * 36, 64) == repeated.shape
    torch.testing.assert_close(few, repeated, rtol=1e-5, atol=1e-5)
    steps = few.view(8, 36, 64)
    torch.testing.assert_close(steps[0], steps[1])
    torch.testing.assert_close(steps[6], steps[7])
    assert not torch.allclose(steps[1], steps[2])
