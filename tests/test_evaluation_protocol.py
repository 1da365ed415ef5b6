"""The reference's evaluation protocol: prompt sets (own, a YAML file, a reference checkout read with ast) and the
bytes they render to; MVBench, Video-MME, VCG and recaption scoring rules on tables of crafted replies, each
rule re-implemented here from its description with the file it comes from named.

The "reference checkout" is written by the tests: the reference's file layout and Python structure (module
constants, conversation objects, functions with locals and keyword arguments, dict literals) holding this
test's own words; nothing of the reference is in this project."""

from __future__ import annotations

import json
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import chat_reply, serve_posts
from model.prompts import PromptText, get_template
from pipeline import schema as S
from pipeline.evaluation import benchmarks as B
from pipeline.evaluation import run as E
from pipeline.evaluation.judge import JudgeConfig
from pipeline.evaluation.prompt_set import OWN, REFERENCE, USED_BY, PromptSetError, load_prompt_set, read_reference
from pipeline.evaluation.scoring import check_option, videomme_letter

# The fixture checkout's strings (this test's words). Note the trailing newlines: system texts that end in one
# keep it in the rendered prompt.
FIX = {
    "mcq.system": "Look at the clip and pick one.\n",
    "mcq.post_query": "\nJust the option.",
    "mcq.answer_prompt": "Choice:(",
    "mcq.reply_start": "(",
    "vcg.system": "You answer questions on clips.",
    "recaption.system": "You caption clips.\nBe exact.\n",
    "recaption.query": "Caption this clip.\n",
    "recaption.judge.system": "Grade captions.",
    "recaption.judge.user": "Ref: {caption}\nGot: {pred}\nDict with pred and score, like {{'pred': 'no', 'score': 1}}.",
}
for _dim, _name in (("correctness", "correctness"), ("detail", "detailed_orientation"), ("context", "context"),
                    ("temporal", "temporal"), ("consistency", "consistency")):
    FIX[f"vcg.judge.{_dim}.system"] = f"Grade {_name}."
    FIX[f"vcg.judge.{_dim}.user"] = (f"Q: {{question}}\nA: {{answer}}\nP: {{pred}}\nGive {_name} as {{{{'score': 2}}}}."
                                     if _dim != "consistency" else
                                     "Q1: {question}\nQ2: {question1}\nA: {answer}\nP1: {pred}\nP2: {pred1}\n"
                                     "Give {{'score': 2}}.")


def write_reference_checkout(root, strings: dict[str, str] = FIX) -> str:
    """The reference's files and structure, holding ``strings``."""
    def write(path: str, text: str) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))

    r = {k: repr(v) for k, v in strings.items()}
    vcg = ", ".join(f"{name!r}: {{'system': {r[f'vcg.judge.{dim}.system']}, 'user': {r[f'vcg.judge.{dim}.user']}}}"
                    for dim, name in (("temporal", "temporal"), ("context", "context"),
                                      ("detail", "detailed_orientation"), ("correctness", "correctness"),
                                      ("consistency", "consistency")))
    write("tasks/eval/eval_utils.py", f"""
        class Conversation:
            def __init__(self, **kw):
                self.kw = kw

        SYSTEM_MVBENCH = {r['mcq.system']}
        conv_eval_vcg = Conversation(system={r['vcg.system']}, roles=("USER: ", "ASSISTANT:"))
        SYSTEM_RECAPTION = {r['recaption.system']}
        """)
    write("tasks/eval/mvbench/pllava_eval_mvbench.py", f"""
        def infer_mvbench(model, example, answer_prompt=None, return_prompt=None):
            return None

        def run(rank, args):
            pre_query_prompt = None
            post_query_prompt = {r['mcq.post_query']}
            for example in []:
                infer_mvbench(None, example, answer_prompt={r['mcq.answer_prompt']},
                              return_prompt={r['mcq.reply_start']})
        """)
    write("tasks/eval/vcgbench/__init__.py", f"""
        from collections import OrderedDict
        sub_task_type2chatgpt_contents = OrderedDict({{{vcg}}})
        """)
    write("tasks/eval/recaption/__init__.py", f"""
        from collections import OrderedDict
        task_type2chatgpt_contents = OrderedDict({{'Panda70M': {{'system': {r['recaption.judge.system']},
                                                                'user': {r['recaption.judge.user']}}}}})
        """)
    write("tasks/eval/recaption/pllava_recaption.py", f"""
        def infer_recaption(model, data_sample):
            query = ({r['recaption.query']})
            return query
        """)
    return str(root)


