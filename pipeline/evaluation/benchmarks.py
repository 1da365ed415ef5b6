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
  consistency pair (two rows, judged together). A file, or the reference's folder of ``generic_qa.json``,
  ``temporal_qa.json`` and ``consistency_qa.json``.
* ``recaption``: videos with reference captions (as ``captions``), captioned with the recaption prompt and
  graded by a judge against the reference caption.

Every string sent to the model comes from the evaluation's prompt set (:mod:`pipeline.evaluation.prompt_set`:
the project's own wording by default); the layouts follow the reference's rules, so with the reference's
strings a prompt is byte for byte the reference's.
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

from pipeline import schema as S
from pipeline.evaluation.prompt_set import PromptSet
from pipeline.io.storage import get_fs, join

BENCHMARKS = ("mcq", "mvbench", "videomme", "captions", "vcg", "recaption")

# Columns of a question table beyond the list's video_id / uri / start_s / end_s (kept in the output rows).
TASK = "eval_task"
PROMPT = "eval_prompt"  # the user turn of this question
REPLY_PREFIX = "eval_reply_prefix"  # what the model's reply is made to start with
ANSWER = "eval_answer"  # mcq: "(B) the answer"; vcg: the reference answer; captions: JSON list of references
QUESTION = "eval_question"  # the question as the benchmark states it (vcg's judge reads it)
PAIR = "eval_pair"  # vcg consistency: the id of the other question of the pair
UNSUPPORTED = "eval_unsupported"  # why this question cannot be run here (None: it can)
DOMAIN = "eval_domain"  # Video-MME: the video's domain
SUB_CATEGORY = "eval_sub_category"  # Video-MME: the video's sub-category
TASK_TYPE = "eval_task_type"  # Video-MME: the question's task type

