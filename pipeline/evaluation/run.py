"""Evaluate a captioner on a benchmark: the questions go through the recaption pipeline as a video list with
per-row prompts (resumable like any recaption job), then each answer is scored.

``OUT/`` holds what the recaption job writes (``parquet/``: the model's answers, ``_runs/``), the question list
it read (``questions.parquet``), one scored row per question (``predictions/predictions.parquet``) and
``metrics.json`` (their names and writes: :class:`~pipeline.evaluation.store.EvaluationStore`). Rerunning the
same command finishes what a killed run left and scores again; with another model or prompt the questions are
asked again (``output.recaption_changed``).
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
from pipeline.evaluation.judge import Judge, JudgeConfig, JudgeRequest, Verdict, parse_caption_verdict, parse_score
from pipeline.evaluation.prompt_set import VCG_DIMENSIONS as SCORES
from pipeline.evaluation.scoring import caption_metrics, check_option, predicted_letter, videomme_letter
from pipeline.io.masking import public_uri
from pipeline.evaluation.store import METRICS_FILE, PREDICTIONS_FILE, QUESTIONS_FILE, EvaluationStore
from pipeline.io.storage import without_userinfo
from pipeline.resume import preferred_rows, row_keys

logger = logging.getLogger(__name__)

# The columns of a prediction row, after the question's own (id, task, video, bounds).
_ANSWER_COLUMNS = (S.CAPTION, S.ERROR, S.ERROR_STAGE, S.ERROR_REASON, S.MODEL, S.PROMPT_ID, S.NUM_TOKENS,
                   S.TRUNCATED, S.RUN_ID) + S.FLAGS


def job_layers(bench: B.Benchmark, out: str) -> tuple[dict, dict]:
    """The job config layers of an evaluation: its defaults (under the user's YAML and flags) and what it fixes
    (over them): the question list as the input, ``out`` as the output, the per-row prompt columns."""
    names = bench.questions.column_names
    defaults: dict[str, Any] = {"system_prompt": bench.system_prompt,
                                "generation": {"max_new_tokens": bench.max_new_tokens}}
    if bench.query is not None:  # one query for every video (captions, recaption)
        defaults["prompt"] = bench.query
    fixed: dict[str, Any] = {
        "source": {"input": EvaluationStore(out).questions_uri(), "format": "parquet", "id_column": S.VIDEO_ID},
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
    if S.URI in questions.column_names:
        index = questions.column_names.index(S.URI)
        uris = [without_userinfo(u) if u is not None else None for u in questions.column(S.URI).to_pylist()]
        questions = questions.set_column(index, S.URI, pa.array(uris, pa.string()))
    return EvaluationStore(out, storage_options).write_questions(questions)


def read_answers(out: str, storage_options: dict | None = None) -> dict[str, dict]:
    """Each question id's answer: of its rows in the output, the one the output keeps
    (:data:`pipeline.resume.PREFERRED_ROW`: a caption beats an error, then the newest), so the answer read is the
    one :func:`pipeline.resume.reconcile` leaves, whether or not the run got as far as its repair. A caption another
    model or prompt wrote is no answer of this run: :func:`score` tells it by its ``model`` and ``prompt_id``."""
    store = EvaluationStore(out, storage_options)
    files = store.parquet_files()
    tables = [store.read_table(f) for f in files]
    if not tables:
        return {}
    keys = pa.concat_tables([row_keys(t, f) for t, f in zip(tables, files)])
    kept, _ = preferred_rows(keys)
    answers = pa.concat_tables(tables, promote_options="default").take(sorted(kept))
    return {row[S.VIDEO_ID]: row for row in answers.to_pylist()}


def score(bench: B.Benchmark, answers: dict[str, dict], judge: JudgeConfig | None = None, out: str | None = None,
          storage_options: dict | None = None, identity: tuple[str, str] | None = None) -> list[dict]:
    """One prediction row per question, in the benchmark's order: the model's reply and its score, or the
    error that kept the question from being answered. With ``identity`` (this run's model and prompt_id), an
    answer another model or prompt wrote does not count: the output keeps an older caption when the new model's
    attempt failed, and that caption is not this model's answer."""
    rows = []
    extra = [c for c in (B.DOMAIN, B.SUB_CATEGORY, B.TASK_TYPE) if c in bench.questions.column_names]
    for q in bench.questions.to_pylist():
        answer = answers.get(q[S.VIDEO_ID])
        if answer is not None and identity is not None and (answer[S.MODEL], answer[S.PROMPT_ID]) != identity:
            answer = {S.ERROR: f"the output holds another model's or prompt's answer ({answer[S.MODEL]}), not this "
                               "run's: its attempt failed or has not run; rerun (--retry-errors for a failed video)",
                      S.ERROR_STAGE: S.STAGE_CAPTION, S.ERROR_REASON: "stale"}
        row = {"question_id": q[S.VIDEO_ID], "task": q[B.TASK], S.URI: public_uri(q[S.URI]),
               S.START_S: q.get(S.START_S), S.END_S: q.get(S.END_S), "question": q.get(B.QUESTION),
               "answer": q.get(B.ANSWER)}
        row.update({c.removeprefix("eval_"): q.get(c) for c in extra})
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
            # The reference answers a video it cannot read in a bucket of its own, counted in the average.
            row["bucket"] = UNREADABLE if row[S.ERROR_STAGE] in _UNREADABLE_STAGES else row["task"]
    elif bench.kind == "videomme":
        for row in rows:
            row["predicted"] = videomme_letter(row["reply"])
            row["correct"] = row["predicted"] is not None and row["predicted"] == row["answer"]
    elif bench.kind == "captions":
        predictions = {r["question_id"]: r["reply"] for r in rows}
        references = {r["question_id"]: json.loads(r["answer"]) for r in rows}
        _, each = caption_metrics(predictions, references)
        for row in rows:
            row.update(each.get(row["question_id"], {"bleu4": None, "rouge_l": None, "cider": None, "meteor": None}))
    elif bench.kind in ("vcg", "recaption"):
        _judge_rows(rows, bench, judge, out, storage_options)
    return rows


UNREADABLE = "error_reading_video"  # the reference's bucket of MVBench questions whose video cannot be read
_UNREADABLE_STAGES = (S.STAGE_SOURCE, S.STAGE_READ, S.STAGE_DECODE)


def _requests(rows: list[dict], bench: B.Benchmark) -> list[tuple[dict, str, JudgeRequest]]:
    """Per row, its judge requests: ``(row, dimension, request)``. VCG: the dimensions of its kind of question
    (generic: correctness, detail, context; temporal; consistency: one request per pair, on the pair's first
    row); recaption: one per video against its first reference caption. A row without a reply gets its
    requests with an empty prediction (scored 0, never sent)."""
    prompts = bench.prompts
    out = []
    if bench.kind == "recaption":
        for row in rows:
            caption = json.loads(row["answer"])[0]
            out.append((row, "recaption", JudgeRequest(
                prompts["recaption.judge.system"],
                prompts["recaption.judge.user"].format(caption=caption, pred=row["reply"] or ""),
                parse_caption_verdict, row["reply"] or "")))
        return out
    pairs = dict(zip(bench.questions.column(S.VIDEO_ID).to_pylist(),
                     bench.questions.column(B.PAIR).to_pylist())) if B.PAIR in bench.questions.column_names else {}
    by_id = {r["question_id"]: r for r in rows}
    paired: set[str] = set()
    for row in rows:
        for dim in B.vcg_dimensions(row["task"]):
            entry = f"vcg.judge.{dim}"
            if dim == "consistency":
                partner = by_id.get(pairs.get(row["question_id"]) or "")
                if partner is None or partner["question_id"] in paired:
                    continue  # judged once per pair, on the row of its first question
                paired.add(row["question_id"])
                pred, pred1 = row["reply"] or "", partner["reply"] or ""
                user = prompts[f"{entry}.user"].format(question=row["question"], question1=partner["question"],
                                                       answer=row["answer"], pred=pred, pred1=pred1)
                prediction = pred if pred.strip() and pred1.strip() else ""  # both answers, or no verdict
            else:
                prediction = row["reply"] or ""
                user = prompts[f"{entry}.user"].format(question=row["question"], answer=row["answer"],
                                                       pred=prediction)
            out.append((row, dim, JudgeRequest(prompts[f"{entry}.system"], user, parse_score, prediction)))
    return out


def _judge_rows(rows: list[dict], bench: B.Benchmark, judge: JudgeConfig | None, out: str | None,
                storage_options: dict | None) -> None:
    """Each row's judge verdicts: ``score_<dimension>`` (0 when the judge failed or there was nothing to judge,
    as the reference scores them; None for a dimension the row is not judged on), ``judge_errors`` (why, per
    dimension), ``judge_keys`` (what each verdict depended on: a rerun reuses an equal verdict, never pays
    twice); recaption also ``judge_pred`` (yes / no)."""
    if judge is None:
        raise ValueError(f"the {bench.name} benchmark needs a judge: give --judge-url and --judge-model")
    dims = ("recaption",) if bench.kind == "recaption" else SCORES
    for row in rows:
        row.update({f"score_{d}": None for d in dims}, judge_model=judge.model, judge_errors=None,
                   judge_error_reason=None, judge_keys={})
        if bench.kind == "recaption":
            row["judge_pred"] = None
    requests = _requests(rows, bench)
    previous = _previous_judgements(out, storage_options) if out else {}
    todo = []
    for row, dim, request in requests:
        key = request.key(judge.model)
        row["judge_keys"][dim] = key
        if key in previous and request.prediction.strip():
            _record(row, dim, Verdict(previous[key]))
        else:
            todo.append((row, dim, request))
    sent = [t for t in todo if t[2].prediction.strip()]
    if sent:
        logger.info("judging: %d requests to %s at %s", len(sent), judge.model, public_uri(judge.url))
    client = Judge(judge) if sent else None
    verdicts = iter(client.ask_all([t[2] for t in sent]) if client else [])
    for row, dim, request in todo:
        verdict = next(verdicts) if request.prediction.strip() else Verdict(
            None, "no prediction to judge" if row[S.ERROR] is None else "the question has no answer (its error)",
            "no_prediction")
        _record(row, dim, verdict)
    for row in rows:
        row["judge_keys"] = json.dumps(row["judge_keys"], sort_keys=True) if row["judge_keys"] else None


def _record(row: dict, dim: str, verdict: Verdict) -> None:
    values = verdict.values or {}
    row[f"score_{dim}"] = float(values.get("score", 0.0))
    if "pred" in values or dim == "recaption":
        row["judge_pred"] = values.get("pred", "no")
    if verdict.error is not None:
        errors = json.loads(row["judge_errors"]) if row["judge_errors"] else {}
        errors[dim] = verdict.error
        row["judge_errors"] = json.dumps(errors, sort_keys=True)
        row["judge_error_reason"] = row["judge_error_reason"] or verdict.reason


def _previous_judgements(out: str, storage_options: dict | None) -> dict[str, dict]:
    """Verdicts an earlier scoring of this output gave, by request key (judge model and both messages)."""
    store = EvaluationStore(out, storage_options)
    try:
        table = store.read_predictions()
    except (OSError, pa.ArrowException) as exc:  # only a saving: without it every answer is judged again
        logger.warning("earlier judgements in %s are unreadable (%s): judging again",
                       public_uri(store.predictions_uri()), type(exc).__name__)
        return {}
    old = table.to_pylist() if table is not None else []
    found = {}
    for r in old:
        try:
            keys = json.loads(r.get("judge_keys") or "{}")
            errors = json.loads(r.get("judge_errors") or "{}")
        except (ValueError, TypeError):
            continue
        if not isinstance(keys, dict) or not isinstance(errors, dict):
            continue
        for dim, key in keys.items():
            score = r.get(f"score_{dim}")
            if dim not in errors and isinstance(score, (int, float)) and not isinstance(score, bool):
                found[key] = {"score": float(score), **({"pred": r["judge_pred"]} if r.get("judge_pred") else {})}
    return found


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 2) if whole else None


def _failure(row: dict) -> str | None:
    """Why a question has no score (``stage/reason``), or None: its video or model failed, or the judge did (an
    answer the judge never scored is no result either)."""
    if row[S.ERROR]:
        return f"{row[S.ERROR_STAGE]}/{row[S.ERROR_REASON]}"
    if row.get("judge_errors"):
        return f"judge/{row.get('judge_error_reason') or 'failed'}"
    return None


def _group_metrics(kind: str, rows: list[dict]) -> dict:
    errors = [r for r in rows if _failure(r)]
    out: dict[str, Any] = {"questions": len(rows), "answered": len(rows) - len(errors), "errors": len(errors)}
    if kind == "mcq":
        correct = sum(bool(r["correct"]) for r in rows)
        # Every question is in the denominator (errors count as wrong, as the reference counts them).
        # With nothing answered there is no accuracy to report (not a 0.0).
        out.update(correct=correct, accuracy=_percent(correct, len(rows)) if out["answered"] else None,
                   no_option=sum(r["followed"] is False for r in rows))
    elif kind == "videomme":
        # The official rule: only replies with a letter are in the denominator; the others are counted.
        lettered = [r for r in rows if r["predicted"] is not None]
        correct = sum(bool(r["correct"]) for r in lettered)
        out.update(correct=correct, accuracy=_percent(correct, len(lettered)), with_letter=len(lettered),
                   no_letter=sum(r["reply"] is not None and r["predicted"] is None for r in rows),
                   accuracy_all_questions=_percent(correct, len(rows)))
    elif kind == "captions":  # corpus scores of the group (CIDEr's weights come from the group's references)
        corpus, _ = caption_metrics({r["question_id"]: r["reply"] for r in rows},
                                    {r["question_id"]: json.loads(r["answer"]) for r in rows})
        out.update(corpus)
        out["flagged"] = {f: sum(bool(r[f]) for r in rows) for f in S.FLAGS}
    elif kind in ("vcg", "recaption"):
        dims = ("recaption",) if kind == "recaption" else SCORES
        pooled: list[float] = []
        for key in dims:
            judged = [r for r in rows if r[f"score_{key}"] is not None]
            scored = [r[f"score_{key}"] for r in judged]
            # Zeros that are no grade: the judge failed on an answer, or the question had no answer (its error).
            counts = {"failed": sum(not r[S.ERROR] and key in json.loads(r["judge_errors"] or "{}") for r in judged),
                      "no_answer": sum(bool(r[S.ERROR]) for r in judged)}
            pooled += scored
            if kind == "recaption":
                yes = sum(r["judge_pred"] == "yes" for r in judged)
                out.update(score=_mean(scored), acc=_percent(yes, len(scored)), judged=len(scored), **counts)
            else:
                out[key] = {"score": _mean(scored), "acc": _percent(sum(v > 3 for v in scored), len(scored)),
                            "judged": len(scored), **counts}
        if kind == "vcg":  # the reference's averages: over every (answer, dimension) verdict
            out["average"] = {"score": _mean(pooled), "acc": _percent(sum(v > 3 for v in pooled), len(pooled)),
                              "verdicts": len(pooled)}
        out["judge_errors"] = sum(r["judge_errors"] is not None and not r[S.ERROR] for r in rows)
    return out


def metrics(bench: B.Benchmark, rows: list[dict], summary: dict | None = None) -> dict:
    """What ``metrics.json`` holds: per task and overall, counts and errors, the protocol and prompt set (what
    makes the numbers comparable), and what was evaluated."""
    tasks: dict[str, list[dict]] = {}
    for row in rows:
        tasks.setdefault(row.get("bucket") or row["task"], []).append(row)
    result: dict[str, Any] = {
        "benchmark": bench.name,
        "kind": bench.kind,
        "protocol": PROTOCOLS[bench.kind],
        "prompt_set": bench.prompts.record(bench.name),
        "model": sorted({r[S.MODEL] for r in rows if r[S.MODEL]}),
        "prompt_id": sorted({r[S.PROMPT_ID] for r in rows if r[S.PROMPT_ID]}),
        "overall": _group_metrics(bench.kind, rows),
        "tasks": {task: _group_metrics(bench.kind, group) for task, group in tasks.items()},
        "errors_by_reason": dict(sorted(Counter(_failure(r) for r in rows if _failure(r)).items())),
    }
    if bench.kind == "videomme":
        for column in ("domain", "sub_category", "task_type"):
            groups: dict[str, list[dict]] = {}
            for row in rows:
                if row.get(column) is not None:
                    groups.setdefault(row[column], []).append(row)
            if groups:
                result[f"by_{column}"] = {k: _group_metrics("videomme", g) for k, g in sorted(groups.items())}
    if bench.kind == "captions":
        result["not_computed"] = {"spice": "downloads Stanford CoreNLP models at first use"}
        if result["overall"].get("tokenizer") != "ptb":
            result["not_computed"]["meteor"] = "needs Java (Debian: default-jre-headless); words split without it"
        result["paper_counterpart"] = None  # the PLLaVA paper reports no caption metrics
    if summary is not None:
        result["run_id"] = summary["run_id"]
        result["engine"] = summary.get("engine")
        result["run"] = {k: summary["this_run"][k] for k in ("videos", "ok", "failed", "wall_s", "tokens_generated")}
    return result


# How each kind of benchmark is scored (metrics.json says it, so a number is read with its rule).
PROTOCOLS = {
    "mcq": "reference MVBench: first token of '(' + reply against the answer's option (check_ans); every question "
           "in the denominator, unreadable videos in their own bucket and counted wrong",
    "videomme": "official Video-MME: first upper-case A-D of the reply; replies without one left out of the "
                "denominator and counted (no_letter); accuracy_all_questions counts them wrong",
    "captions": "BLEU-4, ROUGE-L, CIDEr, METEOR (pycocoevalcap) on PTB-tokenized text (words split where Java is "
                "missing, without METEOR); empty or missing captions score 0; no PLLaVA counterpart",
    "vcg": "reference VCG: one judge request per answer and dimension (generic: correctness, detail, context; "
           "temporal; consistency per pair); failures and empty answers score 0 and count; acc = score > 3; "
           "average over every verdict",
    "recaption": "reference recaption judge: one request per caption against its reference; failures score 0 "
                 "and 'no'; acc = share of 'yes'",
}


def write_results(out: str, rows: list[dict], result: dict, storage_options: dict | None = None) -> None:
    store = EvaluationStore(out, storage_options)
    store.write_predictions(pa.Table.from_pylist(rows))
    store.write_metrics(result)


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
    store = EvaluationStore(out, storage_options)
    uri = store.metrics_uri()
    data = store.read_metrics()
    shape = {"benchmark": str, "kind": str, "model": list, "overall": dict, "tasks": dict}
    wrong = [k for k, t in shape.items() if not isinstance(data, dict) or not isinstance(data.get(k), t)]
    if not wrong and not all(isinstance(g, dict) for g in data["tasks"].values()):
        wrong = ["tasks"]
    if wrong:
        raise ValueError(f"{public_uri(uri)} is not an evaluation's metrics (missing or malformed: {wrong})")
    return data


def _headline(kind: str, group: dict) -> dict[str, float | None]:
    """The numbers a comparison shows for one group of a run's metrics."""
    if kind in ("mcq", "videomme"):
        return {"accuracy": group.get("accuracy")}
    if kind == "captions":
        return {k: group.get(k) for k in ("bleu4", "rouge_l", "cider", "meteor")}
    if kind == "recaption":
        return {"score": group.get("score"), "acc": group.get("acc")}
    numbers = {k: group[k].get("score") if isinstance(group.get(k), dict) else None for k in SCORES}
    numbers["average"] = group["average"].get("score") if isinstance(group.get("average"), dict) else None
    return numbers


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


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def format_metrics(result: dict) -> str:
    """The metrics for people, as tables in the shape of the PLLaVA README's: per task with the average last
    (MVBench, Video-MME by duration), per dimension with the average (VCG); the counts that make a number
    comparable; and whether the prompt strings were the reference's."""
    kind = result["kind"]
    lines = [f"{result['benchmark']} with {', '.join(result['model']) or 'no model output'}:"]
    names = list(_headline(kind, result["overall"]))
    if kind == "vcg":
        lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                  "| " + " | ".join(_cell(v) for v in _headline(kind, result["overall"]).values()) + " |"]
        count = result["overall"]
        lines.append(f"  {count['questions']} question{'s' * (count['questions'] != 1)}, {count['errors']} error"
                     + "s" * (count["errors"] != 1))
    else:
        groups = {**result["tasks"], "Avg": result["overall"]}
        lines += ["| task | " + " | ".join(names) + " | questions | errors |", "|---|" + "---|" * (len(names) + 2)]
        for name, group in groups.items():
            lines.append(f"| {name} | " + " | ".join(_cell(v) for v in _headline(kind, group).values())
                         + f" | {group['questions']} | {group['errors']} |")
    overall = result["overall"]
    if kind == "mcq":
        lines.append(f"  {overall['no_option']} replies named no option (counted wrong)")
    if kind == "videomme":
        lines.append(f"  {overall['no_letter']} replies without a letter, left out of the accuracy (official rule); "
                     f"counting them wrong: {_cell(overall['accuracy_all_questions'])}")
    if kind in ("vcg", "recaption"):
        lines.append(f"  {overall['judge_errors']} answers with a judge failure (scored 0, as the reference)")
    if result["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in result["errors_by_reason"].items()))
    prompt_set = result.get("prompt_set") or {}
    if prompt_set.get("reference_strings"):
        lines.append("  prompt strings: the reference's (comparable with the PLLaVA paper's protocol)")
    elif prompt_set:
        lines.append(f"  prompt strings: {', '.join(prompt_set.get('sources') or ['own'])} (not the reference's: "
                     "give --reference-repo for numbers comparable with the paper's)")
    return "\n".join(lines)


# The file names are the store's, also reachable here (E.PREDICTIONS_FILE) for the evaluation's callers.
__all__ = ["METRICS_FILE", "PREDICTIONS_FILE", "QUESTIONS_FILE", "PROTOCOLS", "UNREADABLE", "compare", "evaluate",
           "failure", "format_metrics", "job_layers", "limited", "metrics", "read_answers", "read_metrics", "runnable",
           "score", "write_questions", "write_results"]
