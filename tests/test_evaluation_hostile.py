"""Evaluation under hostile conditions: a judge that echoes the credentials it is sent, a judge that fails for
every row, relative paths, empty and malformed benchmark files. The judge is a real HTTP server on loopback."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys

import pytest

from helpers import chat_reply, serve_posts
from pipeline import schema as S
from pipeline.evaluation import benchmarks as B
from pipeline.evaluation import run as E
from pipeline.evaluation.judge import Judge, JudgeConfig, JudgeRequest, parse_score

API_KEY = "sk-live-Hostile0123456789"
USER, PASSWORD = "alice", "pa55-w0rd!x"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (API_KEY, PASSWORD, f"{USER}:{PASSWORD}", BASIC)


class EchoJudge:
    """A chat-completions endpoint that quotes every header it was sent back to the client: as a 401 error
    body (``status=401``), or as the content of a 200 reply (``status=200``)."""

    def __init__(self, status: int):
        self.requests: list[str | None] = []  # the Authorization header of each request

        def respond(request, _body):
            headers = request.headers
            self.requests.append(headers.get("Authorization"))
            sent = "; ".join(f"{k}={v}" for k, v in headers.items())
            echo = f"you sent Authorization: {headers.get('Authorization')}; all headers: {sent}"
            if status == 401:
                return 401, {"error": {"message": f"invalid credentials. {echo}", "type": "auth", "raw": dict(headers)}}
            return 200, chat_reply(echo)

        self.server = serve_posts(respond)
        self.port = self.server.server_address[1]

    def url(self, userinfo: bool) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}/v1" if userinfo else f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.server.shutdown()


@pytest.fixture()
def stderr_logs(capfd):
    """Every log record (all loggers, DEBUG and up) also written to the process's stderr, as a job's
    ``logging.basicConfig`` handler writes it; yields a function returning what stderr got."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: capfd.readouterr().err
    root.removeHandler(handler)
    root.setLevel(level)


def _vcg(tmp_path, count: int = 2) -> B.Benchmark:
    items = [{"video_name": f"v{i}.mp4", "Q": f"What happens in {i}?", "A": "Shapes move."} for i in range(count)]
    (tmp_path / "vcg.json").write_text(json.dumps(items))
    return B.load_benchmark("vcg", str(tmp_path / "vcg.json"))


def _answers(bench: B.Benchmark) -> dict[str, dict]:
    return {qid: {S.CAPTION: "Some shapes move.", S.ERROR: None, S.MODEL: "tiny@x", S.PROMPT_ID: "p"}
            for qid in bench.questions.column(S.VIDEO_ID).to_pylist()}


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _folder_leaks(folder) -> dict[str, list[str]]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in SECRETS if s.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


# -- 1. the judge's credentials ------------------------------------------------------------------------
@pytest.mark.parametrize("status, userinfo", [(401, True), (401, False), (200, True), (200, False)])
def test_a_judge_echoing_its_credentials_leaves_no_trace_in_outputs_or_logs(tmp_path, monkeypatch, caplog,
                                                                             stderr_logs, status, userinfo):
    monkeypatch.setenv("HOSTILE_JUDGE_KEY", API_KEY)
    caplog.set_level(logging.DEBUG)
    bench = _vcg(tmp_path)
    server = EchoJudge(status)
    judge = JudgeConfig(server.url(userinfo), "judge-m", api_key_env="HOSTILE_JUDGE_KEY", max_retries=0,
                        attempts=1, concurrency=1)
    out = tmp_path / "out"
    try:
        rows = E.score(bench, _answers(bench), judge, str(out))
    finally:
        server.close()
    result = E.metrics(bench, rows)
    E.write_results(str(out), rows, result)
    # The server did get the credentials (so its echo quoted them), and the rows say why they have no scores.
    sent = server.requests
    assert sent and all(a == (f"Basic {BASIC}" if userinfo else f"Bearer {API_KEY}") for a in sent)
    assert all(r["judge_errors"] for r in rows) and all(r["score_correctness"] == 0.0 for r in rows)
    assert ("request failed" if status == 401 else "after 1 replies") in rows[0]["judge_errors"]
    assert _folder_leaks(out) == {}
    assert _leaks(caplog.text) == [] and _leaks(stderr_logs()) == []
    assert _leaks(json.dumps(rows, default=str) + json.dumps(result) + E.format_metrics(result)) == []
    assert "HTTP Request: POST" in caplog.text  # the client's own log lines were there, and masked