MVBENCH_FRAME_FPS = 3.0  # MVBench's frame folders hold 3 frames per second of video (the reference's rate)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's questions and how to ask them: ``kind`` is how it is scored (``mcq``, ``videomme``,
    ``captions``, ``vcg``, ``recaption``); ``system_prompt``, ``max_new_tokens`` and ``reply_start`` (put back
    before each reply for scoring) are its defaults; ``prompts`` the set its strings came from; ``query`` the
    one query of a benchmark without per-question prompts (captions, recaption)."""

    name: str
    kind: str
    questions: pa.Table
    system_prompt: str
    max_new_tokens: int
    reply_start: str = ""
    prompts: PromptSet = PromptSet()
    query: str | None = None


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
    floats = (S.START_S, S.END_S, S.FRAMES_FPS)
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


def mcq_prompt(question: str, candidates: list[str], post_query: str = "") -> str:
    """The user turn of a multiple-choice question, by the reference's rule (``MVBenchDataset.qa_template``
    and ``Conversation.user_query``): ``Question: ...``, ``Options:``, one ``(A) ...`` line per option, the
    block right-stripped, then a space and the post-query line (none when it is empty)."""
    block = f"Question: {question}\nOptions:\n" + "".join(f"({letter(i)}) {c}\n" for i, c in enumerate(candidates))
    return f"{block.rstrip()} {post_query}" if post_query else block.rstrip()


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


def _mcq_row(item: dict, where: str, task: str, qid: str, video_root: str, bounds: bool,
             prompts: PromptSet) -> dict:
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
    index = len(candidates) - 1 - candidates[::-1].index(answer)  # the last equal option, as the reference
    row = {S.VIDEO_ID: qid, S.URI: _resolve(video_root, str(item["video"])), TASK: task,
           PROMPT: mcq_prompt(str(item["question"]), candidates, prompts["mcq.post_query"]),
           REPLY_PREFIX: prompts["mcq.answer_prompt"], ANSWER: f"({letter(index)}) {answer}",
           QUESTION: str(item["question"])}
    if bounds and item.get("start") is not None and item.get("end") is not None:
        row[S.START_S], row[S.END_S] = _seconds(item, "start", where), _seconds(item, "end", where)
        if row[S.END_S] <= row[S.START_S]:
            raise ValueError(f"{where}: end ({row[S.END_S]}) must be after start ({row[S.START_S]})")
    return row


def _mcq(name: str, rows: list[dict], uri: str, prompts: PromptSet) -> Benchmark:
    return Benchmark(name, "mcq", _table(rows, uri), prompts["mcq.system"], 100, prompts["mcq.reply_start"], prompts)


def mcq_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                  prompts: PromptSet = PromptSet(), default_task: str = "all") -> Benchmark:
    """Multiple-choice questions from a JSON / JSONL file (MVBench's item fields)."""
    items = read_items(uri, storage_options)
    counters: dict[str, int] = {}
    rows = []
    for k, item in enumerate(items):
        task = str(item.get("task") or default_task)
        slug = _slug(task)  # numbered per slug: tasks named alike ("A b", "a-b") never share an id
        number = counters[slug] = counters.get(slug, -1) + 1
        rows.append(_mcq_row(item, f"{uri}: item {k}", task, f"{slug}/{number:05d}", video_root, True, prompts))
    return _mcq("mcq", rows, uri, prompts)


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


def mvbench_benchmark(root: str, video_root: str | None = None, storage_options: dict | None = None,
                      prompts: PromptSet = PromptSet()) -> Benchmark:
    """MVBench from its folder: each task file present under ``root/json`` (a task whose file is missing is
    left out, so a subset can be evaluated; none present is an error). Videos are under ``video_root``
    (default: ``root``) in the task's folder. Episodic Reasoning is stored as folders of JPEG frames at 3 fps:
    its rows name the folder and its rate (``frames_fps``), which the decode actors read as the reference
    does (:mod:`pipeline.frame_folders`)."""
    video_root = video_root or root
    rows, found = [], False
    for task, (file_name, folder, kind, bounds) in MVBENCH_TASKS.items():
        uri = join(root, "json", file_name)
        if not _exists(uri, storage_options):
            continue
        found = True
        for k, item in enumerate(read_items(uri, storage_options)):
            row = _mcq_row(item, f"{uri}: item {k}", task, f"{_slug(task)}/{k:05d}", join(video_root, folder), bounds,
                           prompts)
            if kind == "frame":
                row[S.FRAMES_FPS] = MVBENCH_FRAME_FPS
            rows.append(row)
    if not rows and not found:
        raise FileNotFoundError(f"no MVBench task files under {join(root, 'json')} (expected e.g. "
                                f"{MVBENCH_TASKS['Action Sequence'][0]})")
    return _mcq("mvbench", rows, root, prompts)


_OPTION_LABEL = re.compile(r"^\s*\(?([A-Za-z])[.):]")


def videomme_prompt(question: str, options: list[str], prompts: PromptSet) -> str:
    """Video-MME's user turn in the official order, one part per line: the pre-query line, the question, the
    options as ``A. ...``, the post-query line (an empty entry is left out)."""
    parts = [prompts["videomme.pre_query"], question, *options, prompts["videomme.post_query"]]
    return "\n".join(p for p in parts if p)


def videomme_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                       prompts: PromptSet = PromptSet(), extension: str = "mp4") -> Benchmark:
    """Video-MME from its Parquet file: one row per question (``question_id``, ``question``, ``options``
    stored as ``"A. ..."``, ``answer`` letter, ``videoID``, ``duration`` class, and, where present, ``domain``,
    ``sub_category`` and ``task_type``, by which results are broken down); the task is the duration class,
    the video ``video_root/<videoID>.<extension>``. Options are shown as stored when they carry their own
    letter, else labelled ``A. ``."""
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
        if not isinstance(item["options"], list) or not 1 <= len(item["options"]) <= 4:
            raise ValueError(f"{uri}: row {k}: options must be a list of 1 to 4 options (the official letter rule "
                             f"reads A-D), got {brief(item['options'])}")
        nulls = [c for c in ("question", "videoID", "duration", "answer") if item[c] is None]
        if nulls or any(o is None for o in item["options"]):
            raise ValueError(f"{uri}: row {k}: empty cells ({nulls or ['an option']})")
        # Options stored labelled in order ("A. a cat") are shown as they are; otherwise all are labelled.
        labels = [_OPTION_LABEL.match(str(o)) for o in item["options"]]
        labelled = all(m and m.group(1).upper() == letter(i) for i, m in enumerate(labels))
        options = [str(o) if labelled else f"{letter(i)}. {o}" for i, o in enumerate(item["options"])]
        answer = str(item["answer"]).strip().upper()
        index = ord(answer) - ord("A") if len(answer) == 1 else -1
        if not 0 <= index < len(options):
            raise ValueError(f"{uri}: row {k}: the answer {brief(item['answer'])} is not the letter of one of its "
                             f"{len(options)} options")
        qid = str(item.get("question_id") or f"{item['videoID']}-{k}")
        rows.append({S.VIDEO_ID: qid, S.URI: _resolve(video_root, f"{item['videoID']}.{extension}"),
                     TASK: str(item["duration"]), PROMPT: videomme_prompt(str(item["question"]), options, prompts),
                     QUESTION: str(item["question"]), ANSWER: answer,
                     DOMAIN: _text(item.get("domain")), SUB_CATEGORY: _text(item.get("sub_category")),
                     TASK_TYPE: _text(item.get("task_type"))})
    return Benchmark("videomme", "videomme", _table(rows, uri), prompts["videomme.system"], 100, "", prompts)


