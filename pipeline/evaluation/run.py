"""Evaluate a captioner on a benchmark: the questions go through the recaption pipeline as a video list with
per-row prompts (resumable like any recaption job), then each answer is scored.

``OUT/`` holds what the recaption job writes (``parquet/``: the model's answers, ``_runs/``), the question list
it read (``questions.parquet``), one scored row per question (``predictions/predictions.parquet``) and
``metrics.json``. Rerunning the same command finishes what a killed run left and scores again; with another
model or prompt the questions are asked again (``output.recaption_changed``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from typing import Any

import pyarrow as pa

from pipeline import schema as S
from pipeline.evaluation import benchmarks as B
from pipeline.evaluation.judge import SCORES, Judge, JudgeConfig
from pipeline.evaluation.scoring import caption_metrics, check_option, predicted_letter
from pipeline.io.masking import public_uri
from pipeline.io.output_store import OutputStore, parquet_bytes
from pipeline.io.storage import get_fs, join, without_userinfo, write_atomic

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions/predictions.parquet"
METRICS_FILE = "metrics.json"
QUESTIONS_FILE = "questions.parquet"

# The columns of a prediction row, after the question's own (id, task, video, bounds).
_ANSWER_COLUMNS = (S.CAPTION, S.ERROR, S.ERROR_STAGE, S.ERROR_REASON, S.MODEL, S.PROMPT_ID, S.NUM_TOKENS,
                   S.TRUNCATED, S.RUN_ID) + S.FLAGS


def job_layers(bench: B.Benchmark, out: str) -> tuple[dict, dict]:
    """The job config layers of an evaluation: its defaults (under the user's YAML and flags) and what it fixes
    (over them): the question list as the input, ``out`` as the output, the per-row prompt columns."""
    names = bench.questions.column_names
    defaults = {"system_prompt": bench.system_prompt, "generation": {"max_new_tokens": bench.max_new_tokens}}
    fixed: dict[str, Any] = {
        "source": {"input": join(out, QUESTIONS_FILE), "format": "parquet", "id_column": S.VIDEO_ID},
        "output": {"output": out, "recaption_changed": True},
        "prompt_column": B.PROMPT if B.PROMPT in names else None,
        "reply_prefix_column": B.REPLY_PREFIX if B.REPLY_PREFIX in names else None,
    }
    return defaults, fixed


def runnable(questions: pa.Table) -> pa.Table:
    """The questions the pipeline can ask (not marked unsupported)."""
    if B.UNSUPPORTED not in questions.column_names:
        return questions
    mask = [u is None for u in questions.column(B.UNSUPPORTED).to_pylist()]
    return questions.filter(pa.array(mask)).drop_columns([B.UNSUPPORTED])


def limited(bench: B.Benchmark, count: int) -> B.Benchmark:
    """The benchmark's first ``count`` questions (a quick check)."""
    return dataclasses.replace(bench, questions=bench.questions.slice(0, count))


def evaluate(bench: B.Benchmark, cfg, judge: JudgeConfig | None = None, progress: bool = False) -> tuple[dict, bool]:
    """Ask every runnable question (the recaption job over the question list), score, write the predictions
    and ``metrics.json``. Returns ``(metrics, complete)``: ``complete`` is False when the job did not account for
    every question (its error says so; the questions it did answer are scored, the rest are ``not_run`` rows).

    Raises:
        what :func:`pipeline.runner.run_job` raises for a job that cannot start (busy output, resources, ...).
    """
    from pipeline.captioner import caption_identity
    from pipeline.runner import RunIncomplete, run_job

    out, storage_options = cfg.output.output, cfg.storage_options
    todo = runnable(bench.questions)
    write_questions(todo, out, storage_options)
    summary, complete = None, True
    if todo.num_rows:
        try:
            summary = run_job(cfg, progress=progress)
        except RunIncomplete as exc:
            logger.error("%s", exc)
            complete = False
    identity = caption_identity(cfg.model, cfg.prompt_text())
    rows = score(bench, read_answers(out, storage_options), judge, out, storage_options, identity)
    result = metrics(bench, rows, summary)
    write_results(out, rows, result, storage_options)
    return result, complete


def write_questions(questions: pa.Table, out: str, storage_options: dict | None = None) -> str:
    """The question list the pipeline reads, in the output folder: URIs keep what access needs (a signed URL's
    query) but not user info, which is never used for access (:func:`pipeline.io.storage.without_userinfo`)."""
    uri = join(out, QUESTIONS_FILE)
    if S.URI in questions.column_names:
        index = questions.column_names.index(S.URI)
        uris = [without_userinfo(u) if u is not None else None for u in questions.column(S.URI).to_pylist()]
        questions = questions.set_column(index, S.URI, pa.array(uris, pa.string()))
    write_atomic(uri, parquet_bytes(questions), storage_options)
    return uri


def read_answers(out: str, storage_options: dict | None = None) -> dict[str, dict]:
    """The newest output row of each question id."""
    store = OutputStore(out, storage_options)
    tables = [store.read_table(f) for f in store.parquet_files()]
    rows: dict[str, dict] = {}
    if not tables:
        return rows
    for row in pa.concat_tables(tables, promote_options="default").to_pylist():
        old = rows.get(row[S.VIDEO_ID])
        if old is None or (row[S.CREATED_AT] or 0) >= (old[S.CREATED_AT] or 0):
            rows[row[S.VIDEO_ID]] = row
    return rows


def _previous_judgements(out: str, storage_options: dict | None, judge_model: str) -> dict[tuple[str, str], dict]:
    """Scores an earlier scoring of this output gave, by (question id, reply): a rerun does not pay twice."""
    fs, path = get_fs(join(out, PREDICTIONS_FILE), storage_options)
    if not fs.exists(path):
        return {}
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            old = pq.read_table(f).to_pylist()
    except (OSError, pa.ArrowException) as exc:  # only a saving: without it every answer is judged again
        logger.warning("earlier judgements in %s are unreadable (%s): judging again", public_uri(path),
                       type(exc).__name__)
        return {}
    keys = ("question_id", "reply", *(f"score_{k}" for k in SCORES))
    return {(r["question_id"], r["reply"]): r for r in old
            if all(k in r for k in keys) and r.get("judge_model") == judge_model and r.get("judge_error") is None
            and r["reply"] is not None}


def score(bench: B.Benchmark, answers: dict[str, dict], judge: JudgeConfig | None = None, out: str | None = None,
          storage_options: dict | None = None, identity: tuple[str, str] | None = None) -> list[dict]:
    """One prediction row per question, in the benchmark's order: the model's reply and its score, or the
    error that kept the question from being answered. With ``identity`` (this run's model and prompt_id), an
    answer another model or prompt wrote does not count: the output keeps an older caption when the new model's
    attempt failed, and that caption is not this model's answer."""
    rows = []
    for q in bench.questions.to_pylist():
        answer = answers.get(q[S.VIDEO_ID])
        if answer is not None and identity is not None and (answer[S.MODEL], answer[S.PROMPT_ID]) != identity:
            answer = {S.ERROR: f"the output holds another model's or prompt's answer ({answer[S.MODEL]}), not this "
                               "run's: its attempt failed or has not run; rerun (--retry-errors for a failed video)",
                      S.ERROR_STAGE: S.STAGE_CAPTION, S.ERROR_REASON: "stale"}
        row = {"question_id": q[S.VIDEO_ID], "task": q[B.TASK], S.URI: public_uri(q[S.URI]),
               S.START_S: q.get(S.START_S), S.END_S: q.get(S.END_S), "question": q.get(B.QUESTION),
               "answer": q.get(B.ANSWER)}
        row.update({name: (answer or {}).get(name) for name in _ANSWER_COLUMNS})
        if q.get(B.UNSUPPORTED):
            row.update({S.ERROR: q[B.UNSUPPORTED], S.ERROR_STAGE: S.STAGE_SOURCE, S.ERROR_REASON: "unsupported"})
        elif answer is None:
            row.update({S.ERROR: "no answer in the output (the run did not reach this question)",
                        S.ERROR_STAGE: S.STAGE_SOURCE, S.ERROR_REASON: "not_run"})
        text = row.pop(S.CAPTION)
        row["reply"] = None if row[S.ERROR] else bench.reply_start + (text or "")
        rows.append(row)
    if bench.kind == "mcq":
        for row in rows:
            verdict = check_option(row["reply"], row["answer"]) if row["reply"] is not None else None
            row["followed"] = verdict.followed if verdict else None
            row["predicted"] = predicted_letter(verdict.option) if verdict and verdict.followed else None
            row["correct"] = verdict.correct if verdict else False
    elif bench.kind == "captions":
        predictions = {r["question_id"]: r["reply"] for r in rows if r["reply"] is not None}
        references = {r["question_id"]: json.loads(r["answer"]) for r in rows}
        _, each = caption_metrics(predictions, references)
        for row in rows:
            row.update(each.get(row["question_id"], {"bleu4": None, "rouge_l": None, "cider": None}))
    elif bench.kind == "vcg":
        _judge_rows(rows, bench, judge, out, storage_options)
    return rows


def _judge_rows(rows: list[dict], bench: B.Benchmark, judge: JudgeConfig | None, out: str | None,
                storage_options: dict | None) -> None:
    if judge is None:
        raise ValueError("the vcg benchmark needs a judge: give --judge-url and --judge-model")
    pairs = dict(zip(bench.questions.column(S.VIDEO_ID).to_pylist(),
                     bench.questions.column(B.PAIR).to_pylist())) if B.PAIR in bench.questions.column_names else {}
    by_id = {r["question_id"]: r for r in rows}
    previous = _previous_judgements(out, storage_options, judge.model) if out else {}
    todo, items = [], []
    for row in rows:
        row["judge_model"] = judge.model
        old = previous.get((row["question_id"], row["reply"]))
        if row["reply"] is None:
            row.update({f"score_{k}": None for k in SCORES}, judge_error=None, judge_error_reason=None)
        elif old is not None:
            row.update({f"score_{k}": old[f"score_{k}"] for k in SCORES}, judge_error=None, judge_error_reason=None)
        else:
            partner = by_id.get(pairs.get(row["question_id"]) or "")
            # Consistency needs both answers: without the partner's, this one is judged alone.
            pair = (partner["question"], partner["reply"]) if partner and partner["reply"] is not None else None
            todo.append(row)
            items.append({"question": row["question"], "answer": row["answer"], "prediction": row["reply"],
                          "pair": pair})
    if items:
        logger.info("judging %d answers with %s at %s", len(items), judge.model, public_uri(judge.url))
    for row, verdict in zip(todo, Judge(judge).score_all(items) if items else []):
        row.update({f"score_{k}": v for k, v in verdict.scores.items()}, judge_error=verdict.error,
                   judge_error_reason=verdict.reason)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _failure(row: dict) -> str | None:
    """Why a question has no score (``stage/reason``), or None: its video or model failed, or the judge did (an
    answer the judge never scored is no result either)."""
    if row[S.ERROR]:
        return f"{row[S.ERROR_STAGE]}/{row[S.ERROR_REASON]}"
    if row.get("judge_error") is not None:
        return f"judge/{row.get('judge_error_reason') or 'failed'}"
    return None


def _group_metrics(kind: str, rows: list[dict]) -> dict:
    errors = [r for r in rows if _failure(r)]
    out: dict[str, Any] = {"questions": len(rows), "answered": len(rows) - len(errors), "errors": len(errors)}
    if kind == "mcq":
        correct = sum(bool(r["correct"]) for r in rows)
        # Errors count as wrong, but with nothing answered there is no accuracy to report (not a 0.0).
        out.update(correct=correct, accuracy=round(100 * correct / len(rows), 2) if out["answered"] else None,
                   no_option=sum(r["followed"] is False for r in rows))
    elif kind == "captions":  # corpus scores of the group (CIDEr's weights come from the group's references)
        corpus, _ = caption_metrics({r["question_id"]: r["reply"] for r in rows if r["reply"] is not None},
                                    {r["question_id"]: json.loads(r["answer"]) for r in rows})
        out.update(corpus)
        out["flagged"] = {f: sum(bool(r[f]) for r in rows) for f in S.FLAGS}
    elif kind == "vcg":
        for key in SCORES:
            scored = [r[f"score_{key}"] for r in rows if r[f"score_{key}"] is not None]
            out[key] = {"score": _mean(scored), "acc": round(100 * sum(s > 3 for s in scored) / len(scored), 2)
                        if scored else None, "judged": len(scored)}
        out["judge_errors"] = sum(r["judge_error"] is not None for r in rows)
    return out


def metrics(bench: B.Benchmark, rows: list[dict], summary: dict | None = None) -> dict:
    """What ``metrics.json`` holds: per task and overall, counts and errors, and what was evaluated."""
    tasks: dict[str, list[dict]] = {}
    for row in rows:
        tasks.setdefault(row["task"], []).append(row)
    result: dict[str, Any] = {
        "benchmark": bench.name,
        "kind": bench.kind,
        "model": sorted({r[S.MODEL] for r in rows if r[S.MODEL]}),
        "prompt_id": sorted({r[S.PROMPT_ID] for r in rows if r[S.PROMPT_ID]}),
        "overall": _group_metrics(bench.kind, rows),
        "tasks": {task: _group_metrics(bench.kind, group) for task, group in tasks.items()},
        "errors_by_reason": dict(sorted(Counter(_failure(r) for r in rows if _failure(r)).items())),
    }
    if bench.kind == "mcq":
        result["accuracy_counts_errors_as_wrong"] = True
    if bench.kind == "captions":
        result["not_computed"] = {"meteor": "needs Java", "spice": "needs Java"}
    if summary is not None:
        result["run_id"] = summary["run_id"]
        result["engine"] = summary.get("engine")
        result["run"] = {k: summary["this_run"][k] for k in ("videos", "ok", "failed", "wall_s", "tokens_generated")}
    return result


def write_results(out: str, rows: list[dict], result: dict, storage_options: dict | None = None) -> None:
    table = pa.Table.from_pylist(rows)
    write_atomic(join(out, PREDICTIONS_FILE), parquet_bytes(table), storage_options)
    write_atomic(join(out, METRICS_FILE), json.dumps(result, indent=2, default=str).encode(), storage_options)


def failure(result: dict) -> str | None:
    """Why a run's metrics are no result, or None: no questions, or not one question scored (every one an
    error: a video, the model or the judge failed), with the failures by reason."""
    overall = result["overall"]
    if not overall["questions"]:
        return "no questions were evaluated"
    if overall["answered"]:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in result["errors_by_reason"].items())
    return f"no question could be scored: all {overall['questions']} failed ({reasons})"


