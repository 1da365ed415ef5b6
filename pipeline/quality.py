"""Caption quality flags: the failure modes PLLaVA users report (blank output, echoed prompt or role tags,
repetition loops) plus captions cut by the token limit and very short ones. Plain functions, no Ray."""

from __future__ import annotations

import re
import pyarrow as pa
from pydantic import Field

from model.settings import FrozenSettings
from pipeline import schema as S

ROLE_TAGS = ("USER:", "ASSISTANT:", "<|im_start|>", "<|im_end|>", "<image>", "</s>", "<s>")
_WORD = re.compile(r"\w+", re.UNICODE)

FLAG_COLUMNS = {
    S.FLAG_EMPTY: pa.bool_(),
    S.FLAG_TRUNCATED: pa.bool_(),
    S.FLAG_REPETITION: pa.bool_(),
    S.FLAG_PROMPT_ECHO: pa.bool_(),
    S.FLAG_SHORT: pa.bool_(),
    S.REPEAT_RATIO: pa.float64(),
}


class QualityThresholds(FrozenSettings):
    """``repeat_ngram``-word n-grams repeated in more than ``max_repeat_ratio`` of positions flag a loop;
    ``echo_ngram`` consecutive words shared with the prompt (or any role tag) flag an echo; fewer than
    ``min_words`` words flag a very short caption."""

    repeat_ngram: int = Field(4, ge=1, le=1000)
    max_repeat_ratio: float = Field(0.3, gt=0, le=1)
    echo_ngram: int = Field(8, ge=1, le=1000)
    min_words: int = Field(8, ge=0, le=100_000)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repeat_ratio(tokens: list[str], n: int) -> float:
    """Share of n-gram positions whose n-gram already occurred earlier (0: no repeats, -> 1: a loop)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class CaptionFlagger:
    """Flags for captions produced from ``prompt_texts`` (the rendered prompt, system prompt, query)."""

    def __init__(self, prompt_texts: list[str], thresholds: QualityThresholds = QualityThresholds()) -> None:
        self.thresholds = thresholds
        self.prompt_grams: set[tuple[str, ...]] = set()
        for text in prompt_texts:
            self.prompt_grams |= _ngrams(words(text), thresholds.echo_ngram)

    def flags(self, caption: str | None, truncated: bool | None) -> dict:
        """All flags of one caption; every flag is None for a row without a caption (an error row)."""
        if caption is None:
            return {name: None for name in FLAG_COLUMNS}
        t = self.thresholds
        tokens = words(caption)
        ratio = repeat_ratio(tokens, t.repeat_ngram)
        echo = any(tag in caption for tag in ROLE_TAGS) or bool(_ngrams(tokens, t.echo_ngram) & self.prompt_grams)
        return {
            S.FLAG_EMPTY: not caption.strip(),
            S.FLAG_TRUNCATED: bool(truncated),
            S.FLAG_REPETITION: ratio > t.max_repeat_ratio,
            S.FLAG_PROMPT_ECHO: echo,
            S.FLAG_SHORT: bool(caption.strip()) and len(tokens) < t.min_words,
            S.REPEAT_RATIO: ratio,
        }

    def add_columns(self, table: pa.Table) -> pa.Table:
        """``table`` with the flag columns set (replacing any present); a new table, nothing in place."""
        captions = table.column(S.CAPTION).to_pylist()
        truncated = (table.column(S.TRUNCATED).to_pylist() if S.TRUNCATED in table.column_names
                     else [None] * table.num_rows)
        rows = [self.flags(c, t) for c, t in zip(captions, truncated)]
        return S.with_columns(table, {name: (kind, [r[name] for r in rows]) for name, kind in FLAG_COLUMNS.items()})
