"""Benchmark files -> question tables: one row per question, in the recaption pipeline's list layout.

A question row is a video list row (``video_id`` is the question's id, ``uri``, optional ``start_s`` /
``end_s``) with the question's own prompt and reply prefix (per-row prompts of the caption stage) and what
the scorer needs (the task, the ground truth). Formats:

* ``mcq``: a JSON array or JSONL file of MVBench-style items ``{video, question, candidates, answer}`` with
  optional ``task``, ``start`` / ``end`` (seconds).
* ``mvbench``: the MVBench folder (``json/<task file>.json``, ``video/<source folder>/...``) and the
  reference's table of task -> file, video folder, storage kind and whether clip bounds apply.
* ``videomme``: Video-MME's Parquet (``question``, ``options``, ``answer``, ``videoID``, ``duration``).
* ``captions``: reference captions, a JSON object ``{video: caption}`` (or ``{video: [captions]}``), a JSON
  array / JSONL of ``{video, caption}``, or a CSV with ``video`` and ``caption`` columns.
* ``vcg``: Video-ChatGPT-style open questions ``{video_name, Q, A}``; ``{video_name, Q1, Q2, A}`` is a
  consistency pair (two rows, judged together).

The prompt wording is this project's own; the layout follows the reference (see ``../shared/reference``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from model.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline import schema as S
from pipeline.io.storage import get_fs, join

BENCHMARKS = ("mcq", "mvbench", "videomme", "captions", "vcg")

# Columns of a question table beyond the list's video_id / uri / start_s / end_s (kept in the output rows).
TASK = "eval_task"
PROMPT = "eval_prompt"  # the user turn of this question
REPLY_PREFIX = "eval_reply_prefix"  # what the model's reply is made to start with
ANSWER = "eval_answer"  # mcq: "(B) the answer"; vcg: the reference answer; captions: JSON list of references
QUESTION = "eval_question"  # the question as the benchmark states it (vcg's judge reads it)
PAIR = "eval_pair"  # vcg consistency: the id of the other question of the pair
UNSUPPORTED = "eval_unsupported"  # why this question cannot be run here (None: it can)

MCQ_SYSTEM_PROMPT = (
    "Watch the video closely: what happens and in which order, why it happens, how objects move and what "
    "people do and how they stand. Then choose the option that answers the question best."
)
MCQ_INSTRUCTION = "Answer with the letter of the best option."
MCQ_REPLY_PREFIX = "Best option:("  # the model continues after the open bracket with a letter
MCQ_REPLY_START = "("  # what the scorer puts back before the reply: "(" + "B) ..." reads "(B) ..."

OPEN_QA_SYSTEM_PROMPT = (
    "You are a video assistant. Answer the user's question about the video accurately and in detail, from "
    "what the frames show."
)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's questions and how to ask them: ``kind`` is how it is scored (``mcq``, ``captions``,
    ``vcg``); ``system_prompt``, ``max_new_tokens`` and ``reply_start`` are its defaults."""

    name: str
    kind: str
    questions: pa.Table
    system_prompt: str
    max_new_tokens: int
    reply_start: str = ""


# -- reading -------------------------------------------------------------------------------------------
def brief(value, items: int = 5, chars: int = 80) -> str:
    """``value`` as an error message may quote it: a list as its length and first ``items`` entries, text cut to
    ``chars`` characters (a 10,000-option item must not make a 79 KB message)."""
    if isinstance(value, (list, tuple)):
        shown = ", ".join(brief(v, items, 40) for v in value[:items])
        more = f", ... ({len(value)} in all)" if len(value) > items else ""
        return f"[{shown}{more}]"
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + f"... ({len(text)} characters)"


def _read_text(uri: str, storage_options: dict | None) -> str:
    try:
        with fsspec.open(uri, "r", encoding="utf-8", **(storage_options or {})) as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{uri}: not UTF-8 text (byte {exc.start})") from None


