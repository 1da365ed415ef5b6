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

Captions: BLEU-4, ROUGE-L and CIDEr from pycocoevalcap (the COCO caption evaluation code). Its PTB tokenizer
and METEOR / SPICE need Java and are not used: text is lower-cased and split into words without punctuation.
"""

from __future__ import annotations

import re
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
    """Lower-cased words without punctuation, space-separated (what the metrics compare)."""
    return " ".join(_WORD.findall(text.lower()))


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> tuple[dict, dict]:
    """Corpus BLEU-4, ROUGE-L and CIDEr of ``predictions`` (id -> caption) against ``references``
    (id -> captions), over the ids that have both; and per id its own scores.

    Returns:
        ``({"bleu4", "rouge_l", "cider", "scored"}, {id: {"bleu4", "rouge_l", "cider"}})``; empty scores when
        nothing can be scored.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        raise ImportError("caption metrics need pycocoevalcap: pip install -e '.[eval]'") from exc

    ids = sorted(i for i in predictions if i in references and caption_words(predictions[i]))
    if not ids:
        return {"bleu4": None, "rouge_l": None, "cider": None, "scored": 0}, {}
    res = {i: [caption_words(predictions[i])] for i in ids}
    gts = {i: [caption_words(r) for r in references[i]] for i in ids}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    each = {i: {"bleu4": float(b), "rouge_l": float(r), "cider": float(c)}
            for i, b, r, c in zip(ids, bleu_each[3], rouge_each, cider_each)}
    return {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider), "scored": len(ids)}, each