def test_judge_settings_that_cannot_work_are_refused_without_showing_the_password():
    with pytest.raises(ValueError) as info:
        JudgeConfig(f"ftp://{USER}:{PASSWORD}@host/v1", " ", concurrency=0)
    message = str(info.value)
    assert "http(s)://" in message and "model name is empty" in message and "concurrency" in message
    assert _leaks(message) == []


def test_a_judge_config_shows_its_url_without_the_password():
    shown = repr(JudgeConfig(f"http://{USER}:{PASSWORD}@judge:8000/v1", "m"))
    assert "http://judge:8000/v1" in shown and _leaks(shown) == []


def test_a_malformed_log_call_on_a_masked_logger_is_left_to_logging(caplog):
    from pipeline.io.masking import MaskingFilter, masked_logs

    bad = logging.LogRecord("openai", logging.INFO, __file__, 1, "%s and %s", ("only one",), None)
    assert MaskingFilter([API_KEY]).filter(bad) and bad.msg == "%s and %s"  # untouched: the handler reports it
    with masked_logs(["openai"], [API_KEY]):
        logging.getLogger("openai").warning("key %s", API_KEY)
    logging.getLogger("openai").warning("after the block: %s", "not masked")
    assert API_KEY not in caplog.text and "key ***" in caplog.text and "not masked" in caplog.text


def test_unreadable_earlier_judgements_are_judged_again_not_a_crash(tmp_path, caplog):
    bench = _vcg(tmp_path)
    (tmp_path / "out" / "predictions").mkdir(parents=True)
    (tmp_path / "out" / E.PREDICTIONS_FILE).write_text("not parquet")
    rows = E.score(bench, {}, JudgeConfig("http://127.0.0.1:9/v1", "m"), str(tmp_path / "out"))
    assert len(rows) == 2 and "unreadable" in caplog.text


def test_a_caption_benchmark_without_its_metrics_package_stops_before_the_run(tmp_path, monkeypatch, capsys):
    from jobs.evaluate import main

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # as if not installed: importing it fails
    code = main(["--benchmark", "captions", "--data", str(tmp_path / "refs.json"), "--output", str(tmp_path / "o")])
    assert code == 2 and "pycocoevalcap" in capsys.readouterr().err


def test_a_judge_reply_without_a_message_is_a_row_error_not_a_crash(tmp_path):
    server = serve_posts(lambda _request, _body: (200, {**chat_reply(""), "choices": []}))
    try:
        verdict = Judge(JudgeConfig(f"{server.url}/v1", "m", max_retries=0,
                                    attempts=2)).ask(JudgeRequest("s", "u", parse_score, "p"))
    finally:
        server.shutdown()
    assert verdict.reason == "bad_reply" and "no message" in verdict.error


def test_question_uris_are_stored_without_their_credentials(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"video": "s3://KEYID:SECRETVALUE@bucket/a.mp4", "question": "q",
                                 "candidates": ["x", "y"], "answer": "x"}]))
    bench = B.load_benchmark("mcq", str(path))
    rows = E.score(bench, {})
    assert rows[0][S.URI] == "s3://bucket/a.mp4"


# -- 2. rows the judge never scored are errors ----------------------------------------------------------
def test_answers_the_judge_failed_on_count_as_errors_and_the_run_as_failed(tmp_path):
    bench = _vcg(tmp_path, 3)
    rows = E.score(bench, {}, JudgeConfig("http://127.0.0.1:9/v1", "m"))  # nothing answered: no request
    qids = [r["question_id"] for r in rows]
    answers = _answers(bench)
    failed = json.dumps({d: "judge request failed: 401" for d in ("correctness", "detail", "context")})
    for row in rows:  # the model answered; the judge failed on two, scored one
        row.update({S.ERROR: None, S.ERROR_STAGE: None, S.ERROR_REASON: None, "reply": "Some shapes move.",
                    S.MODEL: answers[row["question_id"]][S.MODEL], "judge_errors": failed,
                    "judge_error_reason": "request_failed", "score_correctness": 0.0, "score_detail": 0.0,
                    "score_context": 0.0})
    rows[2].update(judge_errors=None, judge_error_reason=None, score_correctness=4.0, score_detail=4.0,
                   score_context=4.0)
    result = E.metrics(bench, rows)
    assert result["overall"]["errors"] == 2 and result["overall"]["answered"] == 1 and len(qids) == 3
    assert result["errors_by_reason"] == {"judge/request_failed": 2}
    assert E.failure(result) is None and "2 errors" in E.format_metrics(result)
    rows[2].update(judge_errors=failed, judge_error_reason="request_failed")
    result = E.metrics(bench, rows)
    assert result["overall"]["errors"] == 3
    assert E.failure(result) == "no question could be scored: all 3 failed (judge/request_failed 3)"
    assert "0 errors" not in E.format_metrics(result)


