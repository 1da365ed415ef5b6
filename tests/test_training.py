"""Ray Train fine-tuning on CPU: LoRA + projector only, loss falls, SIGKILL + rerun resumes, the exported
weights_dir changes the pipeline's captions, and the pipeline's own Parquet trains end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 (pa.parquet)
import pytest
import torch

from helpers import ROOT, job_config
from model.settings import merge_layers
from model import GenerationSettings, caption_videos, load_pllava
from model.tiny import build_tiny_model, ensure_tiny_pllava
from pipeline import schema as S
from pipeline.runner import run_job
from pipeline.generated_videos import write_video
from training.config import TrainConfig
from training.data import TURNS, collate
from training.recipe import add_lora, lr_multiplier, param_groups
from training.trainer import run_training

SMALL = {"sampling": {"num_frames": 4}, "lora": {"r": 4, "alpha": 8}, "data": {"max_text_tokens": 2048},
         "optim": {"lr": 5e-3, "batch_size": 2, "warmup_ratio": 0.0},
         "run": {"num_workers": 2, "cpus_per_worker": 0.5}}


def merge(base: dict, **extra) -> dict:
    return merge_layers(base, extra)


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    items = []
    for i in range(4):
        write_video(str(root / f"v{i}.mp4"), 160, 120, 16, 8, seed=i)
        items.append({"video": f"v{i}.mp4", "QA": [{"i": "", "q": "What moves?", "a": f"a bright square moves right {i}"}]})
    items.append({"video": "missing.mp4", "QA": [{"q": "What moves?", "a": "nothing"}]})
    (root / "qa.json").write_text(json.dumps(items))
    return root


def test_only_lora_and_projector_learn(qa_data):
    model, processor = build_tiny_model()
    cfg = TrainConfig.from_dict(merge(SMALL, data={"uri": "x.json"}, run={"output": "/tmp/x"}))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora(model, cfg)
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2 + 4  # (q, v) x 2 layers x (A, B) + projector (2 weights, 2 biases)
    assert all("lora_" in n or n.startswith("multi_modal_projector.") for n in trainable)
    rows = pa.table({S.ERROR: pa.nulls(2, pa.string()),
                     S.FRAMES: pa.array([np.full((4, 336, 336, 3), 60 * i, np.uint8).tobytes() for i in range(2)],
                                        pa.large_binary()),
                     TURNS: [json.dumps({"system": "s", "qa": [["What?", "A dog."]]})] * 2})
    inputs, skipped = collate(rows, processor, 512, 4, 336)
    assert skipped.videos == 0 and (inputs["labels"] != -100).sum() > 0
    optimizer = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-2)
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                pixel_values=processor.pixel_values(inputs["frames"]), labels=inputs["labels"])
    out.loss.backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    # PEFT starts B at zero, so at step 0 only B and the projector get non-zero gradients; A follows later.
    assert set(with_grad) == {n for n in trainable if "lora_A" not in n}
    optimizer.step()
    after = dict(model.named_parameters())
    for name, before in frozen_before.items():
        if name.startswith(("vision_tower.", "language_model.")):
            peft_name = name.replace("language_model.", "language_model.base_model.model.", 1)
            peft_name = peft_name.replace("q_proj.weight", "q_proj.base_layer.weight").replace(
                "v_proj.weight", "v_proj.base_layer.weight")
            torch.testing.assert_close(after[peft_name if peft_name in after else name].detach(), before)
    assert not torch.equal(after["multi_modal_projector.linear_1.weight"].detach(),
                           frozen_before["multi_modal_projector.linear_1.weight"])


def test_answer_tokens_alone_carry_the_loss():
    _, processor = build_tiny_model()
    rows = pa.table({S.ERROR: ["decode: broken", None], S.FRAMES: pa.array([b"", np.zeros((4, 336, 336, 3), np.uint8)
                     .tobytes()], pa.large_binary()),
                     TURNS: [json.dumps({"system": "s", "qa": [["Q?", "A."]]})] * 2})
    inputs, skipped = collate(rows, processor, 512, 4, 336)
    assert skipped.videos == 1 and len(inputs["input_ids"]) == 1
    labels = inputs["labels"][0]
    answer = processor.tokenizer.decode(labels[labels != -100])
    assert answer == " A.</s>"
    # A prompt longer than the text budget leaves no answer token: the row is skipped, not a NaN loss.
    none, skipped = collate(rows, processor, 16, 4, 336)
    assert none is None and skipped.too_long == 1


def test_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_multiplier(s, 100, 0.1, 0.25) for s in range(100)]
    assert values[0] == 0.25 and values[9] == 1.0  # floored during warmup too, as the reference does
    assert values[50] < 1.0 and min(values) == 0.25 and values == values[:10] + sorted(values[10:], reverse=True)


@pytest.mark.slow
def test_killed_run_resumes_at_its_checkpoint(qa_data, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(merge(SMALL, run={"checkpoint_every": 2})))
    args = [sys.executable, "jobs/train_lora.py", "--config", str(config), "--data", str(qa_data / "qa.json"),
            "--model", "tiny", "--output", str(out), "--max-steps", "6"]
    first = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoints = out / "checkpoints" / "pllava-lora"
    deadline = time.time() + 400
    while not (checkpoints.is_dir() and any(p.name.startswith("checkpoint_") for p in checkpoints.iterdir())):
        assert first.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.5)
    time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 7))
    resumed = history[-1]["resumed_from"]
    assert resumed >= 2 and resumed % 2 == 0  # continued from a saved step, not from 0
    assert all(h["resumed_from"] == 0 for h in history[:resumed])
    assert history[-1]["skipped_videos"] >= 1  # missing.mp4 skipped and counted, the run carried on
    assert json.loads((out / "weights" / "pllava_weights.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_trains_on_pipeline_captions_and_changes_the_pipelines_captions(ray_local, tmp_path):
    videos = [write_video(str(tmp_path / f"c{i}.mp4"), 160, 120, 16, 8, seed=10 + i) for i in range(4)]
    (tmp_path / "bad.mp4").write_text("not a video")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(videos + [str(tmp_path / "bad.mp4")]))
    base = run_job(job_config(str(listing), str(tmp_path / "captions")))
    assert base["this_run"]["ok"] == 4

    cfg = TrainConfig.from_dict(merge(SMALL, data={"uri": str(tmp_path / "captions")},
                                      run={"output": str(tmp_path / "run"), "max_steps": 10, "checkpoint_every": 10}))
    result = run_training(cfg)
    assert result["examples"] == 4 and result["skipped_without_caption"] == 1
    losses = [h["loss"] for h in result["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # over-fitting four captions: the loss falls

    weights = result["weights_dir"]
    tuned, processor = load_pllava(ensure_tiny_pllava(), weights_dir=weights, device="cpu", num_frames=4)
    plain, _ = load_pllava(ensure_tiny_pllava(), device="cpu", num_frames=4)
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 336, 336, 3), dtype=np.uint8)
    settings = GenerationSettings(max_new_tokens=12)
    assert caption_videos(tuned, processor, frames, "Describe.", settings) != \
        caption_videos(plain, processor, frames, "Describe.", settings)

    retuned = run_job(job_config(str(listing), str(tmp_path / "captions2"), model={"weights_dir": weights}))
    assert retuned["this_run"]["ok"] == 4
    first = pa.concat_tables([pa.parquet.read_table(p) for p in (tmp_path / "captions" / "parquet").glob("*.parquet")])
    second = pa.concat_tables([pa.parquet.read_table(p) for p in (tmp_path / "captions2" / "parquet").glob("*.parquet")])
    by_id = {r[S.VIDEO_ID]: r for r in first.to_pylist()}
    changed = [r for r in second.to_pylist() if r[S.CAPTION] and r[S.CAPTION] != by_id[r[S.VIDEO_ID]][S.CAPTION]]
    assert changed and second.column(S.MODEL)[0].as_py() != first.column(S.MODEL)[0].as_py()


def test_gradient_checkpointing_gives_the_same_gradients():
    # No LoRA dropout, so both runs compute the same function in training mode (checkpointing is active only
    # while training).
    cfg = TrainConfig.from_dict(merge(SMALL, data={"uri": "x.json"}, run={"output": "/tmp/x"}, lora={"dropout": 0.0}))
    rows = pa.table({S.ERROR: pa.nulls(2, pa.string()),
                     S.FRAMES: pa.array([np.full((4, 336, 336, 3), 90 * i, np.uint8).tobytes() for i in range(2)],
                                        pa.large_binary()),
                     TURNS: [json.dumps({"system": "s", "qa": [["What?", "A dog runs."]]})] * 2})
    grads = []
    for checkpointing in (False, True):
        model, processor = build_tiny_model()
        add_lora(model, cfg)
        model.multi_modal_projector.linear_2.weight.data += 0.1  # any change from the seed, same in both runs
        if checkpointing:
            model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        assert model.language_model.base_model.model.model.gradient_checkpointing == checkpointing
        inputs, _ = collate(rows, processor, 512, 4, 336)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=processor.pixel_values(inputs["frames"]), labels=inputs["labels"])
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_checkpoints_resume_and_export_on_s3(ray_local, s3_endpoint, qa_data):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("train-runs")
    raw = merge(SMALL, data={"uri": str(qa_data / "qa.json")},
                run={"output": "s3://train-runs/run1", "max_steps": 2, "checkpoint_every": 2, "num_workers": 1})
    first = run_training(TrainConfig.from_dict(raw))
    assert first["weights_dir"] == "s3://train-runs/run1/weights"
    raw["run"]["max_steps"] = 3  # the same run, longer: continues from the checkpoint in the bucket
    second = run_training(TrainConfig.from_dict(raw))
    assert [h["step"] for h in second["history"]] == [1, 2, 3] and second["history"][-1]["resumed_from"] == 2
    fs.invalidate_cache()
    assert fs.exists("train-runs/run1/weights/model.safetensors")
    assert json.loads(fs.cat_file("train-runs/run1/weights/pllava_weights.json"))["steps"] == 3
    assert len(fs.cat_file("train-runs/run1/metrics.jsonl").decode().splitlines()) == 3


def test_a_section_given_in_part_keeps_the_training_defaults_for_the_rest():
    # `--num-frames 4` sets sampling.num_frames alone: the frames stay random picks (training), and the other
    # sections keep the PLLaVA recipe.
    cfg = TrainConfig.from_dict({"data": {"uri": "x.json"}, "run": {"output": "/tmp/x"}},
                                {"sampling": {"num_frames": 4}})
    assert (cfg.sampling.num_frames, cfg.sampling.mode) == (4, "random")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.optim.lr) == (128, 32.0, 2e-5)


@pytest.mark.slow
def test_training_on_videos_that_all_fail_stops_with_a_clear_error(tmp_path):
    # Before: `while not self.done` read the data again and again, never reaching a step.
    items = []
    for i in range(3):
        (tmp_path / f"broken{i}.mp4").write_bytes(b"not a video at all" * (i + 1))
        items.append({"video": f"broken{i}.mp4", "QA": [{"q": "What moves?", "a": "nothing"}]})
    (tmp_path / "qa.json").write_text(json.dumps(items))
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(merge(SMALL, run={"num_workers": 1})))
    args = [sys.executable, "jobs/train_lora.py", "--config", str(config), "--data", str(tmp_path / "qa.json"),
            "--model", "tiny", "--output", str(tmp_path / "run"), "--max-steps", "2"]
    run = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        _, stderr = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        pytest.fail("training on videos that all fail to decode did not end within 300 s")
    assert run.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker 0: a whole pass over its 3 training examples gave no sample to train on "
                           "(3 videos could not be decoded, 0 prompts"), stderr[-3000:]


@pytest.mark.parametrize("content, message", [
    ("{not json", r"not a JSON list of items"),
    ('{"video": "a.mp4"}', r"a JSON list of items is expected, got dict"),
    ('[{"QA": [{"a": "x"}]}]', r"item 0: an object with a \"video\" path is expected"),
    ('[{"video": "a.mp4", "QA": "what?"}]', r"item 0: \"QA\" must be a list"),
    ('[{"video": "a.mp4", "QA": [{"a": "x"}], "start": "soon"}]', r"item 0: start: must be a number of seconds"),
    ("[" * 100000 + "]" * 100000, r"not a JSON list of items"),
    ("[]", r"no training examples"),
])
def test_malformed_training_lists_are_named_not_tracebacks(tmp_path, content, message):
    from training.data import TrainingDataError, _videochat2_rows, build_train_dataset

    (tmp_path / "qa.json").write_text(content)
    cfg = TrainConfig.from_dict(merge(SMALL, data={"uri": str(tmp_path / "qa.json")}, run={"output": "/tmp/x"}))
    with pytest.raises(TrainingDataError, match=message):
        build_train_dataset(cfg) if content == "[]" else _videochat2_rows(cfg)


def test_a_relative_training_list_resolves_its_videos_beside_it(tmp_path, monkeypatch):
    from training.data import TrainingDataError, _videochat2_rows

    (tmp_path / "sub").mkdir()
    (tmp_path / "qa.json").write_text(json.dumps([{"video": "v.mp4", "QA": [{"q": "Q?", "a": "A."}]}]))
    monkeypatch.chdir(tmp_path)
    table, _ = _videochat2_rows(TrainConfig.from_dict(merge(SMALL, data={"uri": "qa.json"}, run={"output": "o"})))
    # Before: "qa.json".rsplit("/") gave the root "qa.json", so the video was looked for at qa.json/v.mp4.
    assert table.column(S.URI).to_pylist() == [str(tmp_path / "v.mp4")]
    with pytest.raises(TrainingDataError, match=r"nothing.json: not found"):
        _videochat2_rows(TrainConfig.from_dict(merge(SMALL, data={"uri": "nothing.json"}, run={"output": "o"})))
