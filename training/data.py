"""Training data: conversations about videos -> a Ray Dataset of sampled frames + turns, and token batches
with the loss on answer tokens only.

Two sources: VideoChat2-IT style JSON (``[{"video": rel_path, "QA": [{"i", "q", "a"}, ...]}, ...]``) and the
recaption pipeline's Parquet output (each captioned row becomes recaption prompt -> caption). Frames come
from the pipeline's :class:`~pipeline.sampler.FrameSampler` with training-time (random per segment)
sampling; a video that fails to decode stays in the stream as an error row and the training loop skips
and counts it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import ray
import torch

from model.prompts import DEFAULT_RECAPTION_QUERY, DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, PromptTemplate
from pipeline import schema as S
from pipeline.sampler import FrameSampler, frames_from_bytes
from pipeline.stages import Stage, apply_stages
from pipeline.io.output_store import parquet_location
from pipeline.io.masking import mask_text
from pipeline.io.storage import TextFileError, get_fs, is_local, join, local_path, read_text_bounded
from training.config import TrainConfig

logger = logging.getLogger(__name__)

TURNS = "turns"  # JSON text: {"system": str, "qa": [[question, answer], ...]}


MAX_DATA_JSON_BYTES = 2 << 30  # a VideoChat2 list is read whole: a few hundred MB for millions of questions


class TrainingDataError(ValueError):
    """The training data cannot be read or holds nothing to train on; the message names the file and item."""


@dataclass
class SourceStats:
    examples: int
    skipped_without_caption: int = 0


def detect_kind(uri: str) -> str:
    return "videochat2" if uri.lower().endswith(".json") else "captions"


def _absolute(uri: str) -> str:
    """A local path made absolute here, on the driver: Ray's decode actors need not share its working folder."""
    return os.path.abspath(local_path(uri)) if is_local(uri) else uri


def _read_items(uri: str, storage_options: dict) -> list:
    shown = mask_text(uri)
    try:
        text = read_text_bounded(uri, MAX_DATA_JSON_BYTES, storage_options, what="training list", hint="split it")
    except TextFileError as exc:
        raise TrainingDataError(str(exc)) from None
    try:
        items = json.loads(text.removeprefix("\ufeff"))  # a byte order mark, as json.loads takes one in bytes
    except (ValueError, RecursionError) as exc:  # not JSON, or nested past the parser's stack
        raise TrainingDataError(f"{shown}: not a JSON list of items: {str(exc)[:200]}") from None
    if not isinstance(items, list):
        raise TrainingDataError(f"{shown}: a JSON list of items is expected, got {type(items).__name__}")
    return items