def read_items(uri: str, storage_options: dict | None = None) -> list[dict]:
    """A JSON array of objects, or JSONL (one object per line).

    Raises:
        ValueError: naming the file and the line or item that is not an object.
    """
    text = _read_text(uri, storage_options)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        except RecursionError:
            raise ValueError(f"{uri}: not JSON this reader can take (nested too deep)") from None
    else:
        items = _jsonl(uri, text)
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{uri}: item {k} is {type(item).__name__}, not an object")
    return items


def _jsonl(uri: str, text: str) -> list:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{uri}, line {number}: not JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError(f"{uri}, line {number}: nested too deep") from None
    return items


def _exists(uri: str, storage_options: dict | None) -> bool:
    fs, path = get_fs(uri, storage_options)
    return fs.exists(path)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "task"


def _resolve(video_root: str, video: str) -> str:
    return video if "://" in video or posixpath.isabs(video) else join(video_root, video)


def _content_ids(rows: list[dict]) -> None:
    """Each question's id gets a short hash of what is asked (video, bounds, prompt, answer): an edited question
    is a new question, asked again, never scored with an answer to its old text."""
    new = {}
    for row in rows:
        asked = json.dumps([row.get(k) for k in (S.URI, S.START_S, S.END_S, PROMPT, REPLY_PREFIX, ANSWER)])
        new[row[S.VIDEO_ID]] = f"{row[S.VIDEO_ID]}-{hashlib.sha1(asked.encode()).hexdigest()[:8]}"
    for row in rows:
        row[S.VIDEO_ID] = new[row[S.VIDEO_ID]]
        if row.get(PAIR):
            row[PAIR] = new[row[PAIR]]


def _table(rows: list[dict], uri: str = "the benchmark") -> pa.Table:
    """Question rows -> a table with fixed column types (every column present even when all null); ids made
    unique per content (:func:`_content_ids`)."""
    _unique_ids(rows, uri)
    _content_ids(rows)
    floats = (S.START_S, S.END_S)
    names = list(dict.fromkeys(name for row in rows for name in row)) or [S.VIDEO_ID, S.URI]
    return pa.table({name: pa.array([row.get(name) for row in rows], pa.float64() if name in floats else pa.string())
                     for name in names})


def _unique_ids(rows: list[dict], what: str) -> None:
    seen: set[str] = set()
    for row in rows:
        if row[S.VIDEO_ID] in seen:
            raise ValueError(f"{what}: two questions have the id {row[S.VIDEO_ID]!r}")
        seen.add(row[S.VIDEO_ID])


# -- multiple choice -----------------------------------------------------------------------------------
def letter(index: int) -> str:
    return chr(ord("A") + index)


def mcq_prompt(question: str, candidates: list[str]) -> str:
    """The user turn of a multiple-choice question: the question, the lettered options, the instruction."""
    options = "\n".join(f"({letter(i)}) {c}" for i, c in enumerate(candidates))
    return f"Question: {question.strip()}\nOptions:\n{options}\n{MCQ_INSTRUCTION}"


def _seconds(item: dict, key: str, where: str) -> float:
    value = item[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be a number of seconds, got {brief(value)}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}: {key} must be a finite number of seconds >= 0, got {brief(value)}")
    return seconds


