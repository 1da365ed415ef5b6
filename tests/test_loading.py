"""load_pllava: the three checkpoint layouts round-trip, LoRA merges as W + alpha/r * B A, errors name the problem."""

import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import LORA_RANK
from model import WeightMismatchError, load_pllava, save_merged, save_weights_dir
from model.tiny import TinySpec, build_tiny_model, random_lora, save_tiny_pllava
from model.weights import published_key, safetensors_files


def all_keys(folder):
    keys = {}
    for path in safetensors_files(folder):
        with safe_open(path, "pt") as f:
            keys.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return keys


def logits_of(model, processor, frames_batch, query="Describe the video."):
    inputs = processor([processor.render(query)] * len(frames_batch), frames_batch)
    with torch.no_grad():
        return model(**inputs).logits


def peft_reference(lora_alpha):
    """The tiny model wrapped by PEFT with the same random LoRA, un-merged: the reference's inference path."""
    model, processor = build_tiny_model()
    pairs = random_lora(model, LORA_RANK, ("q_proj", "v_proj"), TinySpec().seed)
    config = LoraConfig(r=LORA_RANK, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model.language_model = get_peft_model(model.language_model, config)
    with torch.no_grad():
        for name, module in model.language_model.named_modules():
            full = "language_model." + name.replace("base_model.model.", "", 1)
            if full in pairs and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(pairs[full].a)
                module.lora_B["default"].weight.copy_(pairs[full].b)
    return model.eval(), processor, pairs


# -- layout 1: published PLLaVA folder --------------------------------------------------------------------
def test_published_layout_matches_peft_key_names(tiny_lora_dir):
    model, _, _ = peft_reference(lora_alpha=8)
    expected = {published_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert all_keys(tiny_lora_dir) == expected
    keys = all_keys(tiny_lora_dir)
    layer0 = "language_model.base_model.model.model.layers.0.self_attn"
    assert keys[f"{layer0}.q_proj.lora_A.default.weight"] == (LORA_RANK, 64)  # (r, in)
    assert keys[f"{layer0}.q_proj.lora_B.default.weight"] == (64, LORA_RANK)  # (out, r)
    assert f"{layer0}.q_proj.base_layer.weight" in keys
    assert "language_model.base_model.model.lm_head.weight" in keys
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "multi_modal_projector.linear_2.bias" in keys


def test_published_layout_is_sharded_with_index(tiny_lora_dir):
    index = json.load(open(os.path.join(tiny_lora_dir, "model.safetensors.index.json")))
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all(name.startswith("model-0000") for name in shards)
    config = json.load(open(os.path.join(tiny_lora_dir, "config.json")))
    assert config["model_type"] == "llava" and config["architectures"] == ["PllavaForConditionalGeneration"]
    assert config["pooling_shape"] == [4, 6, 6] and config["frame_shape"] == [24, 24]
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["text_config"]["model_type"] == "llama"


def test_published_lora_loads_merged_and_matches_unmerged_peft(tiny_lora_dir, frames_batch):
    reference, processor, _ = peft_reference(lora_alpha=8)
    model, _ = load_pllava(tiny_lora_dir, lora_alpha=8, device="cpu")
    torch.testing.assert_close(
        logits_of(model, processor, frames_batch), logits_of(reference, processor, frames_batch), rtol=1e-4, atol=1e-4
    )
    assert model.load_info["lora_rank"] == LORA_RANK and model.load_info["lora_merged"] == 2 * 2


def test_lora_merge_equals_w_plus_alpha_over_r_b_a(tiny_lora_dir):
    raw = {}
    for path in safetensors_files(tiny_lora_dir):
        raw.update(load_file(path))
    prefix = "language_model.base_model.model.model.layers.1.self_attn.v_proj"
    w, a, b = raw[f"{prefix}.base_layer.weight"], raw[f"{prefix}.lora_A.default.weight"], raw[f"{prefix}.lora_B.default.weight"]
    model, _ = load_pllava(tiny_lora_dir, lora_alpha=4, device="cpu")
    merged = model.language_model.model.layers[1].self_attn.v_proj.weight
    torch.testing.assert_close(merged, w + (4 / LORA_RANK) * b @ a)
    # And the alpha really matters: a different alpha gives a different weight.
    other, _ = load_pllava(tiny_lora_dir, lora_alpha=16, device="cpu")
    assert not torch.allclose(other.language_model.model.layers[1].self_attn.v_proj.weight, merged)


def test_published_lora_without_alpha_is_refused(tiny_lora_dir):
    with pytest.raises(ValueError, match="lora_alpha"):
        load_pllava(tiny_lora_dir, device="cpu")


def test_same_folder_as_model_and_weights_dir_is_accepted(tiny_lora_dir, frames_batch):
    once, processor = load_pllava(tiny_lora_dir, lora_alpha=4, device="cpu")
    twice, _ = load_pllava(tiny_lora_dir, weights_dir=tiny_lora_dir, lora_alpha=4, device="cpu")
    torch.testing.assert_close(logits_of(once, processor, frames_batch), logits_of(twice, processor, frames_batch))


# -- layout 2: LLaVA-NeXT base + weights_dir -------------------------------------------------------------
def write_llava_next_base(src_dir, out_dir, new_style_keys=False):
    """A LLaVA-NeXT base folder from a plain tiny folder: llava_next config, image_newline, optional
    transformers>=4.52 key names (model.language_model.*, lm_head.*)."""
    shutil.copytree(src_dir, out_dir)
    config = json.load(open(os.path.join(out_dir, "config.json")))
    for k in ("pooling_shape", "num_frames", "frame_shape", "use_pooling", "pooling_method", "architectures"):
        config.pop(k)
    config.update(model_type="llava_next", image_grid_pinpoints=[[336, 672], [672, 336]], use_image_newline_parameter=True)
    json.dump(config, open(os.path.join(out_dir, "config.json"), "w"))
    state = load_file(os.path.join(out_dir, "model.safetensors"))
    state["image_newline"] = torch.zeros(64)
    if new_style_keys:
        renamed = {}
        for k, v in state.items():
            for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                             ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                             ("image_newline", "model.image_newline")):
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            renamed[k] = v
        state = renamed
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    return str(out_dir)


@pytest.mark.parametrize("new_style_keys", [False, True])
def test_llava_next_base_plus_weights_dir(tmp_path, tiny_dir, frames_batch, new_style_keys):
    base_dir = write_llava_next_base(tiny_dir, tmp_path / "base", new_style_keys)
    # A weights_dir as training writes it: a new projector and LoRA on q/v, alpha recorded.
    donor, processor = build_tiny_model(TinySpec(seed=5))
    pairs = random_lora(donor, 2, ("q_proj", "v_proj"), seed=11)
    projector = donor.multi_modal_projector.state_dict()
    save_weights_dir(str(tmp_path / "weights"), projector, pairs,
                     {"r": 2, "lora_alpha": 6, "target_modules": ["q_proj", "v_proj"]})

    model, _ = load_pllava(base_dir, weights_dir=str(tmp_path / "weights"), device="cpu", pooling_shape=(4, 6, 6), num_frames=4)
    expected, _ = build_tiny_model()
    with torch.no_grad():
        expected.multi_modal_projector.load_state_dict(projector)
        for module, pair in pairs.items():
            linear = expected.get_submodule(module)
            linear.weight += (6 / 2) * pair.b @ pair.a
    torch.testing.assert_close(logits_of(model, processor, frames_batch), logits_of(expected, processor, frames_batch),
                               rtol=1e-4, atol=1e-4)
    assert model.load_info["ignored_keys"] in (["image_newline"], ["model.image_newline"])


def test_llava_next_config_defaults_to_pllava_video_settings(tmp_path, tiny_dir):
    base_dir = write_llava_next_base(tiny_dir, tmp_path / "base")
    model, _ = load_pllava(base_dir, device="cpu")
    assert model.config.pooling_shape == (16, 12, 12) and model.config.num_frames == 16
    assert model.config.num_video_tokens == 2304


def test_weights_dir_lora_on_top_of_published_lora_is_refused(tmp_path, tiny_lora_dir):
    donor, _ = build_tiny_model()
    save_weights_dir(str(tmp_path / "w"), donor.multi_modal_projector.state_dict(),
                     random_lora(donor, 2, ("q_proj",), 3), {"lora_alpha": 2})
    with pytest.raises(WeightMismatchError, match="LoRA"):
        load_pllava(tiny_lora_dir, weights_dir=str(tmp_path / "w"), lora_alpha=4, device="cpu")


# -- layout 3: merged export ---------------------------------------------------------------------------
def test_merged_export_round_trips(tmp_path, tiny_lora_dir, frames_batch):
    model, processor = load_pllava(tiny_lora_dir, lora_alpha=4, device="cpu")
    save_merged(model, processor, str(tmp_path / "merged"), max_shard_size="200KB")
    assert not any("lora_" in k or "base_layer" in k for k in all_keys(str(tmp_path / "merged")))
    again, processor2 = load_pllava(str(tmp_path / "merged"), device="cpu")
    torch.testing.assert_close(logits_of(again, processor2, frames_batch), logits_of(model, processor, frames_batch))
    with pytest.raises(ValueError, match="no un-merged LoRA"):
        load_pllava(str(tmp_path / "merged"), lora_alpha=4, device="cpu")


# -- failures ------------------------------------------------------------------------------------------
def test_image_token_mismatch_fails_with_both_ids(tmp_path, tiny_dir):
    folder = shutil.copytree(tiny_dir, tmp_path / "bad")
    config = json.load(open(folder / "config.json"))
    real_id = config["image_token_index"]
    config["image_token_index"] = real_id + 1
    json.dump(config, open(folder / "config.json", "w"))
    with pytest.raises(ValueError, match=rf"'<image>' token has id {real_id}.*image_token_index is {real_id + 1}"):
        load_pllava(str(folder), device="cpu")


def test_missing_weight_is_named(tmp_path, tiny_dir):
    folder = shutil.copytree(tiny_dir, tmp_path / "missing")
    state = load_file(folder / "model.safetensors")
    del state["multi_modal_projector.linear_1.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightMismatchError, match=r"missing 1 weights: multi_modal_projector\.linear_1\.weight"):
        load_pllava(str(folder), device="cpu")


def test_unexpected_weight_is_named(tmp_path, tiny_dir):
    folder = shutil.copytree(tiny_dir, tmp_path / "extra")
    state = load_file(folder / "model.safetensors")
    state["language_model.model.layers.7.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightMismatchError, match=r"unexpected 1 weights: language_model\.model\.layers\.7\.mlp\.up_proj"):
        load_pllava(str(folder), device="cpu")


def test_shape_mismatch_is_named(tmp_path, tiny_dir):
    folder = shutil.copytree(tiny_dir, tmp_path / "shape")
    config = json.load(open(folder / "config.json"))
    config["text_config"]["intermediate_size"] = 96
    json.dump(config, open(folder / "config.json", "w"))
    with pytest.raises(WeightMismatchError, match=r"mlp\.(down|gate|up)_proj\.weight has shape"):
        load_pllava(str(folder), device="cpu")


def test_no_weights_at_all(tmp_path, tiny_dir):
    folder = shutil.copytree(tiny_dir, tmp_path / "noweights")
    os.remove(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_pllava(str(folder), device="cpu")


# -- the tiny factory ----------------------------------------------------------------------------------
def test_tiny_model_is_reproducible_from_its_seed(tmp_path):
    a = save_tiny_pllava(str(tmp_path / "a"), lora_rank=2)
    b = save_tiny_pllava(str(tmp_path / "b"), lora_rank=2)
    seed0 = save_tiny_pllava(str(tmp_path / "seed0"))
    seed1 = save_tiny_pllava(str(tmp_path / "seed1"), TinySpec(seed=1))
    read = lambda d, n: open(os.path.join(d, n), "rb").read()  # noqa: E731
    assert read(a, "model.safetensors") == read(b, "model.safetensors")
    assert read(a, "tokenizer.json") == read(b, "tokenizer.json")
    assert read(seed0, "model.safetensors") != read(seed1, "model.safetensors")


def test_attention_implementation_is_selectable(tiny_dir, frames_batch):
    sdpa, processor = load_pllava(tiny_dir, device="cpu")
    eager, _ = load_pllava(tiny_dir, device="cpu", attn_implementation="eager")
    assert eager.language_model.config._attn_implementation == "eager"
    assert sdpa.language_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits_of(eager, processor, frames_batch), logits_of(sdpa, processor, frames_batch),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attn_implementation"):
        load_pllava(tiny_dir, device="cpu", attn_implementation="xformers")


def test_published_checkpoints_caption_with_the_reference_frames_and_pooling(tiny_lora_dir, tiny_dir, caplog):
    from model.loading import caption_settings

    with caplog.at_level("INFO", logger="model.loading"):
        assert caption_settings(tiny_lora_dir) == (16, (16, 12, 12))  # its config.json says 4 frames, 4x6x6
    assert "published PLLaVA checkpoint: 16 frames, pooling 16x12x12" in caplog.text
    assert caption_settings(tiny_lora_dir, 8) == (8, (16, 12, 12))  # each value overridable on its own
    assert caption_settings(tiny_lora_dir, None, (4, 6, 6)) == (16, (4, 6, 6))
    assert caption_settings(tiny_lora_dir, 8, (8, 6, 6)) == (8, (8, 6, 6))
    # Not a published layout (merged weights): config.json's values stand.
    assert caption_settings(tiny_dir) == (None, None)
    model, _ = load_pllava(tiny_dir, device="cpu")
    assert (model.config.num_frames, model.config.pooling_shape) == (4, (4, 6, 6))