def _number_or_none(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrainingDataError(f"{where}: must be a number of seconds, got {value!r:.60}")
    return float(value)


def _videochat2_rows(cfg: TrainConfig) -> tuple[pa.Table, SourceStats]:
    uri = _absolute(cfg.data.uri)
    items = _read_items(uri, cfg.storage_options)
    root = _absolute(cfg.data.video_root) if cfg.data.video_root else uri.rsplit("/", 1)[0]
    uris, starts, ends, turns = [], [], [], []
    for number, item in enumerate(items):
        where = f"{mask_text(cfg.data.uri)}: item {number}"
        if not isinstance(item, dict) or not isinstance(item.get("video"), str) or not item["video"]:
            raise TrainingDataError(f"{where}: an object with a \"video\" path is expected, got {item!r:.100}")
        questions = item.get("QA", [])
        if not isinstance(questions, list) or not all(isinstance(t, dict) for t in questions):
            raise TrainingDataError(f"{where}: \"QA\" must be a list of {{\"i\", \"q\", \"a\"}} objects")
        qa = [(str(t.get("q", "")), str(t["a"])) for t in questions if t.get("a")]
        if not qa:
            continue
        system = next((str(t["i"]) for t in questions if t.get("i")), DEFAULT_SYSTEM_PROMPT)
        video = item["video"]
        uris.append(video if "://" in video or video.startswith("/") else join(root, video))
        starts.append(_number_or_none(item.get("start"), f"{where}: start"))
        ends.append(_number_or_none(item.get("end"), f"{where}: end"))
        turns.append(json.dumps({"system": system, "qa": qa}))
    table = pa.table({S.URI: pa.array(uris, pa.string()), S.START_S: pa.array(starts, pa.float64()),
                      S.END_S: pa.array(ends, pa.float64()), TURNS: pa.array(turns, pa.string())})
    return table, SourceStats(examples=table.num_rows)


def _caption_rows(cfg: TrainConfig) -> tuple[pa.Table, SourceStats]:
    location = parquet_location(_absolute(cfg.data.uri))  # an output root, its parquet/ or a file
    fs, path = get_fs(location, cfg.storage_options)
    try:
        table = pds.dataset(path, filesystem=fs, format="parquet").to_table(
            columns=[S.URI, S.START_S, S.END_S, S.CAPTION])
    except FileNotFoundError:
        raise TrainingDataError(f"{mask_text(location)}: not found (give a recaption output folder, its parquet/ "
                                "folder, a Parquet file, or a VideoChat2 .json)") from None
    has_caption = pc.is_valid(table.column(S.CAPTION))
    kept = table.filter(has_caption)
    turns = [json.dumps({"system": DEFAULT_SYSTEM_PROMPT, "qa": [[DEFAULT_RECAPTION_QUERY, c]]})
             for c in kept.column(S.CAPTION).to_pylist()]
    out = kept.drop_columns([S.CAPTION]).append_column(TURNS, pa.array(turns, pa.string()))
    return out, SourceStats(examples=out.num_rows, skipped_without_caption=table.num_rows - kept.num_rows)


def build_train_dataset(cfg: TrainConfig, decode_concurrency: int = 1,
                        decode_num_cpus: float = 0.5) -> tuple[ray.data.Dataset, SourceStats]:
    """Examples with sampled frames (``frames`` bytes, or ``error`` set) and their conversation turns."""
    kind = detect_kind(cfg.data.uri) if cfg.data.kind == "auto" else cfg.data.kind
    table, stats = _videochat2_rows(cfg) if kind == "videochat2" else _caption_rows(cfg)
    if table.num_rows == 0:
        raise TrainingDataError(f"{mask_text(cfg.data.uri)}: no training examples")
    n = table.num_rows
    table = table.append_column(S.VIDEO_ID, pa.array([str(i) for i in range(n)], pa.string()))
    for name in (S.ERROR, S.ERROR_STAGE, S.ERROR_REASON):
        table = table.append_column(name, pa.nulls(n, pa.string()))
    blocks = [table.slice(i, 4) for i in range(0, n, 4)]
    return apply_stages(ray.data.from_arrow(blocks), train_stages(cfg, decode_concurrency, decode_num_cpus)), stats


def train_stages(cfg: TrainConfig, decode_concurrency: int = 1, decode_num_cpus: float = 0.5) -> list[Stage]:
    """Training's stages as data: frames sampled as the recaption job samples them, picks drawn from the run's
    seed."""
    return [Stage("decode", FrameSampler,
                  dict(sampling=cfg.sampling, storage_options=cfg.storage_options, seed=cfg.run.seed),
                  dict(batch_size=cfg.optim.batch_size, compute=ray.data.ActorPoolStrategy(size=decode_concurrency),
                       num_cpus=decode_num_cpus))]


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_conversation(tokenizer, template: PromptTemplate, turns: dict, max_tokens: int
                          ) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation: -100 everywhere but the answers (and their end tokens).

    The text is the inference prompt exactly (``template.render``), each answer, and each later turn
    (``template.render_turn``). It is tokenised as one text, as captioning tokenises its prompt (BOS
    included), so the prompt's tokens are the ones the model sees at inference, and the labelled tokens are
    the answer's tokens as they follow the prompt: with a SentencePiece tokenizer the answer's first word
    keeps its own "▁" piece instead of gaining a stray leading-space token, as tokenising the answer on its
    own would give. Should a tokenizer merge characters across a prompt/answer boundary, the merged token
    counts as the answer's.
    """
    text = ""
    ids: list[int] = []
    labels: list[int] = []
    for number, (question, answer) in enumerate(turns["qa"]):
        text += template.render(question, system=turns["system"]) if number == 0 else template.render_turn(question)
        prompt_ids = tokenizer(text).input_ids
        text += template.render_answer(answer)
        full = tokenizer(text).input_ids
        keep = _shared_prefix(ids, full)
        answer_start = max(_shared_prefix(prompt_ids, full), keep)
        labels = labels[:keep] + [IGNORE_INDEX] * (answer_start - keep) + full[answer_start:]
        ids = full
    return ids[:max_tokens], labels[:max_tokens]


@dataclass
class Skipped:
    """Rows of a batch that cannot train: undecodable videos, and prompts so long that no answer token
    fits in ``max_text_tokens`` (they would make the loss NaN)."""

    videos: int = 0
    too_long: int = 0


def collate(batch: pa.Table, processor, max_tokens: int, num_frames: int, image_size: int,
            flip: bool = False, rng: np.random.Generator | None = None) -> tuple[dict | None, Skipped]:
    """A pyarrow batch -> model inputs (right-padded) for its usable rows, and what was skipped."""
    errors = batch.column(S.ERROR).to_pylist()
    skipped = Skipped(videos=sum(e is not None for e in errors))
    tokenizer = processor.tokenizer
    blobs = batch.column(S.FRAMES).to_pylist()
    all_turns = batch.column(TURNS).to_pylist()
    frames, seqs = [], []
    for i in (i for i, e in enumerate(errors) if e is None):
        ids, labels = tokenize_conversation(tokenizer, processor.template, json.loads(all_turns[i]), max_tokens)
        if all(label == IGNORE_INDEX for label in labels):
            skipped.too_long += 1
            continue
        video = frames_from_bytes(blobs[i], num_frames, image_size)
        if flip and rng is not None and rng.random() < 0.5:
            video = video[:, :, ::-1]  # the same horizontal flip for every frame of the video
        frames.append(np.ascontiguousarray(video))
        seqs.append((ids, labels))
    if not seqs:
        return None, skipped
    length = max(len(ids) for ids, _ in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    inputs = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "frames": np.stack(frames)}
    return inputs, skipped
