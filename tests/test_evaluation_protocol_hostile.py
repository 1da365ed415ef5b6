"""A hostile or careless user against the reference-protocol evaluation: prompt files and reference checkouts that
are malformed or crafted, format-template injection, judge replies at the edges, VCG / Video-MME / recaption
files that are almost right, frame-folder rates that are not numbers, credentials in paths, reruns reusing
verdicts. Each test names the expected behaviour (found by a hostile review of the feature, then fixed)."""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import chat_reply, serve_posts
from pipeline import schema as S
from pipeline.evaluation import benchmarks as B
from pipeline.evaluation import run as E
from pipeline.evaluation.judge import JudgeConfig, JudgeReplyError, parse_caption_verdict, parse_score
from pipeline.evaluation.prompt_set import PromptSetError, load_prompt_set, read_reference
from test_evaluation_protocol import write_reference_checkout

EVAL_UTILS = "tasks/eval/eval_utils.py"
VCG_FILE = "tasks/eval/vcgbench/__init__.py"
# A judge nobody listens on (port 9, discard): a request fails at once, no retries.
NOWHERE = JudgeConfig("http://127.0.0.1:9/v1", "j", attempts=1, max_retries=0, timeout_s=5)


def _prompt_file(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "prompts.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _answers(bench: B.Benchmark, replies: list[str | None]) -> dict[str, dict]:
    ids = bench.questions.column(S.VIDEO_ID).to_pylist()
    return {i: {S.CAPTION: r, S.ERROR: None, S.MODEL: "m", S.PROMPT_ID: "p"} for i, r in zip(ids, replies)}


# -- prompt files: format-template injection --------------------------------------------------------------
@pytest.mark.parametrize("template", ["{question} {pred:d}", "{pred:>999999999}"])
def test_a_judge_template_with_a_format_spec_is_refused_when_read(tmp_path, template):
    path = _prompt_file(tmp_path, f"vcg.judge.detail.user: '{template}'\n")
    with pytest.raises(PromptSetError, match="vcg.judge.detail.user"):
        load_prompt_set(path)


def test_a_judge_template_cannot_reach_attributes_through_a_nested_field(tmp_path):
    path = _prompt_file(tmp_path, "vcg.judge.detail.user: '{pred:{pred.__class__.__mro__}}'\n")
    with pytest.raises(PromptSetError, match="vcg.judge.detail.user"):
        load_prompt_set(path)


@pytest.mark.parametrize("template", ["{pred!r}", "{pred!a}"])
def test_a_judge_template_with_a_conversion_is_refused(tmp_path, template):
    path = _prompt_file(tmp_path, f"vcg.judge.detail.user: '{template}'\n")
    with pytest.raises(PromptSetError, match="vcg.judge.detail.user"):
        load_prompt_set(path)


def test_attribute_index_and_positional_fields_are_refused(tmp_path):
    for template in ("{pred.__class__}", "{pred[0]}", "{0}{pred}", "{}{pred}", "{pred}{question.__doc__}"):
        path = _prompt_file(tmp_path, f"vcg.judge.detail.user: '{template}'\n")
        with pytest.raises(PromptSetError, match="must use the fields"):
            load_prompt_set(path)


# -- prompt files: malformed files ---------------------------------------------------------------------------
def test_a_prompt_file_that_is_not_utf8_is_named(tmp_path):
    path = _prompt_file(tmp_path, b"mcq.system: caf\xe9\n")
    with pytest.raises(PromptSetError, match="prompts.yaml"):
        load_prompt_set(path)


def test_a_prompt_file_naming_an_entry_twice_is_refused(tmp_path):
    path = _prompt_file(tmp_path, "mcq.system: careful wording\nmcq.post_query: x\nmcq.system: a leftover\n")
    with pytest.raises(PromptSetError, match="mcq.system"):
        load_prompt_set(path)


@pytest.mark.parametrize("entry", ["mcq.system", "mcq.post_query", "mcq.answer_prompt", "recaption.query"])
def test_a_prompt_entry_holding_the_image_placeholder_is_refused_when_read(tmp_path, entry):
    path = _prompt_file(tmp_path, f"{entry}: 'look at <image> please'\n")
    with pytest.raises(PromptSetError, match=entry):
        load_prompt_set(path)


def test_an_unknown_entry_name_is_quoted_briefly(tmp_path):
    path = _prompt_file(tmp_path, "? " + "x" * 1_000_000 + "\n: y\n")  # an explicit key: no 1024-character limit
    with pytest.raises(PromptSetError) as info:
        load_prompt_set(path)
    assert len(str(info.value)) < 5_000


def test_empty_alias_bomb_and_non_string_prompt_files_are_prompt_set_errors(tmp_path):
    bomb = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)}]\n"
        for k in range(9)) + "mcq.system: *j\n"
    for text, message in [("", "mapping"), ("{}", "mapping"), ("~", "mapping"), ("1: x\n", "unknown prompt entry '1'"),
                          ("? [a]\n: x\n", "not YAML"), (bomb, "unknown prompt entry 'a'"),
                          ("mcq.system: *undefined\n", "not YAML"), ("mcq.system: !!python/object:os.system x\n",
                                                                     "not YAML")]:
        with pytest.raises(PromptSetError, match=message):
            load_prompt_set(_prompt_file(tmp_path, text))