def test_accuracy_is_not_reported_when_no_question_was_answered(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"video": "gone.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"}]))
    bench = B.load_benchmark("mcq", str(path))
    result = E.metrics(bench, E.score(bench, {}))
    assert result["overall"]["accuracy"] is None and result["overall"]["errors"] == 1
    assert E.failure(result) == "no question could be scored: all 1 failed (source/not_run 1)"


@pytest.mark.slow
def test_an_evaluation_whose_judge_refuses_every_answer_fails_and_leaks_nothing(ray_local, video_dir, tmp_path,
                                                                               monkeypatch, caplog, stderr_logs):
    from jobs.evaluate import main

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HOSTILE_JUDGE_KEY", API_KEY)
    (tmp_path / "vcg.json").write_text(json.dumps([{"video_name": "a", "Q": "What happens?", "A": "Shapes move."},
                                                   {"video_name": "b", "Q": "What is shown?", "A": "Colours."}]))
    server = EchoJudge(401)
    out = tmp_path / "out"
    try:
        code = main(["--benchmark", "vcg", "--data", str(tmp_path / "vcg.json"), "--video-root", video_dir,
                     "--model", "tiny", "--num-frames", "4", "--max-new-tokens", "4", "--batch-size", "2",
                     "--judge-url", server.url(True), "--judge-model", "judge-1",
                     "--judge-api-key-env", "HOSTILE_JUDGE_KEY", "--output", str(out)])
    finally:
        server.close()
    logged = stderr_logs()
    assert len(server.requests) == 2 * 3 and code == 1  # two answers, three dimensions each
    assert "error: no question could be scored: all 2 failed (judge/request_failed 2)" in logged
    assert _folder_leaks(out) == {} and _leaks(caplog.text) == [] and _leaks(logged) == []
    result = json.loads((out / E.METRICS_FILE).read_text())
    assert result["overall"]["errors"] == 2 and result["overall"]["judge_errors"] == 2


# -- 3. paths and empty benchmarks ----------------------------------------------------------------------
def test_relative_data_and_video_root_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "q.json").write_text(json.dumps([{"video": "a.mp4", "question": "q",
                                                             "candidates": ["x", "y"], "answer": "x"}]))
    monkeypatch.chdir(tmp_path)
    uri = B.load_benchmark("mcq", "bench/q.json").questions.column(S.URI)[0].as_py()
    assert uri == str(tmp_path / "bench" / "a.mp4")
    uri = B.load_benchmark("mcq", "bench/q.json", "videos").questions.column(S.URI)[0].as_py()
    assert uri == str(tmp_path / "videos" / "a.mp4")


@pytest.mark.slow
def test_an_evaluation_with_relative_paths_finds_its_videos(ray_local, video_dir, tmp_path, monkeypatch):
    from jobs.evaluate import main

    (tmp_path / "q.jsonl").write_text(json.dumps({"video": "a.mp4", "question": "What moves?",
                                                  "candidates": ["a dog", "shapes"], "answer": "shapes"}))
    monkeypatch.chdir(tmp_path)
    videos = os.path.relpath(video_dir, tmp_path)
    code = main(["--benchmark", "mcq", "--data", "q.jsonl", "--video-root", videos, "--model", "tiny",
                 "--num-frames", "4", "--max-new-tokens", "4", "--batch-size", "1", "--output", "out", "-q"])
    result = json.loads((tmp_path / "out" / E.METRICS_FILE).read_text())
    assert code == 0 and result["overall"]["errors"] == 0 and result["errors_by_reason"] == {}