# -- prompt sets ----------------------------------------------------------------------------------------
def test_a_reference_checkout_gives_every_entry_it_holds(tmp_path):
    checkout = write_reference_checkout(tmp_path / "PLLaVA")
    assert read_reference(checkout) == {name: FIX[name] for name in REFERENCE}
    prompts = load_prompt_set(reference_repo=checkout)
    for benchmark in ("mvbench", "vcg", "recaption"):
        record = prompts.record(benchmark)
        assert record["reference_strings"] and set(record["entries"]) == set(USED_BY[benchmark])
    # Video-MME is not in the reference checkout: its strings stay the project's own, and say so.
    assert not prompts.record("videomme")["reference_strings"]
    assert prompts.record("videomme")["entries"]["videomme.pre_query"]["origin"] == "own"


def test_a_checkout_that_moved_on_names_each_entry_it_cannot_find(tmp_path):
    checkout = write_reference_checkout(tmp_path / "PLLaVA")
    path = tmp_path / "PLLaVA/tasks/eval/mvbench/pllava_eval_mvbench.py"
    path.write_text(path.read_text().replace("post_query_prompt =", "post_prompt ="))
    (tmp_path / "PLLaVA/tasks/eval/recaption/pllava_recaption.py").write_text(
        "def infer_recaption(m, d):\n    query = f'{d} clip'\n")
    with pytest.raises(PromptSetError) as info:
        read_reference(checkout)
    message = str(info.value)
    assert "mcq.post_query (tasks/eval/mvbench/pllava_eval_mvbench.py)" in message
    assert "recaption.query" in message and "not a literal string" in message
    with pytest.raises(PromptSetError, match="not a checkout"):
        read_reference(str(tmp_path))