# -- encodings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["file", "reference"])
def test_a_prompt_string_that_is_not_encodable_is_refused_when_read(tmp_path, source):
    if source == "file":
        load = lambda: load_prompt_set(_prompt_file(tmp_path, 'vcg.judge.detail.user: "{pred} \\ud800"\n'))  # noqa: E731
    else:
        checkout = write_reference_checkout(tmp_path / "PLLaVA")
        path = tmp_path / "PLLaVA" / EVAL_UTILS
        path.write_text(path.read_text().replace("SYSTEM_MVBENCH = ", "SYSTEM_MVBENCH = '\\ud800'\n_OLD = "))
        load = lambda: load_prompt_set(reference_repo=checkout)  # noqa: E731
    try:
        prompts = load()
    except PromptSetError:
        return  # refused when read, naming the entry: fine
    for benchmark in ("mvbench", "vcg"):
        json.dumps(prompts.record(benchmark))  # what metrics.json holds must be writable


# -- reference checkouts with hostile Python ---------------------------------------------------------------
def test_a_reference_file_that_is_not_utf8_is_named_with_its_entries(tmp_path):
    checkout = write_reference_checkout(tmp_path / "PLLaVA")
    (tmp_path / "PLLaVA" / EVAL_UTILS).write_bytes(b"SYSTEM_MVBENCH = 'caf\xe9'\n")
    with pytest.raises(PromptSetError, match=r"mcq.system \(tasks/eval/eval_utils.py\)"):
        read_reference(checkout)


@pytest.mark.parametrize("case", ["unhashable_dict_key", "unhashable_constant", "deep_sum", "deep_unary"])
def test_hostile_python_in_a_reference_checkout_is_a_prompt_set_error(tmp_path, case):
    checkout = write_reference_checkout(tmp_path / "PLLaVA")
    utils, vcg = tmp_path / "PLLaVA" / EVAL_UTILS, tmp_path / "PLLaVA" / VCG_FILE
    if case == "unhashable_dict_key":
        vcg.write_text("sub_task_type2chatgpt_contents = {[]: {'system': 'x', 'user': '{pred}'}}\n")
    elif case == "unhashable_constant":
        utils.write_text(utils.read_text().replace("SYSTEM_MVBENCH = ", "SYSTEM_MVBENCH = {[]: 1}\n_OLD = "))
    elif case == "deep_sum":
        utils.write_text(utils.read_text() + "\nX = " + "+".join(["1"] * 100_000) + "\n")
    else:
        utils.write_text(utils.read_text().replace("SYSTEM_MVBENCH = ", "SYSTEM_MVBENCH = " + "-" * 50_000 + "1\n_OLD = "))
    with pytest.raises(PromptSetError):
        read_reference(checkout)


def test_links_folders_and_other_files_in_a_checkout_are_named_not_followed_into_a_crash(tmp_path):
    for case in ("passwd", "folder", "loop", "nul"):
        checkout = write_reference_checkout(tmp_path / case / "PLLaVA")
        path = tmp_path / case / "PLLaVA" / EVAL_UTILS
        if case == "nul":
            path.write_bytes(path.read_bytes() + b"\x00")
        else:
            path.unlink()
            if case == "passwd":
                path.symlink_to("/etc/passwd")
            elif case == "folder":
                path.mkdir()
            else:
                path.symlink_to(path)
        with pytest.raises(PromptSetError, match=r"mcq.system \(tasks/eval/eval_utils.py\)") as info:
            read_reference(checkout)
        assert "root:" not in str(info.value)  # nothing of the linked file is quoted
    (tmp_path / "tasks_file").mkdir()
    (tmp_path / "tasks_file" / "tasks").write_text("")
    with pytest.raises(PromptSetError, match="not a checkout"):
        read_reference(str(tmp_path / "tasks_file"))