def _text(value) -> str | None:
    return None if value is None else str(value)


# -- captions and open questions -------------------------------------------------------------------------
def read_reference_captions(uri: str, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Video -> its reference captions, from JSON (an object or a list of ``{video | video_name, caption}``), JSONL
    or CSV."""
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
        video, caption = item.get("video") or item.get("video_name"), item.get("caption")
        captions = caption if isinstance(caption, list) else [caption]
        if not video or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"{uri}: item {k} needs a video and a non-empty caption (or list of captions)")
        references.setdefault(str(video), []).extend(c.strip() for c in captions)
    if not references:
        raise ValueError(f"{uri}: no reference captions")
    return references


def _with_extension(path: str, extensions: tuple[str, ...], storage_options: dict | None) -> str:
    """``path`` as it is when it has an extension, else with the first of ``extensions`` that exists (the first
    of them when none does: the pipeline then records the video as missing)."""
    if posixpath.splitext(path)[1]:
        return path
    candidates = [f"{path}.{e}" for e in extensions]
    return next((c for c in candidates if _exists(c, storage_options)), candidates[0])


def captions_benchmark(uri: str, video_root: str, storage_options: dict | None = None,
                       prompts: PromptSet = PromptSet(), name: str = "captions") -> Benchmark:
    """Caption every video that has reference captions, with the recaption prompt of the prompt set (the job's
    ``prompt`` / ``system_prompt`` settings over it). ``name="recaption"``: the same videos, graded by a judge
    against their first reference caption (the reference's recaption evaluation); a video named without an
    extension is looked up as ``.mp4``, ``.mkv``, ``.webm``, as there."""
    rows = [{S.VIDEO_ID: video, S.URI: _with_extension(_resolve(video_root, video), ("mp4", "mkv", "webm"),
                                                       storage_options),
             TASK: name, ANSWER: json.dumps(captions)}
            for video, captions in read_reference_captions(uri, storage_options).items()]
    return Benchmark(name, name, _table(rows, uri), prompts["recaption.system"], 400, "", prompts,
                     prompts["recaption.query"])


# The reference's VCG files (in its Benchmarking_QA folder) and the kind of question each holds.
VCG_FILES = {"generic_qa.json": "generic", "temporal_qa.json": "temporal", "consistency_qa.json": "consistency"}
# The judge's dimensions for each kind of question, as the reference scores them.
VCG_DIMENSIONS_BY_TASK = {"generic": ("correctness", "detail", "context"), "temporal": ("temporal",),
                          "consistency": ("consistency",)}


def vcg_dimensions(task: str) -> tuple[str, ...]:
    """The dimensions a VCG question of ``task`` is judged on (another task name: the generic ones)."""
    return VCG_DIMENSIONS_BY_TASK.get(task, VCG_DIMENSIONS_BY_TASK["generic"])


def _vcg_rows(uri: str, video_root: str, storage_options: dict | None, default_task: str,
              extensions: tuple[str, ...], prefix: str = "") -> list[dict]:
    rows = []
    for k, item in enumerate(read_items(uri, storage_options)):
        where = f"{uri}: item {k}"
        video = item.get("video_name") or item.get("video")
        answer = item.get("A") or item.get("answer")
        pair = [item.get("Q1"), item.get("Q2")] if item.get("Q1") or item.get("Q2") else None
        questions = pair or [item.get("Q") or item.get("question")]
        if not video or not answer or not all(questions):
            raise ValueError(f"{where}: needs video_name, A and Q (or Q1 and Q2)")
        path = _with_extension(_resolve(video_root, str(video)), extensions, storage_options)
        task = str(item.get("task") or ("consistency" if pair else default_task))
        if task == "consistency" and not pair:
            raise ValueError(f"{where}: a consistency question is a pair: it needs Q1 and Q2")
        base = f"{prefix}{_slug(task)}/{k:05d}"
        ids = [f"{base}/q1", f"{base}/q2"] if pair else [base]
        for n, (qid, question) in enumerate(zip(ids, questions)):
            rows.append({S.VIDEO_ID: qid, S.URI: path, TASK: task, PROMPT: str(question), QUESTION: str(question),
                         ANSWER: str(answer), PAIR: ids[1 - n] if pair else None})
    return rows


def vcg_benchmark(uri: str, video_root: str | None, storage_options: dict | None = None,
                  prompts: PromptSet = PromptSet(), extensions: tuple[str, ...] = ("mp4", "mkv")) -> Benchmark:
    """Open questions: ``{video_name | video, Q | question, A | answer}``; with ``Q1`` and ``Q2`` a consistency
    pair (rows ``<id>/q1`` and ``<id>/q2``, judged together). ``uri`` is a file (its questions are
    ``temporal`` when its name says so, else ``generic``; an item's ``task`` overrides), or the reference's
    folder holding any of :data:`VCG_FILES`. A ``video_name`` without an extension gets the first of
    ``extensions`` that exists."""
    if uri.endswith(".json") or uri.endswith(".jsonl"):
        task = "temporal" if "temporal" in posixpath.basename(uri) else "generic"
        rows = _vcg_rows(uri, video_root or posixpath.dirname(uri), storage_options, task, extensions)
    else:
        present = [(join(uri, f), t) for f, t in VCG_FILES.items() if _exists(join(uri, f), storage_options)]
        if not present:
            raise FileNotFoundError(f"no VCG question files under {uri} (expected any of {list(VCG_FILES)})")
        # Ids carry their file's name: an item whose task names another file's kind never meets that file's ids.
        rows = [row for path, task in present
                for row in _vcg_rows(path, video_root or uri, storage_options, task, extensions,
                                     f"{posixpath.splitext(posixpath.basename(path))[0]}/")]
    return Benchmark("vcg", "vcg", _table(rows, uri), prompts["vcg.system"], 100, "", prompts)


def absolute(path: str) -> str:
    """A local path made absolute against the current directory (URIs as they are): the questions are read
    again by the pipeline from the output folder, where a relative path would point elsewhere."""
    return path if "://" in path else os.path.abspath(path)


def load_benchmark(name: str, data: str, video_root: str | None = None,
                   storage_options: dict | None = None, prompts: PromptSet = PromptSet()) -> Benchmark:
    """The questions of benchmark ``name`` from ``data`` (a file, or MVBench's / VCG's folder), asked with the
    strings of ``prompts``. Relative local paths (``data``, ``video_root``) are relative to the current
    directory.

    Raises:
        ValueError: an unknown benchmark, a malformed question (its file and position named), or no questions.
        FileNotFoundError: the data is missing.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")
    data = absolute(data)
    video_root = absolute(video_root) if video_root else None
    if name == "mvbench":
        bench = mvbench_benchmark(data, video_root, storage_options, prompts)
    elif name == "vcg":
        bench = vcg_benchmark(data, video_root, storage_options, prompts)
    elif name in ("captions", "recaption"):
        bench = captions_benchmark(data, video_root or posixpath.dirname(data.rstrip("/")), storage_options,
                                   prompts, name)
    else:
        loader = {"mcq": mcq_benchmark, "videomme": videomme_benchmark}[name]
        bench = loader(data, video_root or posixpath.dirname(data.rstrip("/")), storage_options, prompts)
    if not bench.questions.num_rows:
        raise ValueError(f"{data}: no questions in this {name} benchmark")
    return bench
