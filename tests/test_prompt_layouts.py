"""Prompt layouts render exactly what the reference's conversation code renders, and training labels exactly
the answers, checked with a real SentencePiece tokenizer wrapped as Llama tokenizers are."""

import pytest

from model.prompts import DEFAULT_SYSTEM_PROMPT, TEMPLATES, get_template, read_system_prompt
from training.data import IGNORE_INDEX, tokenize_conversation

SYSTEM = "Describe videos."
QUERY = "What does the dog do?"

# Byte for byte, per template, with and without a system prompt.
EXPECTED = {
    ("vicuna", SYSTEM): "Describe videos. USER: <image>\n USER: What does the dog do? ASSISTANT:",
    ("vicuna", ""): "USER: <image>\n USER: What does the dog do? ASSISTANT:",
    ("chatml", SYSTEM): ("Describe videos.<|im_end|>\n<|im_start|>user\n<image>\n<|im_end|>\n"
                         "<|im_start|>user\nWhat does the dog do?<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml", ""): ("<|im_start|>user\n<image>\n<|im_end|>\n"
                     "<|im_start|>user\nWhat does the dog do?<|im_end|>\n<|im_start|>assistant\n"),
    ("vicuna_videoqa", SYSTEM): "Describe videos. USER: <image>\n What does the dog do? ASSISTANT:",
    ("vicuna_videoqa", ""): "USER: <image>\n What does the dog do? ASSISTANT:",
    ("vicuna_one_turn", SYSTEM): "Describe videos. USER: <image>\nWhat does the dog do? ASSISTANT:",
    ("vicuna_one_turn", ""): "USER: <image>\nWhat does the dog do? ASSISTANT:",
    ("chatml_one_turn", SYSTEM): ("<|im_start|>system\nDescribe videos.<|im_end|>\n<|im_start|>user\n<image>\n"
                                  "What does the dog do?<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml_one_turn", ""): "<|im_start|>user\n<image>\nWhat does the dog do?<|im_end|>\n<|im_start|>assistant\n",
}

CORPUS = [
    "Describe videos. USER: What does the dog do? ASSISTANT: The dog runs across the field.",
    "USER: Where is it? ASSISTANT: It is in a park with tall trees.",
    "What does the cat do? The cat sleeps on a red sofa.",
    "A man walks along the street at night while cars pass by.",
    "user assistant system video dog runs field park trees",
]