def _mcq_row(item: dict, where: str, task: str, qid: str, video_root: str, bounds: bool) -> dict:
    missing = [k for k in ("video", "question", "candidates", "answer") if k not in item]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    if not isinstance(item["video"], str) or not item["video"].strip():
        raise ValueError(f"{where}: video must be a file name or path, got {brief(item['video'])}")
    candidates = [str(c) for c in item["candidates"]] if isinstance(item["candidates"], list) else None
    if not candidates or len(candidates) > 26:
        count = f"{len(item['candidates'])} options: " if isinstance(item["candidates"], list) else ""
        raise ValueError(f"{where}: candidates must be a list of 1 to 26 options, got {count}"
                         f"{brief(item['candidates'])}")
    answer = str(item["answer"])
    if answer not in candidates:
        raise ValueError(f"{where}: the answer {brief(answer)} is not one of the candidates "
                         f"{brief(candidates)}")
    row = {S.VIDEO_ID: qid, S.URI: _resolve(video_root, str(item["video"])), TASK: task,
           PROMPT: mcq_prompt(str(item["question"]), candidates), REPLY_PREFIX: MCQ_REPLY_PREFIX,
           ANSWER: f"({letter(candidates.index(answer))}) {answer}", QUESTION: str(item["question"])}
    if bounds and item.get("start") is not None and item.get("end") is not None:
        row[S.START_S], row[S.END_S] = _seconds(item, "start", where), _seconds(item, "end", where)
        if row[S.END_S] <= row[S.START_S]:
            raise ValueError(f"{where}: end ({row[S.END_S]}) must be after start ({row[S.START_S]})")
    return row


def mcq_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                  default_task: str = "all") -> Benchmark:
    """Multiple-choice questions from a JSON / JSONL file (MVBench's item fields)."""
    items = read_items(uri, storage_options)
    counters: dict[str, int] = {}
    rows = []
    for k, item in enumerate(items):
        task = str(item.get("task") or default_task)
        slug = _slug(task)  # numbered per slug: tasks named alike ("A b", "a-b") never share an id
        number = counters[slug] = counters.get(slug, -1) + 1
        rows.append(_mcq_row(item, f"{uri}: item {k}", task, f"{slug}/{number:05d}", video_root, True))
    return Benchmark("mcq", "mcq", _table(rows, uri), MCQ_SYSTEM_PROMPT, 100, MCQ_REPLY_START)