@pytest.mark.parametrize("text", ["[]", "", "\n\n"])
def test_an_empty_benchmark_file_is_an_error(tmp_path, capsys, text):
    from jobs.evaluate import main

    (tmp_path / "q.json").write_text(text)
    code = main(["--benchmark", "mcq", "--data", str(tmp_path / "q.json"), "--model", "tiny",
                 "--output", str(tmp_path / "out")])
    assert code == 2 and "no questions" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_folder_or_a_bad_limit_is_a_message_not_a_traceback(tmp_path, capsys):
    from jobs.evaluate import main

    code = main(["--benchmark", "mcq", "--data", str(tmp_path), "--model", "tiny", "--output", str(tmp_path / "o")])
    assert code == 2 and "cannot read" in capsys.readouterr().err
    (tmp_path / "q.json").write_text("[]")
    code = main(["--benchmark", "mcq", "--data", str(tmp_path / "q.json"), "--limit", "-1", "--output", "o"])
    assert code == 2 and "--limit" in capsys.readouterr().err


def test_a_compare_file_that_is_not_metrics_is_named_before_the_run(tmp_path, capsys):
    from jobs.evaluate import main

    (tmp_path / "q.json").write_text(json.dumps([{"video": "a.mp4", "question": "q", "candidates": ["x"],
                                                  "answer": "x"}]))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / E.METRICS_FILE).write_text(json.dumps({"benchmark": "mcq"}))
    code = main(["--benchmark", "mcq", "--data", str(tmp_path / "q.json"), "--model", "tiny",
                 "--output", str(tmp_path / "out"), "--compare", str(tmp_path / "other")])
    assert code == 2 and "is not an evaluation's metrics" in capsys.readouterr().err


# -- 4. bounded, located errors ---------------------------------------------------------------------------
def _load_error(tmp_path, items) -> str:
    path = tmp_path / "q.json"
    path.write_text(json.dumps(items) if not isinstance(items, str) else items)
    with pytest.raises(ValueError) as info:
        B.load_benchmark("mcq", str(path))
    return str(info.value)


def test_an_item_with_ten_thousand_candidates_gives_a_short_error(tmp_path):
    good = {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"}
    many = [f"option number {i}" for i in range(10_000)]
    message = _load_error(tmp_path, [good, {**good, "candidates": many, "answer": "x"}])
    assert len(message) < 600 and "q.json: item 1" in message and "10000" in message
    message = _load_error(tmp_path, [good, {**good, "candidates": many[:20], "answer": "z" * 5000}])
    assert len(message) < 600 and "q.json: item 1" in message and "(20 in all)" in message


@pytest.mark.parametrize("bounds, fragment", [
    ({"start": "abc", "end": 2}, "start must be a number of seconds, got 'abc'"),
    ({"start": [1], "end": 2}, "start must be a number of seconds"),
    ({"start": 0, "end": float("nan")}, "end must be a finite number"),
    ({"start": 3, "end": 2}, "end (2.0) must be after start (3.0)"),
])
def test_bad_clip_bounds_name_the_file_and_the_item(tmp_path, bounds, fragment):
    good = {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"}
    message = _load_error(tmp_path, json.dumps([good, {**good, **bounds}]))
    assert "q.json: item 1: " in message and fragment in message


@pytest.mark.parametrize("text, fragment", [
    ('[{"video": "a.mp4",', "q.json: not JSON"),
    ("[" * 100_000 + "]" * 100_000, "q.json: not JSON"),
    ('{"video": 5, "question": "q", "candidates": ["x"], "answer": "x"}', "q.json: item 0: video must be"),
])
def test_unreadable_benchmark_files_are_named(tmp_path, text, fragment):
    assert fragment in _load_error(tmp_path, text)


def test_a_file_that_is_not_utf8_or_not_parquet_is_named(tmp_path):
    (tmp_path / "q.json").write_bytes(b"[\xff\xfe]")
    with pytest.raises(ValueError, match="q.json: not UTF-8"):
        B.load_benchmark("mcq", str(tmp_path / "q.json"))
    (tmp_path / "v.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="v.parquet: not a readable Parquet file"):
        B.load_benchmark("videomme", str(tmp_path / "v.parquet"))


def test_brief_quotes_a_bounded_part():
    assert B.brief(list(range(10_000))) == "[0, 1, 2, 3, 4, ... (10000 in all)]"
    assert B.brief("x" * 1000).endswith("... (1002 characters)") and len(B.brief("x" * 1000)) < 120