def read_metrics(out: str, storage_options: dict | None = None) -> dict:
    """An evaluation's ``metrics.json``.

    Raises:
        FileNotFoundError: there is none. ValueError: it is not an evaluation's metrics (named).
    """
    uri = join(out, METRICS_FILE)
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "r") as f:
        try:
            data = json.load(f)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{public_uri(uri)} is not JSON: {str(exc)[:200]}") from None
    shape = {"benchmark": str, "kind": str, "model": list, "overall": dict, "tasks": dict}
    wrong = [k for k, t in shape.items() if not isinstance(data, dict) or not isinstance(data.get(k), t)]
    if not wrong and not all(isinstance(g, dict) for g in data["tasks"].values()):
        wrong = ["tasks"]
    if wrong:
        raise ValueError(f"{public_uri(uri)} is not an evaluation's metrics (missing or malformed: {wrong})")
    return data


def _headline(kind: str, group: dict) -> dict[str, float | None]:
    """The numbers a comparison shows for one group of a run's metrics."""
    if kind == "mcq":
        return {"accuracy": group.get("accuracy")}
    if kind == "captions":
        return {k: group.get(k) for k in ("bleu4", "rouge_l", "cider")}
    return {k: group[k].get("score") if isinstance(group.get(k), dict) else None for k in SCORES}