def _train_llama_tokenizer(folder, chatml: bool, legacy: bool = True):
    """A tiny SentencePiece BPE model trained here, loaded as ``LlamaTokenizer`` loads a ``tokenizer.model``
    (``legacy``: the Llama-2/Vicuna way of marking word starts, else the newer one)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, byte_fallback=True, minloglevel=2, num_threads=1)
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True, legacy=legacy)
    specials = ["<image>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": specials})
    return tokenizer


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def llama_tokenizer(tmp_path_factory, request):
    return _train_llama_tokenizer(tmp_path_factory.mktemp("spm"), chatml=False, legacy=request.param)


@pytest.fixture(scope="module")
def yi_like_tokenizer(tmp_path_factory):
    return _train_llama_tokenizer(tmp_path_factory.mktemp("spm-chatml"), chatml=True)


@pytest.mark.parametrize("name,system", sorted(EXPECTED))
def test_templates_render_the_reference_layouts_byte_for_byte(name, system):
    assert get_template(name).render(QUERY, system=system) == EXPECTED[(name, system)]


def test_every_template_is_pinned_and_places_one_video():
    assert {name for name, _ in EXPECTED} == set(TEMPLATES)
    for name, template in TEMPLATES.items():
        assert template.render(QUERY).count("<image>") == 1, name
        assert DEFAULT_SYSTEM_PROMPT in template.render(QUERY), name  # the default when none is given


def test_vicuna_prompt_tokens(llama_tokenizer):
    pieces = llama_tokenizer.convert_ids_to_tokens(llama_tokenizer(EXPECTED[("vicuna", "")]).input_ids)
    assert pieces[0] == "<s>" and pieces.count("<image>") == 1
    # No leading-space token before the first USER when there is no system prompt; the video's turn ends
    # with the reference's " " separator before the second USER.
    text_after_bos = llama_tokenizer.convert_tokens_to_string(pieces[1:pieces.index("<image>")])
    assert text_after_bos == "USER: "
    assert pieces[-1] == ":" and llama_tokenizer.decode(llama_tokenizer(EXPECTED[("vicuna", SYSTEM)]).input_ids,
                                                         skip_special_tokens=False).startswith("<s> Describe videos.")


def test_chatml_prompt_tokens(yi_like_tokenizer):
    ids = yi_like_tokenizer(EXPECTED[("chatml", SYSTEM)]).input_ids
    pieces = yi_like_tokenizer.convert_ids_to_tokens(ids)
    assert pieces.count("<|im_end|>") == 3 and pieces.count("<|im_start|>") == 3 and pieces.count("<image>") == 1
    assert "system" not in yi_like_tokenizer.decode(ids)  # the reference's 34B recaption prompt has no system header
    assert pieces[-1] == "<0x0A>" and yi_like_tokenizer.decode(ids, skip_special_tokens=False).endswith("assistant\n")


def _labelled(tokenizer, ids, labels):
    assert len(ids) == len(labels)
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(current)
    return [tokenizer.convert_ids_to_tokens(span) for span in spans]


def test_training_labels_exactly_the_answer_tokens_and_the_end_token(llama_tokenizer):
    template = get_template("vicuna")
    turns = {"system": SYSTEM, "qa": [[QUERY, "The dog runs across the field."]]}
    ids, labels = tokenize_conversation(llama_tokenizer, template, turns, max_tokens=512)
    answer = llama_tokenizer.convert_ids_to_tokens(
        llama_tokenizer("The dog runs across the field.</s>", add_special_tokens=False).input_ids)
    assert answer[0] == "▁The" and answer[-1] == "</s>"
    assert _labelled(llama_tokenizer, ids, labels) == [answer]
    # The prompt part is token for token what captioning feeds the model.
    prompt_ids = llama_tokenizer(template.render(QUERY, system=SYSTEM)).input_ids
    assert ids[: len(prompt_ids)] == prompt_ids and labels[len(prompt_ids)] != IGNORE_INDEX


def test_multi_turn_labels_each_answer_and_nothing_else(llama_tokenizer):
    template = get_template("vicuna")
    qa = [[QUERY, "The dog runs across the field."], ["Where is it?", "It is in a park with tall trees."]]
    ids, labels = tokenize_conversation(llama_tokenizer, template, {"system": SYSTEM, "qa": qa}, max_tokens=512)
    expected = [llama_tokenizer.convert_ids_to_tokens(llama_tokenizer(a + "</s>", add_special_tokens=False).input_ids)
                for _, a in qa]
    assert _labelled(llama_tokenizer, ids, labels) == expected
    text = llama_tokenizer.decode(ids, skip_special_tokens=False)
    assert "field.</s> USER: Where is it? ASSISTANT: It is" in text or "field.</s>USER: Where is it? ASSISTANT: It is" in text


def test_chatml_training_labels_end_with_im_end(yi_like_tokenizer):
    template = get_template("chatml")
    ids, labels = tokenize_conversation(yi_like_tokenizer, template, {"system": "", "qa": [[QUERY, "The dog runs."]]},
                                        max_tokens=512)
    (span,) = _labelled(yi_like_tokenizer, ids, labels)
    assert yi_like_tokenizer.convert_tokens_to_string(span).startswith("The dog runs.")
    assert span.count("<|im_end|>") == 1 and span[-1] == "<0x0A>"  # the end marker is "<|im_end|>\n"


def test_system_prompt_from_string_file_empty_or_default(tmp_path):
    assert read_system_prompt() == DEFAULT_SYSTEM_PROMPT
    assert read_system_prompt("") == ""
    assert read_system_prompt("  Be brief.\n") == "  Be brief.\n"  # exactly as given: a final newline is kept
    assert read_system_prompt(" \n ") == ""  # blank: no system prompt
    path = tmp_path / "system.txt"
    path.write_text("You describe videos.\n")
    assert read_system_prompt(system_file=str(path)) == "You describe videos."
    with pytest.raises(ValueError, match="not both"):
        read_system_prompt("a", str(path))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_system_prompt(system_file=str(tmp_path / "empty.txt"))


def test_system_prompt_and_template_are_job_settings(tmp_path):
    import os
    import sys

    from pipeline.config import JobConfig

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs"))
    from recaption import build_parser, config_from_args

    args = build_parser().parse_args(["--input", "l.txt", "--output", "o", "--system-prompt", "",
                                      "--template", "vicuna_videoqa"])
    cfg = config_from_args(args)
    assert cfg.system_prompt == "" and cfg.model.template == "vicuna_videoqa"
    with pytest.raises(ValueError) as err:
        JobConfig.from_dict({"source": {"input": "l"}, "output": {"output": "o"}, "system_prompt": "a",
                             "system_prompt_file": "s.txt", "model": {"template": "alpaca"}})
    assert "model.template: must be one of" in str(err.value)
    with pytest.raises(ValueError, match="system_prompt or system_prompt_file"):
        JobConfig.from_dict({"source": {"input": "l"}, "output": {"output": "o"}, "system_prompt": "a",
                             "system_prompt_file": "s.txt"})


def test_the_system_prompt_changes_the_prompt_id_and_reaches_the_model(tiny_dir):
    import numpy as np
    import pyarrow as pa

    from model import GenerationSettings
    from model.prompts import PromptText, prompt_id
    from pipeline import schema as S
    from pipeline.captioner import Captioner
    from pipeline.config import ModelConfig

    ids = {}
    for system in ("", "You watch videos."):
        captioner = Captioner(ModelConfig(model=tiny_dir), GenerationSettings(max_new_tokens=2),
                              PromptText("Describe.", system), num_frames=4, image_size=336, device="cpu")
        rendered = get_template("vicuna").render("Describe.", system=system)
        assert captioner.rendered == rendered
        assert captioner.prompt_id == prompt_id(get_template("vicuna"), rendered)
        frames = np.zeros((4, 336, 336, 3), np.uint8).tobytes()
        batch = pa.table({S.ERROR: pa.nulls(1, pa.string()), S.ERROR_STAGE: pa.nulls(1, pa.string()),
                          S.ERROR_REASON: pa.nulls(1, pa.string()), S.FRAMES: pa.array([frames], pa.large_binary())})
        ids[system] = captioner(batch).column(S.PROMPT_ID).to_pylist()[0]
    assert ids[""] != ids["You watch videos."]


# Token ids with the project's deterministic byte-level tokenizer (model.tiny.build_tokenizer): 1 is <s>,
# 385 <image>, 387/388 <|im_start|>/<|im_end|>, 201 "\n", 223 " ".
PINNED_IDS = {
    ("vicuna", ""): [1, 55, 53, 39, 52, 28, 223, 385, 201, 223, 55, 53, 39, 52, 28, 223, 57, 74, 67, 86, 223, 74, 67,
                     82, 82, 71, 80, 85, 33, 223, 35, 53, 53, 43, 53, 54, 35, 48, 54, 28],
    ("vicuna", "Be brief."): [1, 36, 71, 223, 68, 84, 75, 71, 72, 16, 223, 55, 53, 39, 52, 28, 223, 385, 201, 223, 55,
                              53, 39, 52, 28, 223, 57, 74, 67, 86, 223, 74, 67, 82, 82, 71, 80, 85, 33, 223, 35, 53,
                              53, 43, 53, 54, 35, 48, 54, 28],
    ("chatml", ""): [1, 387, 87, 85, 71, 84, 201, 385, 201, 388, 201, 387, 87, 85, 71, 84, 201, 57, 74, 67, 86, 223,
                     74, 67, 82, 82, 71, 80, 85, 33, 388, 201, 387, 67, 85, 85, 75, 85, 86, 67, 80, 86, 201],
    ("chatml", "Be brief."): [1, 36, 71, 223, 68, 84, 75, 71, 72, 16, 388, 201, 387, 87, 85, 71, 84, 201, 385, 201, 388,
                              201, 387, 87, 85, 71, 84, 201, 57, 74, 67, 86, 223, 74, 67, 82, 82, 71, 80, 85, 33, 388,
                              201, 387, 67, 85, 85, 75, 85, 86, 67, 80, 86, 201],
}


@pytest.mark.parametrize("name,system", sorted(PINNED_IDS))
def test_prompt_token_ids_are_pinned(name, system):
    from model.tiny import build_tokenizer

    tokenizer = build_tokenizer(name)
    assert tokenizer(get_template(name).render("What happens?", system=system)).input_ids == PINNED_IDS[(name, system)]


# Continuations a model may write after a reply prefix: leading and trailing white space, the prefix again.
CONTINUATIONS = [" B) The dog runs.", "B) dog.  ", "  (C) a cat\n", "B", "A) Answer:( B)", " ", "D)</s>junk"]


@pytest.mark.parametrize("continuation", CONTINUATIONS)
def test_a_reply_after_a_prefix_is_cleaned_as_the_reference_cleans_it(llama_tokenizer, continuation):
    """The reference (``pllava_answer`` and ``infer_mvbench`` in tasks/eval/) decodes prompt and reply together,
    takes the text after the last assistant role tag, strips it, and keeps what follows the answer prompt."""
    from model.processing_pllava import PllavaProcessor

    processor = PllavaProcessor(tokenizer=llama_tokenizer, template=get_template("vicuna"))
    prefix = "Answer:("
    prompt = get_template("vicuna").render("What does the dog do?", system="", reply_prefix=prefix)
    prompt_ids = llama_tokenizer(prompt).input_ids
    full_ids = llama_tokenizer(prompt + continuation).input_ids
    assert full_ids[:len(prompt_ids)] == prompt_ids  # the prompt's tokens are unchanged by what follows
    generated = full_ids[len(prompt_ids):]
    eos = llama_tokenizer.eos_token_id  # the reference's generate stops at the end-of-answer token
    kept = generated[:generated.index(eos)] if eos in generated else generated
    decoded = llama_tokenizer.decode(prompt_ids + kept, skip_special_tokens=True).split("ASSISTANT:")[-1]
    expected = "".join(decoded.removesuffix("</s>").strip().split(prefix)[1:])
    assert processor.decode([generated], [prefix]) == [expected]
    if continuation.startswith(" B"):  # the leading space is the reference's too: the case that tells the rules apart
        assert expected.startswith(" B)")
    # Without a prefix (recaption) a reply is stripped at both ends.
    assert processor.decode([generated]) == [llama_tokenizer.decode(kept, skip_special_tokens=True).strip()]