# -- credentials in paths ----------------------------------------------------------------------------------
def test_a_prompt_file_url_with_credentials_is_recorded_without_them():
    import fsspec

    uri = "memory://reader:hunter2secret@bucket/hostile-prompts.yaml"
    with fsspec.open(uri, "w") as f:
        f.write("mcq.system: Pick one.\n")
    try:
        record = load_prompt_set(uri).record("mvbench")
    finally:
        fsspec.filesystem("memory").rm("/reader:hunter2secret@bucket", recursive=True)
    assert record["sources"] and record["sources"][0].startswith("file:memory://")
    assert "hunter2secret" not in json.dumps(record)


# -- judge replies -----------------------------------------------------------------------------------------
def test_judge_replies_at_the_edges_are_read_whole_or_refused():
    for reply in ["{'score': 1e309}", "{'score': -1e-320}", "{'score': 10**400}", "{'score': True}", "{'score': '4'}",
                  "{" * 100_000 + "}" * 100_000, "{'a': " * 2_000 + "1" + "}" * 2_000, "{'score': 4} extra",
                  "{'score': 1" + "0" * 5_000 + "}", "{'score': 3j}", "", "null"]:
        with pytest.raises(JudgeReplyError) as info:
            parse_score(reply)
        assert len(str(info.value)) < 400  # a huge reply is quoted in part
    assert parse_score("{'score': 4_5e-1}") == {"score": 4.5}
    assert parse_score("{'score': 0x3}") == {"score": 3.0}
    assert math.copysign(1, parse_score("{'score': -0.0}")["score"]) in (1, -1)  # 0, whatever its sign
    assert parse_caption_verdict("{'pred': 'YES ', 'score': 4}") == {"pred": "yes", "score": 4.0}
    for reply in ["{'pred': b'yes', 'score': 4}", "{'pred': 'Yes.', 'score': 4}", "{'pred': 'yes', 'score': 1e309}"]:
        with pytest.raises(JudgeReplyError):
            parse_caption_verdict(reply)


def test_a_rerun_reuses_a_verdict_only_for_the_same_prompt_and_reply(tmp_path):
    """Scored, results written (as a killed-then-rerun evaluation finds them), scored again: an unchanged request
    is not sent again; a changed reply or a changed judge prompt is."""
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": "a", "Q": "q1?", "A": "x"},
                                                 {"video_name": "b", "Q": "q2?", "A": "y"}]))
    sent = []

    def respond(_request, raw):
        body = json.loads(raw)
        sent.append(body["messages"][1]["content"])
        return 200, chat_reply("{'score': 4}", body["model"])

    server = serve_posts(respond)
    out = str(tmp_path / "out")
    judge = JudgeConfig(f"{server.url}/v1", "j", attempts=1, concurrency=1)
    try:
        bench = B.load_benchmark("vcg", str(tmp_path / "q.json"), str(tmp_path))
        rows = E.score(bench, _answers(bench, ["first", "second"]), judge, out)
        E.write_results(out, rows, E.metrics(bench, rows))
        assert len(sent) == 6  # 2 generic answers x 3 dimensions
        sent.clear()
        rows = E.score(bench, _answers(bench, ["first", "second"]), judge, out)
        assert sent == [] and [r["score_detail"] for r in rows] == [4.0, 4.0]
        rows = E.score(bench, _answers(bench, ["first", "changed"]), judge, out)
        assert len(sent) == 3 and all("changed" in text for text in sent)
        sent.clear()
        prompts = load_prompt_set(_prompt_file(tmp_path, "vcg.judge.detail.user: 'Now: {pred}'\n"))
        bench = B.load_benchmark("vcg", str(tmp_path / "q.json"), str(tmp_path), prompts=prompts)
        rows = E.score(bench, _answers(bench, ["first", "second"]), judge, out)
        assert sorted(sent) == ["Now: first", "Now: second"]
    finally:
        server.shutdown()