# task: (json file, video folder under the MVBench root, storage kind, clip bounds apply) as the reference has it
MVBENCH_TASKS: dict[str, tuple[str, str, str, bool]] = {
    "Action Sequence": ("action_sequence.json", "video/star/Charades_v1_480", "video", True),
    "Action Prediction": ("action_prediction.json", "video/star/Charades_v1_480", "video", True),
    "Action Antonym": ("action_antonym.json", "video/ssv2_video", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "video/Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": ("unexpected_action.json", "video/FunQA_test/test", "video", False),
    "Object Existence": ("object_existence.json", "video/clevrer/video_validation", "video", False),
    "Object Interaction": ("object_interaction.json", "video/star/Charades_v1_480", "video", True),
    "Object Shuffle": ("object_shuffle.json", "video/perception/videos", "video", False),
    "Moving Direction": ("moving_direction.json", "video/clevrer/video_validation", "video", False),
    "Action Localization": ("action_localization.json", "video/sta/sta_video", "video", True),
    "Scene Transition": ("scene_transition.json", "video/scene_qa/video", "video", False),
    "Action Count": ("action_count.json", "video/perception/videos", "video", False),
    "Moving Count": ("moving_count.json", "video/clevrer/video_validation", "video", False),
    "Moving Attribute": ("moving_attribute.json", "video/clevrer/video_validation", "video", False),
    "State Change": ("state_change.json", "video/perception/videos", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "video/nturgbd", "video", False),
    "Character Order": ("character_order.json", "video/perception/videos", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "video/vlnqa", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "video/tvqa/frames_fps3_hq", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "video/clevrer/video_validation", "video", False),
}


def mvbench_benchmark(root: str, video_root: str | None = None, storage_options: dict | None = None) -> Benchmark:
    """MVBench from its folder: each task file present under ``root/json`` (a task whose file is missing is
    left out, so a subset can be evaluated; none present is an error). Videos are under ``video_root``
    (default: ``root``) in the task's folder. Episodic Reasoning is stored as frame folders, which this
    pipeline does not decode: its questions become error rows (``source/unsupported``)."""
    video_root = video_root or root
    rows, found = [], False
    for task, (file_name, folder, kind, bounds) in MVBENCH_TASKS.items():
        uri = join(root, "json", file_name)
        if not _exists(uri, storage_options):
            continue
        found = True
        for k, item in enumerate(read_items(uri, storage_options)):
            row = _mcq_row(item, f"{uri}: item {k}", task, f"{_slug(task)}/{k:05d}", join(video_root, folder), bounds)
            if kind == "frame":
                row[UNSUPPORTED] = (f"source: {task} is stored as folders of JPEG frames, which this pipeline does "
                                    "not decode (video files only)")
            rows.append(row)
    if not rows and not found:
        raise FileNotFoundError(f"no MVBench task files under {join(root, 'json')} (expected e.g. "
                                f"{MVBENCH_TASKS['Action Sequence'][0]})")
    return Benchmark("mvbench", "mcq", _table(rows, root), MCQ_SYSTEM_PROMPT, 100, MCQ_REPLY_START)


_OPTION_LABEL = re.compile(r"^\s*\(?([A-Za-z])[.):]\s*")


def videomme_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                       extension: str = "mp4") -> Benchmark:
    """Video-MME from its Parquet file(s): one row per question (``question_id``, ``question``, ``options``
    such as ``"A. ..."``, ``answer`` letter, ``videoID``, ``duration`` class); the task is the duration class
    (short / medium / long), the video ``video_root/<videoID>.<extension>``."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{uri}: not a readable Parquet file ({str(exc)[:200]})") from None
    missing = [c for c in ("question", "options", "answer", "videoID", "duration") if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: Video-MME needs the columns {missing}; the file has {brief(table.column_names)}")
    rows = []
    for k, item in enumerate(table.to_pylist()):
        if not isinstance(item["options"], list):
            raise ValueError(f"{uri}: row {k}: options must be a list, got {brief(item['options'])}")
        # Options are stored labelled ("A. a cat"); they are shown lettered in order, as (A) a cat.
        options = [_OPTION_LABEL.sub("", str(o), count=1) for o in item["options"]]
        answer = str(item["answer"]).strip().upper()
        index = ord(answer) - ord("A") if len(answer) == 1 else -1
        if not 0 <= index < len(options):
            raise ValueError(f"{uri}: row {k}: the answer {brief(item['answer'])} is not the letter of one of its "
                             f"{len(options)} options")
        qid = str(item.get("question_id") or f"{item['videoID']}-{k}")
        rows.append({S.VIDEO_ID: qid, S.URI: _resolve(video_root, f"{item['videoID']}.{extension}"),
                     TASK: str(item["duration"]), PROMPT: mcq_prompt(str(item["question"]), options),
                     REPLY_PREFIX: MCQ_REPLY_PREFIX, QUESTION: str(item["question"]),
                     ANSWER: f"({answer}) {options[index]}"})
    return Benchmark("videomme", "mcq", _table(rows, uri), MCQ_SYSTEM_PROMPT, 100, MCQ_REPLY_START)


# -- captions and open questions -------------------------------------------------------------------------
def read_reference_captions(uri: str, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Video -> its reference captions, from JSON (an object or a list of ``{video, caption}``), JSONL or CSV."""
    if uri.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(_read_text(uri, storage_options)))
        try:
            if not reader.fieldnames or not {"video", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{uri}: a reference-caption CSV needs the columns video and caption, got "
                                 f"{brief(reader.fieldnames)}")
            items = list(reader)
        except csv.Error as exc:
            raise ValueError(f"{uri}, line {reader.line_num}: not CSV ({exc})") from None
    else:
        text = _read_text(uri, storage_options)
        try:  # one JSON object maps videos to captions; otherwise an array or JSONL of {video, caption}
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            data = None
        items = ([{"video": k, "caption": v} for k, v in data.items()] if isinstance(data, dict)
                 else read_items(uri, storage_options))
    references: dict[str, list[str]] = {}
    for k, item in enumerate(items):
        video, caption = item.get("video"), item.get("caption")
        captions = caption if isinstance(caption, list) else [caption]
        if not video or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"{uri}: item {k} needs a video and a non-empty caption (or list of captions)")
        references.setdefault(str(video), []).extend(c.strip() for c in captions)
    if not references:
        raise ValueError(f"{uri}: no reference captions")
    return references


