"""Evaluation: benchmark files become question lists, replies are scored as the reference scores them, an LLM
judge is spoken to over HTTP, and a whole evaluation gives one prediction row per question with metrics that
follow from those rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import chat_reply, serve_posts
from model.prompts import PromptText, get_template, prompt_id
from pipeline import schema as S
from pipeline.evaluation import benchmarks as B
from pipeline.evaluation import run as E
from pipeline.evaluation.judge import JudgeConfig, JudgeReplyError, parse_caption_verdict, parse_score
from pipeline.evaluation.prompt_set import OWN
from pipeline.evaluation.scoring import caption_metrics, check_option, java_available, predicted_letter


# -- multiple-choice scoring ----------------------------------------------------------------------------
@pytest.mark.parametrize("reply, correct, followed", [
    ("(B) a dog", True, True),
    ("(b) A DOG", True, True),
    ("(B.", True, True),  # dots dropped: "(b" is inside "(b)"
    ("(B)a dog", True, True),  # no space: the answer's token "(b)" is inside the reply's
    ("(C) a cat", False, True),
    ("(Bed", False, True),  # a token with letters that is not the option
    ("(", False, False),  # nothing after the reply start
    ("(1) one", False, False),  # no option letter at all
    ("(hm, not sure", False, False),  # none of the letters a-g
])
def test_a_reply_is_right_when_its_first_token_is_the_answers_option(reply, correct, followed):
    verdict = check_option(reply, "(B) a dog")
    assert (verdict.correct, verdict.followed) == (correct, followed)


def test_the_predicted_letter_is_read_from_the_option_token():
    assert predicted_letter("(c)") == "C" and predicted_letter("(") is None


# -- caption metrics ------------------------------------------------------------------------------------
def test_caption_metrics_on_crafted_pairs():
    same = "a man rides a brown horse along the beach"
    scores, each = caption_metrics({"v1": same}, {"v1": [same]}, java=False)
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6) and scores["rouge_l"] == pytest.approx(1.0)
    # ROUGE-L by hand: the longest common subsequence of "a man rides a horse" and "a man rides a brown horse" is
    # 5 words: precision 5/5, recall 5/6, F with beta 1.2 = (1 + 1.44) P R / (R + 1.44 P).
    scores, _ = caption_metrics({"v1": "A man rides a horse."}, {"v1": ["a man rides a brown horse"]}, java=False)
    p, r = 1.0, 5 / 6
    assert scores["rouge_l"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p), abs=1e-6)
    scores, each = caption_metrics({"v1": "snow falls on red roofs", "v2": same},
                                   {"v1": ["a man rides a horse"], "v2": [same, "a rider on a horse at the sea"]},
                                   java=False)
    assert each["v1"]["rouge_l"] == 0.0 and each["v2"]["rouge_l"] == pytest.approx(1.0)
    assert scores["scored"] == 2 and scores["cider"] > 0 and scores["meteor"] is None and scores["tokenizer"] == "words"
    # An empty caption, or none at all (the video failed), is scored, as 0: it pulls the corpus down.
    scores, each = caption_metrics({"v1": "  ", "v2": same}, {"v1": ["x"], "v2": [same], "v3": ["y"]}, java=False)
    assert scores["scored"] == 3 and each["v1"]["rouge_l"] == each["v3"]["rouge_l"] == 0.0
    assert scores["rouge_l"] == pytest.approx(1 / 3)


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="the PTB tokenizer and METEOR need Java (.ci/run installs it)")
def test_caption_metrics_with_java_use_the_ptb_tokenizer_and_meteor():
    same = "A man rides a brown horse along the beach."
    scores, each = caption_metrics({"v1": same, "v2": "Snow\rfalls |||\u2028on roofs", "v3": ""},
                                   {"v1": [same], "v2": ["a man rides a horse"], "v3": ["rain"]})
    assert scores["tokenizer"] == "ptb" and scores["scored"] == 3
    assert each["v1"]["meteor"] > 0.9 and each["v3"]["meteor"] == 0.0 and each["v1"]["bleu4"] == pytest.approx(1.0)
    assert 0 < scores["meteor"] < 1
    # The PTB tokenizer drops punctuation and lower-cases: the same words in other clothes score as the same.
    scores, _ = caption_metrics({"v1": "a MAN, rides a brown horse -- along the beach"}, {"v1": [same]})
    assert scores["rouge_l"] == pytest.approx(1.0)


# -- benchmark files ------------------------------------------------------------------------------------
def _mcq_items(video_a: str, video_b: str) -> list[dict]:
    return [
        {"video": video_a, "question": "What moves?", "candidates": ["a dog", "a car", "nothing"], "answer": "a car",
         "task": "Moving Things"},
        {"video": video_b, "question": "Which colour?", "candidates": ["red", "blue"], "answer": "red",
         "task": "Colour", "start": 0.2, "end": 1.0},
        {"video": "missing.mp4", "question": "Is it day?", "candidates": ["yes", "no"], "answer": "no", "task": "Colour"},
        {"video": video_a, "question": "How many?", "candidates": ["one", "two"], "answer": "two",
         "task": "Moving Things"},
    ]


def test_mcq_questions_are_lettered_and_laid_out_like_the_reference(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in _mcq_items("a.mp4", "/abs/b.mp4")))
    bench = B.load_benchmark("mcq", str(path))
    rows = bench.questions.to_pylist()
    assert [r[B.TASK] for r in rows] == ["Moving Things", "Colour", "Colour", "Moving Things"]
    # The reference's layout (MVBenchDataset.qa_template, Conversation.user_query): the block right-stripped,
    # then a space and the post-query line.
    assert rows[0][B.PROMPT] == ("Question: What moves?\nOptions:\n(A) a dog\n(B) a car\n(C) nothing "
                                 + OWN["mcq.post_query"])
    assert rows[0][B.ANSWER] == "(B) a car" and rows[1][B.ANSWER] == "(A) red"
    assert rows[0][S.URI] == str(tmp_path / "a.mp4") and rows[1][S.URI] == "/abs/b.mp4"
    assert (rows[1][S.START_S], rows[1][S.END_S]) == (0.2, 1.0) and rows[0][S.START_S] is None
    assert len({r[S.VIDEO_ID] for r in rows}) == 4 and rows[0][S.VIDEO_ID].startswith("moving_things/00000-")
    # The reference's MVBench conversation: the video in its own user turn, then the question, then the
    # assistant's reply opened with the answer prefix.
    prompt = PromptText(query=rows[0][B.PROMPT], system="Watch.")
    rendered = get_template("vicuna").render(prompt.query, prompt.system, reply_prefix=rows[0][B.REPLY_PREFIX])
    assert rendered == ("Watch. USER: <image>\n USER: " + rows[0][B.PROMPT] + " ASSISTANT:" + OWN["mcq.answer_prompt"])
    # The same file as a JSON array gives the same questions; an edited question gets a new id.
    path.with_suffix(".json").write_text(json.dumps(_mcq_items("a.mp4", "/abs/b.mp4")))
    assert B.load_benchmark("mcq", str(path.with_suffix(".json"))).questions.equals(bench.questions)
    edited = _mcq_items("a.mp4", "/abs/b.mp4")
    edited[0]["question"] = "What moves fast?"
    path.write_text("\n".join(json.dumps(i) for i in edited))
    ids = B.load_benchmark("mcq", str(path)).questions.column(S.VIDEO_ID).to_pylist()
    assert ids[0] != rows[0][S.VIDEO_ID] and ids[1:] == [r[S.VIDEO_ID] for r in rows[1:]]


@pytest.mark.parametrize("item, message", [
    ({"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "z"}, "is not one of the candidates"),
    ({"video": "a.mp4", "question": "q", "candidates": [], "answer": "z"}, "candidates must be a list"),
    ({"video": "a.mp4", "candidates": ["x"], "answer": "x"}, "missing ['question']"),
])
def test_a_malformed_question_is_a_clear_error_naming_it(tmp_path, item, message):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([_mcq_items("a", "b")[0], item]))
    with pytest.raises(ValueError, match=r"q.json: item 1: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        B.load_benchmark("mcq", str(path))


def test_mvbench_folder_maps_tasks_to_video_folders_bounds_and_frame_tasks(tmp_path):
    (tmp_path / "json").mkdir()
    item = {"video": "x.mp4", "question": "q", "candidates": ["a", "b"], "answer": "b", "start": 1.0, "end": 2.0}
    for name in ("action_sequence.json", "action_antonym.json", "episodic_reasoning.json"):
        (tmp_path / "json" / name).write_text(json.dumps([item]))
    rows = {r[B.TASK]: r for r in B.load_benchmark("mvbench", str(tmp_path)).questions.to_pylist()}
    assert set(rows) == {"Action Sequence", "Action Antonym", "Episodic Reasoning"}
    assert rows["Action Sequence"][S.URI] == str(tmp_path / "video/star/Charades_v1_480/x.mp4")
    assert rows["Action Sequence"][S.START_S] == 1.0 and rows["Action Antonym"][S.START_S] is None  # bounds per task
    # Episodic Reasoning is stored as frame folders at 3 fps: read by the decode actors, not left out.
    assert rows["Episodic Reasoning"][S.FRAMES_FPS] == 3.0 and rows["Action Sequence"][S.FRAMES_FPS] is None
    assert rows["Episodic Reasoning"][S.URI] == str(tmp_path / "video/tvqa/frames_fps3_hq/x.mp4")
    assert B.UNSUPPORTED not in rows["Action Sequence"]
    with pytest.raises(FileNotFoundError, match="no MVBench task files"):
        B.load_benchmark("mvbench", str(tmp_path / "nothing"))


def test_videomme_parquet_gives_questions_per_duration_class(tmp_path):
    pq.write_table(pa.table({
        "question_id": ["001-1", "002-1"], "videoID": ["abc", "def"], "duration": ["short", "long"],
        "question": ["What is shown?", "Who speaks?"],
        "options": [["A. a cat", "B. a dog", "C. a bird", "D. a fish"], ["A. she", "B. he", "C. no one", "D. both"]],
        "answer": ["C", "A"]}), tmp_path / "test.parquet")
    rows = B.load_benchmark("videomme", str(tmp_path / "test.parquet"), str(tmp_path / "videos")).questions.to_pylist()
    assert [r[B.TASK] for r in rows] == ["short", "long"]
    assert rows[0][B.ANSWER] == "C" and "What is shown?\nA. a cat\nB. a dog\nC. a bird\nD. a fish\n" in rows[0][B.PROMPT]
    assert rows[1][S.URI] == str(tmp_path / "videos" / "def.mp4")


def test_reference_captions_from_json_or_csv(tmp_path):
    (tmp_path / "refs.json").write_text(json.dumps({"a.mp4": "a cat sleeps", "b.mp4": ["a dog", "a dog runs"]}))
    (tmp_path / "refs.csv").write_text("video,caption\na.mp4,a cat sleeps\nb.mp4,a dog\nb.mp4,a dog runs\n")
    for name in ("refs.json", "refs.csv"):
        bench = B.load_benchmark("captions", str(tmp_path / name))
        answers = {r[S.VIDEO_ID].rsplit("-", 1)[0]: json.loads(r[B.ANSWER]) for r in bench.questions.to_pylist()}
        assert answers == {"a.mp4": ["a cat sleeps"], "b.mp4": ["a dog", "a dog runs"]}
        assert B.PROMPT not in bench.questions.column_names  # captioned with the job's prompt


def test_an_answer_by_another_model_is_not_scored_as_this_runs(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps(_mcq_items("a.mp4", "b.mp4")[:2]))
    bench = B.load_benchmark("mcq", str(path))
    first, second = bench.questions.column(S.VIDEO_ID).to_pylist()
    answers = {first: {S.CAPTION: "B) a car", S.ERROR: None, S.MODEL: "tiny@new", S.PROMPT_ID: "p"},
               second: {S.CAPTION: "A) red", S.ERROR: None, S.MODEL: "tiny@old", S.PROMPT_ID: "p"}}
    rows = E.score(bench, answers, identity=("tiny@new", "p"))
    assert rows[0]["correct"] and rows[0][S.ERROR] is None
    assert rows[1]["correct"] is False and rows[1][S.ERROR_REASON] == "stale" and "tiny@old" in rows[1][S.ERROR]
    assert E.metrics(bench, rows)["model"] == ["tiny@new"]


# -- the judge ------------------------------------------------------------------------------------------
class _JudgeServer:
    """A chat-completions endpoint on loopback: answers with the scripted replies in turn (an int is an HTTP
    error status), recording every request."""

    def __init__(self, replies: list):
        self.replies, self.requests = list(replies), []

        def respond(request, raw):
            body = json.loads(raw)
            self.requests.append({"path": request.path, "auth": request.headers.get("Authorization"), "body": body})
            reply = self.replies.pop(0) if self.replies else "{'score': 1}"
            if isinstance(reply, int):  # an HTTP error status
                return reply, {"error": {"message": "busy"}}
            return 200, chat_reply(reply, body["model"])

        self.server = serve_posts(respond)
        self.url = f"{self.server.url}/v1"

    def close(self):
        self.server.shutdown()


def test_judge_replies_are_read_whole_as_the_reference_reads_them():
    """The reference reads a reply with ast.literal_eval (tasks/eval/vcgbench/__init__.py, check_ans): a Python
    or JSON dictionary, the whole reply; scores kept as given."""
    assert parse_score("{'score': 4.8}") == {"score": 4.8} and parse_score(' {"score": 3}\n') == {"score": 3.0}
    assert parse_caption_verdict("{'pred': 'yes', 'score': 4}") == {"pred": "yes", "score": 4.0}
    for bad in ("no scores", "Sure: {'score': 4}", "{'score': 9}", "{'score': '4'}", "{'score': True}", "[4]",
                "{'detail': 4}", "{'score': float('nan')}", "(" * 500):
        with pytest.raises(JudgeReplyError):
            parse_score(bad)
    for bad in ("{'pred': 'maybe', 'score': 4}", "{'score': 4}", "{'pred': 'yes'}"):
        with pytest.raises(JudgeReplyError):
            parse_caption_verdict(bad)


def test_vcg_answers_are_judged_per_dimension_over_http_with_bounded_retries(tmp_path, monkeypatch):
    items = [{"video_name": "v1", "Q": "What happens?", "A": "A man walks a dog."},
             {"video_name": "v2", "Q1": "Who is there?", "Q2": "Who appears?", "A": "Two children."},
             {"video_name": "v3", "Q": "Where?", "A": "In a park."}]
    (tmp_path / "vcg.json").write_text(json.dumps(items))
    bench = B.load_benchmark("vcg", str(tmp_path / "vcg.json"))
    ids = bench.questions.column(S.VIDEO_ID).to_pylist()
    answers = {qid: {S.CAPTION: reply, S.ERROR: None, S.MODEL: "tiny@x", S.PROMPT_ID: "p"}
               for qid, reply in zip(ids, ["A man and a dog.", "Two kids.", "Two children.", "A park."])}
    # Requests in order: the first answer's correctness (a 503, a reply that is not a dictionary, then 4.5),
    # detail, context; the pair's one consistency request; the last answer's three, each of them unusable.
    server = _JudgeServer([503, "I would say four.", "{'score': 4.5}", "{'score': 3}", "{'score': 4}",
                           "{'score': 5}"] + ["??"] * 9)
    monkeypatch.setenv("JUDGE_TEST_KEY", "secret-key-123")
    judge = JudgeConfig(server.url, "judge-model", api_key_env="JUDGE_TEST_KEY", max_retries=2, attempts=3,
                        concurrency=1)
    try:
        rows = E.score(bench, answers, judge)
    finally:
        server.close()
    assert len(server.requests) == 6 + 9
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret-key-123"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0
    system, user = (m["content"] for m in first["body"]["messages"])
    assert system == OWN["vcg.judge.correctness.system"]
    assert user == OWN["vcg.judge.correctness.user"].format(question="What happens?", answer="A man walks a dog.",
                                                            pred="A man and a dog.")
    assert server.requests[3]["body"]["messages"][0]["content"] == OWN["vcg.judge.detail.system"]
    pair = server.requests[5]["body"]["messages"][-1]["content"]
    assert pair == OWN["vcg.judge.consistency.user"].format(question="Who is there?", question1="Who appears?",
                                                            answer="Two children.", pred="Two kids.",
                                                            pred1="Two children.")
    assert (rows[0]["score_correctness"], rows[0]["score_detail"], rows[0]["score_context"]) == (4.5, 3.0, 4.0)
    assert rows[0]["score_temporal"] is None and rows[0]["score_consistency"] is None and rows[0]["judge_errors"] is None
    # One verdict per pair, on its first question's row.
    assert rows[1]["score_consistency"] == 5.0 and rows[2]["score_consistency"] is None
    # Unusable replies score 0 and count, as the reference scores a failed judgement.
    assert rows[3]["score_correctness"] == 0.0 and json.loads(rows[3]["judge_errors"])["detail"].startswith("after 3")
    result = E.metrics(bench, rows)
    assert result["overall"]["correctness"] == {"score": round((4.5 + 0) / 2, 4), "acc": 50.0, "judged": 2,
                                                "failed": 1, "no_answer": 0}
    pooled = [4.5, 3, 4, 5, 0, 0, 0]  # every (answer, dimension) verdict, the reference's averages
    assert result["overall"]["average"] == {"score": round(sum(pooled) / 7, 4),
                                            "acc": round(100 * 3 / 7, 2), "verdicts": 7}
    assert result["overall"]["judge_errors"] == 1 and result["overall"]["consistency"]["judged"] == 1
    assert "secret-key-123" not in json.dumps(result) + json.dumps(rows, default=str)


# -- end to end -----------------------------------------------------------------------------------------
def test_an_mcq_evaluation_gives_one_row_per_question_and_metrics_from_those_rows(ray_local, video_dir, tmp_path,
                                                                                    capsys):
    import yaml

    from jobs.evaluate import main

    data = tmp_path / "questions.jsonl"
    data.write_text("\n".join(json.dumps(i) for i in _mcq_items(f"{video_dir}/a.mp4", f"{video_dir}/b.mp4")))
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({"resources": {
        "batch_size": 2, "rows_per_file": 2, "decode_concurrency": 1, "decode_num_cpus": 0.5, "caption_num_cpus": 0.5}}))
    common = ["--benchmark", "mcq", "--data", str(data), "--model", "tiny", "--num-frames", "4",
              "--max-new-tokens", "4", "--config", str(tmp_path / "small.yaml"), "-q"]
    assert main(common + ["--output", str(tmp_path / "base")]) == 0
    out = tmp_path / "base"
    rows = pq.read_table(out / E.PREDICTIONS_FILE).to_pylist()
    result = json.loads((out / E.METRICS_FILE).read_text())
    assert len(rows) == 4 and len({r["question_id"] for r in rows}) == 4
    missing = [r for r in rows if r[S.ERROR]]
    assert [r["answer"] for r in missing] == ["(B) no"] and missing[0][S.ERROR_REASON] == "not_found"
    assert missing[0]["correct"] is False and missing[0]["reply"] is None
    for row in rows:  # the scores follow from the stored replies
        if row["reply"] is not None:
            assert row["correct"] == check_option(row["reply"], row["answer"]).correct
            assert row["reply"].startswith("(")
    by_task: dict = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    for task, group in by_task.items():
        assert result["tasks"][task]["correct"] == sum(r["correct"] for r in group)
        assert result["tasks"][task]["accuracy"] == round(100 * sum(r["correct"] for r in group) / len(group), 2)
    assert result["overall"]["questions"] == 4 and result["overall"]["errors"] == 1
    assert result["errors_by_reason"] == {f"{missing[0][S.ERROR_STAGE]}/not_found": 1}
    assert result["model"][0].startswith("tiny@") and len(result["prompt_id"]) == 1
    # Each question was its row's own prompt: the id is that of the layout with the question column in it.
    template = get_template("vicuna")
    layout = PromptText(system=OWN["mcq.system"], query_column=B.PROMPT, reply_prefix_column=B.REPLY_PREFIX)
    assert result["prompt_id"] == [prompt_id(template, layout.layout(template))]
    answers = pq.read_table(next((out / "parquet").glob("*.parquet"))).column_names
    assert B.PROMPT in answers and B.ANSWER in answers  # the raw answers keep their questions
    printed = capsys.readouterr().out
    assert "| task | accuracy | questions | errors |" in printed and "| Colour |" in printed and "| Avg |" in printed

    # Resumed: nothing is asked again, the same metrics come out; compared with itself, every delta is zero.
    assert main(common + ["--output", str(out), "--compare", str(out)]) == 0
    again = json.loads((out / E.METRICS_FILE).read_text())
    assert again["run"]["videos"] == 0 and again["overall"] == result["overall"]
    assert "(+0)" in capsys.readouterr().out


def test_a_caption_evaluation_scores_against_reference_captions(ray_local, video_dir, tmp_path):
    from pipeline.config import JobConfig

    (tmp_path / "refs.json").write_text(json.dumps({f"{video_dir}/a.mp4": "a video", f"{video_dir}/c.mkv": "a clip",
                                                    f"{video_dir}/gone.mp4": "nothing"}))
    bench = B.load_benchmark("captions", str(tmp_path / "refs.json"))
    defaults, fixed = E.job_layers(bench, str(tmp_path / "out"))
    cfg = JobConfig.from_dict(defaults, {"model": {"model": "tiny"}, "sampling": {"num_frames": 4},
                                         "generation": {"max_new_tokens": 6},
                                         "resources": {"batch_size": 2, "decode_concurrency": 1,
                                                       "decode_num_cpus": 0.5, "caption_num_cpus": 0.5}}, fixed)
    result, complete = E.evaluate(bench, cfg)
    rows = pq.read_table(tmp_path / "out" / E.PREDICTIONS_FILE).to_pylist()
    assert complete and len(rows) == 3 and sum(r[S.ERROR] is not None for r in rows) == 1
    replies = {r["question_id"]: r["reply"] for r in rows}  # the failed video's None scores 0
    references = {r["question_id"]: json.loads(r["answer"]) for r in rows}
    expected, _ = caption_metrics(replies, references)
    assert {k: result["overall"][k] for k in expected} == expected
    assert set(result["overall"]["flagged"]) == set(S.FLAGS) and result["paper_counterpart"] is None
    assert ("meteor" in result["not_computed"]) == (not java_available())


def test_every_evaluate_flag_sets_a_job_config_key():
    from jobs.evaluate import FLAG_KEYS, build_parser
    from jobs.flags import paths_of
    from pipeline.config import JobConfig

    assert set(FLAG_KEYS.values()) <= paths_of(JobConfig)
    dests = {a.dest for a in build_parser()._actions}
    assert set(FLAG_KEYS) <= dests


def test_a_vcg_evaluation_judges_the_pipelines_answers(ray_local, video_dir, tmp_path, monkeypatch, capsys):
    from jobs.evaluate import main

    items = [{"video_name": "a", "Q": "What happens?", "A": "Shapes move."},
             {"video_name": "b", "Q1": "What is shown?", "Q2": "What can be seen?", "A": "Colours."},
             {"video_name": "gone", "Q": "Where?", "A": "Nowhere."}]
    (tmp_path / "vcg.json").write_text(json.dumps(items))
    server = _JudgeServer(["{'score': 4}"] * 10)
    monkeypatch.setenv("MY_JUDGE_KEY", "judge-secret-987")
    try:
        code = main(["--benchmark", "vcg", "--data", str(tmp_path / "vcg.json"), "--video-root", video_dir,
                     "--model", "tiny", "--num-frames", "4", "--max-new-tokens", "4", "--batch-size", "2",
                     "--judge-url", server.url, "--judge-model", "judge-1", "--judge-api-key-env", "MY_JUDGE_KEY",
                     "--output", str(tmp_path / "out")])
    finally:
        server.close()
    assert code == 0
    rows = pq.read_table(tmp_path / "out" / E.PREDICTIONS_FILE).to_pylist()
    assert len(rows) == 4 and [r[S.ERROR] is not None for r in rows] == [False, False, False, True]
    assert rows[0][S.URI].endswith("a.mp4") and rows[1][S.URI].endswith("b.mp4")  # the extension that exists
    # The generic answer: correctness, detail, context; the pair: one consistency request; the missing video:
    # none (it scores 0).
    assert len(server.requests) == 4 and all(r["auth"] == "Bearer judge-secret-987" for r in server.requests)
    assert sum(r["body"]["messages"][0]["content"] == OWN["vcg.judge.consistency.system"]
               for r in server.requests) == 1
    result = json.loads((tmp_path / "out" / E.METRICS_FILE).read_text())
    assert result["overall"]["correctness"] == {"score": 2.0, "acc": 50.0, "judged": 2, "failed": 0, "no_answer": 1}
    assert result["overall"]["consistency"] == {"score": 4.0, "acc": 100.0, "judged": 1, "failed": 0,
                                                "no_answer": 0}
    assert result["tasks"]["generic"]["questions"] == 2 and result["tasks"]["consistency"]["questions"] == 2
    assert result["prompt_set"]["sources"] == ["own"] and not result["prompt_set"]["reference_strings"]
    assert "judge-secret-987" not in capsys.readouterr().out + json.dumps(result)

    # Scored again (a rerun): every verdict is reused, no request is sent.
    server = _JudgeServer([])
    try:
        assert main(["--benchmark", "vcg", "--data", str(tmp_path / "vcg.json"), "--video-root", video_dir,
                     "--model", "tiny", "--num-frames", "4", "--max-new-tokens", "4", "--batch-size", "2",
                     "--judge-url", server.url, "--judge-model", "judge-1", "--output", str(tmp_path / "out")]) == 0
    finally:
        server.close()
    assert server.requests == []
    assert json.loads((tmp_path / "out" / E.METRICS_FILE).read_text())["overall"] == result["overall"]


def test_an_mvbench_evaluation_reads_frame_folder_tasks_through_the_pipeline(ray_local, video_dir, tmp_path):
    """Episodic Reasoning's frame folders (3 fps, 00001.jpg on) are decoded by the decode actors like videos."""
    import shutil

    import yaml
    from PIL import Image

    from jobs.evaluate import main

    root = tmp_path / "MVBench"
    (root / "json").mkdir(parents=True)
    item = {"question": "What happens?", "candidates": ["a", "b"], "answer": "b"}
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps([
        {**item, "video": "clip1", "start": 1.0, "end": 5.0}, {**item, "video": "missing-clip"}]))
    (root / "json" / "action_antonym.json").write_text(json.dumps([{**item, "video": "a.mp4"}]))
    (root / "video/ssv2_video").mkdir(parents=True)
    shutil.copy(f"{video_dir}/a.mp4", root / "video/ssv2_video/a.mp4")
    frames = root / "video/tvqa/frames_fps3_hq/clip1"
    frames.mkdir(parents=True)
    for n in range(1, 25):
        Image.new("RGB", (48, 32), (n * 10, 40, 200 - n * 5)).save(frames / f"{n:05d}.jpg")
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({"resources": {
        "batch_size": 2, "decode_concurrency": 1, "decode_num_cpus": 0.5, "caption_num_cpus": 0.5}}))
    out = tmp_path / "out"
    assert main(["--benchmark", "mvbench", "--data", str(root), "--model", "tiny", "--num-frames", "4",
                 "--max-new-tokens", "3", "--config", str(tmp_path / "small.yaml"), "-q", "--output", str(out)]) == 0
    rows = {r["question_id"].split("-")[0]: r for r in pq.read_table(out / E.PREDICTIONS_FILE).to_pylist()}
    assert rows["episodic_reasoning/00000"][S.ERROR] is None and rows["episodic_reasoning/00000"]["reply"]
    assert rows["episodic_reasoning/00001"][S.ERROR_REASON] == "not_found"
    assert rows["action_antonym/00000"][S.ERROR] is None
    raw = {r[S.VIDEO_ID].split("-")[0]: r for r in pq.read_table(out / "parquet").to_pylist()}
    clip = raw["episodic_reasoning/00000"]
    # 24 frames; bounds 1 s - 5 s at 3 fps: frames 3 to 15, the middles of 4 segments of 3 frames.
    assert clip[S.DECODER] == "frames" and clip[S.FRAME_INDICES] == [4, 7, 10, 13] and clip[S.FRAME_COUNT] == 24
    result = json.loads((out / E.METRICS_FILE).read_text())
    assert result["tasks"][E.UNREADABLE]["questions"] == 1 and result["overall"]["questions"] == 3