def test_a_prompt_file_replaces_entries_and_is_checked(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("mcq.system: |\n  Pick well.\nmcq.answer_prompt: 'Pick:('\n")
    prompts = load_prompt_set(str(path))
    assert prompts["mcq.system"] == "Pick well.\n" and prompts["mcq.answer_prompt"] == "Pick:("
    assert prompts["mcq.post_query"] == OWN["mcq.post_query"]
    entries = prompts.record("mvbench")["entries"]
    assert entries["mcq.system"]["origin"] == "file" and entries["mcq.post_query"]["origin"] == "own"
    # A file over a checkout: the file wins for its entries.
    checkout = write_reference_checkout(tmp_path / "PLLaVA")
    both = load_prompt_set(str(path), checkout)
    assert both["mcq.system"] == "Pick well.\n" and both["mcq.post_query"] == FIX["mcq.post_query"]
    assert not both.record("mvbench")["reference_strings"]
    for text, message in [("mcq.sytem: x\n", "unknown prompt entry 'mcq.sytem'"), ("mcq.system: 3\n", "string"),
                          ("- a\n", "mapping"), ("a: [\n", "not YAML"),
                          ("vcg.judge.detail.user: 'Q: {question}'\n", "must use the fields"),
                          ("vcg.judge.detail.user: '{pred} {video}'\n", "must use the fields"),
                          ("vcg.judge.detail.user: '{pred} {'\n", "not a format template")]:
        path.write_text(text)
        with pytest.raises(PromptSetError, match=message):
            load_prompt_set(str(path))


def test_reference_strings_render_the_reference_mvbench_prompt_byte_for_byte(tmp_path):
    """The layout rules (tasks/eval/eval_utils.py, Conversation.get_prompt with conv_eval_mvbench; mvbench's
    qa_template and user_query): system + " " (the user role's separator), "USER: " + "<image>\\n" + " ",
    "USER: " + query + " ", "ASSISTANT:" + answer prompt; query = the question block, right-stripped, + " " +
    post-query."""
    prompts = load_prompt_set(reference_repo=write_reference_checkout(tmp_path / "PLLaVA"))
    (tmp_path / "q.json").write_text(json.dumps([{"video": "a.mp4", "question": "What moves? ",
                                                  "candidates": ["a dog", "a car "], "answer": "a car "}]))
    bench = B.load_benchmark("mcq", str(tmp_path / "q.json"), prompts=prompts)
    row = bench.questions.to_pylist()[0]
    query = "Question: What moves? \nOptions:\n(A) a dog\n(B) a car" + " " + FIX["mcq.post_query"]
    expected = (FIX["mcq.system"] + " " + "USER: " + "<image>\n" + " " + "USER: " + query + " " + "ASSISTANT:"
                + FIX["mcq.answer_prompt"])
    text = PromptText(query=row[B.PROMPT], system=bench.system_prompt)
    assert get_template("vicuna").render(text.query, text.system, reply_prefix=row[B.REPLY_PREFIX]) == expected
    assert row[B.ANSWER] == "(B) a car " and bench.reply_start == "("
    # The recaption layout (conv_eval_recaption): the system text keeps its final newline.
    recaption = B.load_benchmark("recaption", _captions(tmp_path), prompts=prompts)
    rendered = get_template("vicuna").render(recaption.query, recaption.system_prompt)
    assert rendered == FIX["recaption.system"] + " USER: <image>\n USER: " + FIX["recaption.query"] + " ASSISTANT:"


def test_an_evaluation_job_takes_the_prompt_set_into_its_config_and_metrics(tmp_path):
    from pipeline.config import JobConfig

    prompts = load_prompt_set(reference_repo=write_reference_checkout(tmp_path / "PLLaVA"))
    bench = B.load_benchmark("recaption", _captions(tmp_path), prompts=prompts)
    defaults, fixed = E.job_layers(bench, str(tmp_path / "out"))
    cfg = JobConfig.from_dict(defaults, {"model": {"model": "tiny"}}, fixed)
    text = cfg.prompt_text()
    assert (text.system, text.query) == (FIX["recaption.system"], FIX["recaption.query"])  # exactly, not stripped
    record = E.metrics(bench, E.score(bench, {}, JudgeConfig("http://127.0.0.1:9/v1", "m")))["prompt_set"]
    assert record["reference_strings"] and record["sources"] == [f"reference:{tmp_path / 'PLLaVA'}"]


# -- MVBench --------------------------------------------------------------------------------------------
def reference_check_ans(pred: str, gt: str) -> bool:
    """tasks/eval/mvbench/__init__.py, check_ans: lower-case, first space-separated token of each; a token with
    none of a-g does not follow; right when the reply's token without dots is in the answer's, or the answer's
    is in the reply's."""
    pred_option, gt_option = pred.lower().split(" ")[0], gt.lower().split(" ")[0]
    if not any(c in pred_option for c in "abcdefg"):
        return False
    return pred_option.replace(".", "") in gt_option or gt_option in pred_option


@pytest.mark.parametrize("generated", ["B) a car", " B) a car", "B", "b.", "C) a dog", "", "Bb", "(B)", "A",
                                       "  ", "B)\n", "E) none", "1"])
def test_mvbench_scoring_equals_the_reference_on_crafted_replies(generated):
    # The reply is what the model wrote after the answer prompt, right-stripped (pllava_answer + infer_mvbench),
    # with the return prompt "(" put back.
    reply = "(" + generated.rstrip()
    assert check_option(reply, "(B) a car").correct == reference_check_ans(reply, "(B) a car")


def test_unreadable_mvbench_videos_are_a_bucket_of_their_own_counted_in_the_average(tmp_path):
    items = [{"video": f"v{i}.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x", "task": t}
             for i, t in enumerate(["T1", "T1", "T2"])]
    (tmp_path / "q.json").write_text(json.dumps(items))
    bench = B.load_benchmark("mcq", str(tmp_path / "q.json"))
    ids = bench.questions.column(S.VIDEO_ID).to_pylist()
    ok = {S.ERROR: None, S.MODEL: "m", S.PROMPT_ID: "p"}
    answers = {ids[0]: {**ok, S.CAPTION: "A) x"},
               ids[1]: {S.CAPTION: None, S.ERROR: "decode: broken", S.ERROR_STAGE: S.STAGE_DECODE,
                        S.ERROR_REASON: "undecodable", S.MODEL: "m", S.PROMPT_ID: "p"},
               ids[2]: {**ok, S.CAPTION: "A) x"}}
    result = E.metrics(bench, E.score(bench, answers))
    assert set(result["tasks"]) == {"T1", "T2", E.UNREADABLE}
    assert result["tasks"]["T1"]["questions"] == 1 and result["tasks"][E.UNREADABLE]["accuracy"] is None
    assert result["overall"]["accuracy"] == round(100 * 2 / 3, 2)  # in the average, as wrong


# -- Video-MME ------------------------------------------------------------------------------------------
def official_letter(reply: str) -> str:
    """Video-MME's eval_your_results.py, extract_characters_regex, from its description: strip; remove the
    answer phrases (only "Answer:" of them holds an upper-case A-D); more than 10 words and no A-D: ""; else
    the first match of [ABCD], or ""."""
    import re

    s = reply.strip().replace("Answer:", "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search(r"[ABCD]", s)
    return match[0] if match else ""


@pytest.mark.parametrize("reply", ["C", "C.", "(C) a bird", "The answer is D.", "Based on the video, C",
                                   "Answer: C", "d", "", "  A  ", "It is clear that the bird flies over the tall "
                                   "green trees near the river", "Best option: D", "E"])
def test_videomme_letters_follow_the_official_rule(reply):
    assert (videomme_letter(reply) or "") == official_letter(reply)


def test_videomme_accuracy_leaves_replies_without_a_letter_out_and_breaks_down_by_category(tmp_path):
    pq.write_table(pa.table({
        "question_id": ["1", "2", "3", "4"], "videoID": ["a", "a", "b", "c"],
        "duration": ["short", "short", "long", "long"], "domain": ["Knowledge", "Knowledge", "Sports", "Sports"],
        "sub_category": ["x", "x", "y", "y"], "task_type": ["Counting Problem", "OCR Problems", "OCR Problems",
                                                              "Counting Problem"],
        "question": ["q1", "q2", "q3", "q4"], "options": [["A. a", "B. b", "C. c", "D. d"]] * 4,
        "answer": ["C", "A", "B", "D"]}), tmp_path / "mme.parquet")
    bench = B.load_benchmark("videomme", str(tmp_path / "mme.parquet"))
    ids = bench.questions.column(S.VIDEO_ID).to_pylist()
    replies = ["C", "no idea", "B is right", "A"]
    answers = {i: {S.CAPTION: r, S.ERROR: None, S.MODEL: "m", S.PROMPT_ID: "p"} for i, r in zip(ids, replies)}
    result = E.metrics(bench, E.score(bench, answers))
    overall = result["overall"]
    assert (overall["correct"], overall["with_letter"], overall["no_letter"]) == (2, 3, 1)
    assert overall["accuracy"] == round(100 * 2 / 3, 2) and overall["accuracy_all_questions"] == 50.0
    assert result["tasks"]["short"]["accuracy"] == 100.0 and result["tasks"]["long"]["accuracy"] == 50.0
    assert result["by_domain"]["Knowledge"]["accuracy"] == 100.0
    assert result["by_task_type"]["OCR Problems"]["accuracy"] == 100.0
    assert result["by_task_type"]["Counting Problem"]["accuracy"] == 50.0
    assert "left out of the accuracy" in E.format_metrics(result)


# -- recaption ------------------------------------------------------------------------------------------
def _captions(tmp_path) -> str:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([{"video_name": "v1", "caption": "A dog runs."},
                                {"video_name": "v2", "caption": "A cat sleeps."},
                                {"video_name": "v3", "caption": "Rain falls."}]))
    return str(path)


def test_recaption_captions_are_judged_against_their_reference_as_the_reference_judges(tmp_path):
    """tasks/eval/recaption/__init__.py: one request per caption (system + user with the reference caption and
    the prediction); a reply dict with pred yes / no and a score; a failure is 'no' and 0, and counts."""
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([{"video": "v1", "caption": "A dog runs."}, {"video": "v2", "caption": "A cat."},
                                {"video": "v3", "caption": "Rain."}]))
    prompts = load_prompt_set(reference_repo=write_reference_checkout(tmp_path / "PLLaVA"))
    bench = B.load_benchmark("recaption", str(path), prompts=prompts)
    ids = bench.questions.column(S.VIDEO_ID).to_pylist()
    answers = {i: {S.CAPTION: c, S.ERROR: None, S.MODEL: "m", S.PROMPT_ID: "p"}
               for i, c in zip(ids, ["A dog is running.", "A dog.", ""])}
    replies = ["{'pred': 'yes', 'score': 4.5}", "{'pred': 'no', 'score': 1}"]
    requests = []

    def respond(_request, raw):
        body = json.loads(raw)
        requests.append(body)
        return 200, chat_reply(replies.pop(0) if replies else "broken", body["model"])

    server = serve_posts(respond)
    try:
        rows = E.score(bench, answers, JudgeConfig(f"{server.url}/v1", "j", attempts=1, concurrency=1))
    finally:
        server.shutdown()
    assert len(requests) == 2  # the empty caption is not sent: it scores 0
    assert [m["content"] for m in requests[0]["messages"]] == [
        FIX["recaption.judge.system"], FIX["recaption.judge.user"].format(caption="A dog runs.",
                                                                          pred="A dog is running.")]
    assert [(r["judge_pred"], r["score_recaption"]) for r in rows] == [("yes", 4.5), ("no", 1.0), ("no", 0.0)]
    result = E.metrics(bench, rows)
    assert (result["overall"]["score"], result["overall"]["acc"]) == (round(5.5 / 3, 4), round(100 / 3, 2))
    assert result["overall"]["failed"] == 1 and result["prompt_set"]["reference_strings"]