def captions_benchmark(uri: str, video_root: str, storage_options: dict | None = None) -> Benchmark:
    """Caption every video that has reference captions, with the job's prompt (default: the recaption prompt)."""
    rows = [{S.VIDEO_ID: video, S.URI: _resolve(video_root, video), TASK: "captions", ANSWER: json.dumps(captions)}
            for video, captions in read_reference_captions(uri, storage_options).items()]
    return Benchmark("captions", "captions", _table(rows, uri), DEFAULT_SYSTEM_PROMPT, 400)


def vcg_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                  extensions: tuple[str, ...] = ("mp4", "mkv")) -> Benchmark:
    """Open questions: ``{video_name | video, Q | question, A | answer}``; with ``Q1`` and ``Q2`` a consistency
    pair (rows ``<id>/q1`` and ``<id>/q2``). Optional ``task`` (default: ``consistency`` for pairs, else
    ``generic``). A ``video_name`` without an extension gets the first of ``extensions`` that exists."""
    rows = []
    for k, item in enumerate(read_items(uri, storage_options)):
        where = f"{uri}: item {k}"
        video = item.get("video_name") or item.get("video")
        answer = item.get("A") or item.get("answer")
        pair = [item.get("Q1"), item.get("Q2")] if item.get("Q1") else None
        questions = pair or [item.get("Q") or item.get("question")]
        if not video or not answer or not all(questions):
            raise ValueError(f"{where}: needs video_name, A and Q (or Q1 and Q2)")
        path = _resolve(video_root, str(video))
        if not posixpath.splitext(path)[1]:
            candidates = [f"{path}.{e}" for e in extensions]
            path = next((c for c in candidates if _exists(c, storage_options)), candidates[0])
        task = str(item.get("task") or ("consistency" if pair else "generic"))
        base = f"{_slug(task)}/{k:05d}"
        ids = [f"{base}/q1", f"{base}/q2"] if pair else [base]
        for n, (qid, question) in enumerate(zip(ids, questions)):
            rows.append({S.VIDEO_ID: qid, S.URI: path, TASK: task, PROMPT: str(question), QUESTION: str(question),
                         ANSWER: str(answer), PAIR: ids[1 - n] if pair else None})
    return Benchmark("vcg", "vcg", _table(rows, uri), OPEN_QA_SYSTEM_PROMPT, 100)


def absolute(path: str) -> str:
    """A local path made absolute against the current directory (URIs as they are): the questions are read
    again by the pipeline from the output folder, where a relative path would point elsewhere."""
    return path if "://" in path else os.path.abspath(path)


def load_benchmark(name: str, data: str, video_root: str | None = None,
                   storage_options: dict | None = None) -> Benchmark:
    """The questions of benchmark ``name`` from ``data`` (a file, or MVBench's folder). Relative local paths
    (``data``, ``video_root``) are relative to the current directory.

    Raises:
        ValueError: an unknown benchmark, a malformed question (its file and position named), or no questions.
        FileNotFoundError: the data is missing.
    """
    loaders = {"mcq": mcq_benchmark, "videomme": videomme_benchmark, "captions": captions_benchmark,
               "vcg": vcg_benchmark}
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")
    data = absolute(data)
    video_root = absolute(video_root) if video_root else None
    if name == "mvbench":
        bench = mvbench_benchmark(data, video_root, storage_options)
    else:
        bench = loaders[name](data, video_root or posixpath.dirname(data.rstrip("/")), storage_options)
    if not bench.questions.num_rows:
        raise ValueError(f"{data}: no questions in this {name} benchmark")
    return bench