# -- VCG -----------------------------------------------------------------------------------------------------
def test_a_consistency_question_without_its_pair_is_refused_or_counted(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": "a", "Q": "q?", "A": "x", "task": "consistency"}]))
    try:
        bench = B.load_benchmark("vcg", str(tmp_path / "q.json"), str(tmp_path))
    except ValueError:
        return
    rows = E.score(bench, _answers(bench, ["an answer"]), NOWHERE)
    result = E.metrics(bench, rows)
    assert result["overall"]["average"]["verdicts"] + result["overall"]["errors"] == 1


def test_a_consistency_item_with_one_of_its_two_questions_is_refused(tmp_path):
    for item in ({"video_name": "a", "Q1": "q?", "A": "x"}, {"video_name": "a", "Q2": "q?", "A": "x"},
                 {"video_name": "a", "Q1": "q?", "Q2": "", "A": "x"}):
        (tmp_path / "q.json").write_text(json.dumps([item]))
        with pytest.raises(ValueError, match="item 0: needs video_name, A and Q"):
            B.load_benchmark("vcg", str(tmp_path / "q.json"), str(tmp_path))


def test_vcg_files_of_one_folder_never_share_question_ids(tmp_path):
    (tmp_path / "generic_qa.json").write_text(json.dumps([{"video_name": "a", "Q": "q", "A": "x", "task": "temporal"}]))
    (tmp_path / "temporal_qa.json").write_text(json.dumps([{"video_name": "b", "Q": "q2", "A": "y"}]))
    assert B.load_benchmark("vcg", str(tmp_path)).questions.num_rows == 2


# -- recaption and captions --------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", ["recaption", "captions"])
def test_a_video_with_an_empty_list_of_captions_is_refused_or_scored(tmp_path, benchmark):
    (tmp_path / "a.json").write_text(json.dumps([{"video": "v", "caption": []}, {"video": "w", "caption": "A cat."}]))
    try:
        bench = B.load_benchmark(benchmark, str(tmp_path / "a.json"))
    except ValueError as exc:
        assert "item 0" in str(exc)
        return
    E.metrics(bench, E.score(bench, _answers(bench, ["A dog.", "A cat."]), NOWHERE))


def test_recaption_annotations_without_captions_are_refused_naming_the_item(tmp_path):
    (tmp_path / "inter4k.json").write_text(json.dumps([{"video_name": "973"}]))
    with pytest.raises(ValueError, match="item 0 needs a video and a non-empty caption"):
        B.load_benchmark("recaption", str(tmp_path / "inter4k.json"))


def test_a_reference_caption_with_braces_is_shown_to_the_judge_as_written(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"video": "v", "caption": "{pred} {0} {caption.__class__}"}]))
    bench = B.load_benchmark("recaption", str(tmp_path / "a.json"))
    rows = E.score(bench, _answers(bench, [""]), NOWHERE)  # no reply: nothing sent, the request still built
    [(_, _, request)] = E._requests(rows, bench)
    assert "{pred} {0} {caption.__class__}" in request.user


# -- Video-MME ------------------------------------------------------------------------------------------------
def _mme(tmp_path, **columns) -> str:
    table = {"question_id": ["1"], "videoID": ["vid"], "duration": ["short"], "question": ["What?"],
             "options": [["A. x", "B. y", "C. z", "D. w"]], "answer": ["A"]}
    table.update(columns)
    pq.write_table(pa.table(table), tmp_path / "mme.parquet")
    return str(tmp_path / "mme.parquet")


def test_a_videomme_answer_the_letter_rule_cannot_read_is_refused_or_scorable(tmp_path):
    path = _mme(tmp_path, options=[["x", "y", "z", "w", "v"]], answer=["E"])
    try:
        bench = B.load_benchmark("videomme", path)
    except ValueError:
        return
    assert E.score(bench, _answers(bench, ["E"]))[0]["correct"]


@pytest.mark.parametrize("column", ["question", "videoID", "option"])
def test_a_null_videomme_cell_is_refused(tmp_path, column):
    if column == "option":
        path = _mme(tmp_path, options=[["x", None, "z", "w"]])
    else:
        path = _mme(tmp_path, **{column: pa.array([None], pa.string())})
    with pytest.raises(ValueError, match="row 0"):
        B.load_benchmark("videomme", path)


def test_unlabelled_videomme_options_are_all_labelled(tmp_path):
    path = _mme(tmp_path, options=[["New York", "Paris", "Rome", "D.C."]], answer=["D"])
    prompt = B.load_benchmark("videomme", path).questions.column(B.PROMPT)[0].as_py()
    assert "\nA. New York\nB. Paris\nC. Rome\nD. D.C.\n" in prompt


