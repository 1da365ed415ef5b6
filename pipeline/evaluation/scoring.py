"""Scoring: multiple-choice letters checked as the reference checks them, Video-MME's official letter rule,
and caption metrics.

Multiple choice (the reference's ``check_ans``, our code): the reply (with the reply start put back, so
``"B) a dog"`` reads ``"(B) a dog"``) is lower-cased and its first space-separated token is its option. A token
without any of the letters a-g does not follow the instruction and is counted wrong (and counted apart). A token
is correct when, with dots removed, it is contained in the answer's option token (``"(b"`` in ``"(b)"``), or that
token is contained in it (``"(b)"`` in ``"(b)."``).

Video-MME (the official ``eval_your_results.py``, ``extract_characters_regex``): the reply is stripped, answer
phrases are removed (of the official list only ``Answer:`` holds an upper-case A-D, so only it can change the
result), and the answer is the first upper-case A, B, C or D anywhere in what is left, even inside a word. A
reply without one is left out of the denominator (and counted).

Captions: BLEU-4, ROUGE-L, CIDEr and METEOR from pycocoevalcap (the COCO caption evaluation code), on text
tokenized by its PTB tokenizer, as COCO-style caption results are. The tokenizer and METEOR are Java programs
shipped with pycocoevalcap: where Java is missing, text is lower-cased and split into words without punctuation
instead and METEOR is not computed (``metrics.json`` says which). SPICE is not computed (it downloads Stanford
CoreNLP models at first use). Every video with reference captions is scored: an empty caption, or none (the
video failed), scores 0.
"""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass

FOLLOWS = set("abcdefg")  # the letters the reference accepts as an answered option


@dataclass(frozen=True)
class McqVerdict:
    option: str  # the reply's option token, lower-cased ("(b)")
    followed: bool  # the token names an option (has one of the letters a-g)
    correct: bool


def check_option(reply: str, answer: str) -> McqVerdict:
    """``reply``: the model's answer with its reply start (``"(B) a dog"``); ``answer``: ``"(B) a dog"``."""
    option = reply.strip().lower().split(" ")[0]
    truth = answer.strip().lower().split(" ")[0]
    followed = bool(FOLLOWS & set(option))
    correct = followed and (option.replace(".", "") in truth or truth in option)
    return McqVerdict(option, followed, correct)


def predicted_letter(option: str) -> str | None:
    """The letter an option token names (``"(b)"`` -> ``"B"``), or None."""
    match = re.search(r"[a-z]", option)
    return match.group(0).upper() if match else None


def videomme_letter(reply: str | None) -> str | None:
    """The option letter Video-MME's official script reads from ``reply``, or None when it reads none."""
    match = re.search(r"[ABCD]", (reply or "").strip().replace("Answer:", ""))
    return match.group(0) if match else None


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_words(text: str) -> str:
    """Lower-cased words without punctuation, space-separated (what the metrics compare without Java)."""
    return " ".join(_WORD.findall(text.lower()))


def java_available() -> bool:
    return shutil.which("java") is not None


def _one_line(text: str) -> str:
    """The tokenizer and METEOR read one caption per line: every run of white space (``\r``, U+2028, ...) is
    one space, so no caption can split a line or shift the ones after it."""
    return " ".join(text.split())


def ptb_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """COCO's PTB tokenization (lower-cased, punctuation removed) of every text, by id."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": _one_line(t)} for t in v] for k, v in texts.items()})


@functools.lru_cache(maxsize=1)
def _meteor():
    """One METEOR process for the evaluation (it takes seconds to load its paraphrase table)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def caption_metrics(predictions: dict[str, str | None], references: dict[str, list[str]],
                    java: bool | None = None) -> tuple[dict, dict]:
    """Corpus BLEU-4, ROUGE-L, CIDEr and (with Java) METEOR of ``predictions`` (id -> caption; empty or missing:
    scored 0) against ``references`` (id -> captions), over every id with references; and per id its own
    scores. ``java``: use the PTB tokenizer and METEOR (default: when Java is installed).

    Returns:
        ``({"bleu4", "rouge_l", "cider", "meteor", "scored", "tokenizer"}, {id: {"bleu4", "rouge_l", "cider",
        "meteor"}})``; empty scores when there are no references.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        raise ImportError("caption metrics need pycocoevalcap: pip install -e '.[eval]'") from exc

    java = java_available() if java is None else java
    ids = sorted(references)
    empty = {"bleu4": None, "rouge_l": None, "cider": None, "meteor": None, "scored": 0,
             "tokenizer": "ptb" if java else "words"}
    if not ids:
        return empty, {}
    if java:
        res = ptb_tokenize({i: [predictions.get(i) or ""] for i in ids})
        gts = ptb_tokenize({i: references[i] for i in ids})
    else:
        res = {i: [caption_words(predictions.get(i) or "")] for i in ids}
        gts = {i: [caption_words(r) for r in references[i]] for i in ids}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    meteor, meteor_each = (_meteor().compute_score(gts, res) if java else (None, [None] * len(ids)))
    each = {i: {"bleu4": float(b), "rouge_l": float(r), "cider": float(c),
                "meteor": None if m is None else float(m)}
            for i, b, r, c, m in zip(ids, bleu_each[3], rouge_each, cider_each, meteor_each)}
    return {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider),
            "meteor": None if meteor is None else float(meteor), "scored": len(ids),
            "tokenizer": empty["tokenizer"]}, each