def compare(this: dict, other: dict) -> list[str]:
    """Per task and overall, this run's headline metrics against another run's (``other`` -> ``this``)."""
    if (this["benchmark"], this["kind"]) != (other["benchmark"], other["kind"]):
        raise ValueError(f"cannot compare a {this['benchmark']} run with a {other['benchmark']} run")
    kind = this["kind"]
    lines = [f"{this['benchmark']}: {', '.join(other['model']) or '?'} -> {', '.join(this['model']) or '?'}"]
    names = ["overall"] + sorted(set(this["tasks"]) | set(other["tasks"]))
    for name in names:
        a = other["overall"] if name == "overall" else other["tasks"].get(name)
        b = this["overall"] if name == "overall" else this["tasks"].get(name)
        if a is None or b is None:
            lines.append(f"  {name}: only in {'this run' if a is None else 'the other run'}")
            continue
        parts = []
        for key, new in _headline(kind, b).items():
            old = _headline(kind, a).get(key)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (new, old))
            delta = f"{new - old:+.4g}" if numbers else "n/a"
            parts.append(f"{key} {old} -> {new} ({delta})")
        lines.append(f"  {name}: " + "; ".join(parts))
    return lines


def format_metrics(result: dict) -> str:
    """The metrics for people: overall, then each task."""
    kind = result["kind"]

    def line(name: str, group: dict) -> str:
        numbers = ", ".join(f"{k} {v}" for k, v in _headline(kind, group).items())
        extra = f", {group['no_option']} without an option letter" if kind == "mcq" else ""
        counts = f"{group['questions']} question{'s' * (group['questions'] != 1)}, {group['errors']} error" + \
            "s" * (group["errors"] != 1)
        return f"  {name}: {numbers} ({counts}{extra})"

    lines = [f"{result['benchmark']} with {', '.join(result['model']) or 'no model output'}:",
             line("overall", result["overall"])]
    lines += [line(task, group) for task, group in result["tasks"].items()]
    if result["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in result["errors_by_reason"].items()))
    return "\n".join(lines)