def test_videomme_lower_case_answers_and_labelled_options_are_taken_as_they_are(tmp_path):
    for options in (["(A) x", "(B) y", "(C) z", "(D) w"], ["A) x", "B) y", "C) z", "D) w"]):
        bench = B.load_benchmark("videomme", _mme(tmp_path, options=[options], answer=[" b "]))
        row = bench.questions.to_pylist()[0]
        assert row[B.ANSWER] == "B" and "\n" + "\n".join(options) + "\n" in row[B.PROMPT]
    for options, answer in ((pa.array([None], pa.list_(pa.string())), "A"), ([[f"o{i}" for i in range(27)]], "A"),
                            ([["A. x", "B. y"]], "(B)"), ([["A. x", "B. y"]], "C")):
        with pytest.raises(ValueError, match="row 0"):
            B.load_benchmark("videomme", _mme(tmp_path, options=options, answer=[answer]))


# -- frame folders -----------------------------------------------------------------------------------------
def test_a_nan_frame_rate_means_no_frame_folder(tmp_path):
    from pipeline.frames import SamplingConfig
    from pipeline.generated_videos import write_video
    from pipeline.io.storage import RetryPolicy
    from pipeline.sampler import FrameSampler

    write_video(str(tmp_path / "a.mp4"), 64, 48, 12, 12, seed=1)
    none = pa.array([None], pa.string())
    batch = pa.table({S.VIDEO_ID: ["v"], S.URI: [str(tmp_path / "a.mp4")], S.START_S: pa.array([None], pa.float64()),
                      S.END_S: pa.array([None], pa.float64()), S.FRAMES_FPS: pa.array([math.nan], pa.float64()),
                      S.ERROR: none, S.ERROR_STAGE: none, S.ERROR_REASON: none})
    [row] = FrameSampler(SamplingConfig(num_frames=4, image_size=16), retry=RetryPolicy(attempts=1))(batch).to_pylist()
    assert row[S.ERROR] is None and row[S.DECODER] != "frames"


def test_a_frame_rate_too_large_for_the_bounds_is_a_decode_error(tmp_path):
    from PIL import Image

    from pipeline.frame_folders import FrameFolder, sample_frame_folder
    from pipeline.frames import SamplingConfig, VideoDecodeError

    (tmp_path / "clip").mkdir()
    for n in range(1, 7):
        Image.new("RGB", (16, 12), (n * 30, 0, 0)).save(tmp_path / "clip" / f"{n:05d}.jpg")
    with pytest.raises(VideoDecodeError):
        sample_frame_folder(FrameFolder(str(tmp_path / "clip"), 1e308), SamplingConfig(num_frames=2, image_size=16),
                            start_s=1.0, end_s=2.0)


def test_a_frame_folder_with_subfolders_and_a_link_loop_counts_entries_and_reads_only_jpegs(tmp_path):
    from PIL import Image

    from pipeline.frame_folders import FrameFolder, sample_frame_folder
    from pipeline.frames import SamplingConfig, VideoDecodeError

    folder = tmp_path / "clip"
    folder.mkdir()
    for n in range(1, 31):
        Image.new("RGB", (16, 12), (n * 8, 0, 0)).save(folder / f"{n:05d}.jpg")
    (folder / "sub").mkdir()
    os.symlink(folder, folder / "loop")
    video = sample_frame_folder(FrameFolder(str(folder), "3"), SamplingConfig(num_frames=4, image_size=16))
    assert video.info.frame_count == 32 and max(video.indices) <= 30  # as the reference counts: every entry
    for fps in ("3 fps", "", [3]):
        with pytest.raises(VideoDecodeError, match="bad_frame_rate"):
            sample_frame_folder(FrameFolder(str(folder), fps), SamplingConfig(num_frames=4, image_size=16))
    with pytest.raises(VideoDecodeError, match="bad_clip"):  # negative bounds hold no frame
        sample_frame_folder(FrameFolder(str(folder), 3.0), SamplingConfig(num_frames=4, image_size=16), -5.0, -1.0)


def test_a_prompt_file_url_the_store_refuses_is_named_without_its_password():
    # s3fs refuses "u:hunter2@b" as a bucket name with its own error type, quoting it whole.
    with pytest.raises(PromptSetError) as info:
        load_prompt_set("s3://u:hunter2secret@b/prompts.yaml")
    assert "cannot read" in str(info.value) and "hunter2secret" not in str(info.value)
