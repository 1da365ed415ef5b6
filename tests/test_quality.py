"""Caption quality flags: each fires on its own failure mode and none fires on a clean caption."""

import pyarrow as pa
import pytest

from model.prompts import DEFAULT_RECAPTION_QUERY, DEFAULT_SYSTEM_PROMPT, get_template
from pipeline import schema as S
from pipeline.quality import CaptionFlagger, QualityThresholds, repeat_ratio, words

PROMPT = get_template("vicuna").render(DEFAULT_RECAPTION_QUERY)
FLAGGER = CaptionFlagger([PROMPT, DEFAULT_SYSTEM_PROMPT, DEFAULT_RECAPTION_QUERY])
CLEAN = ("A man in a light jacket walks his dog along a wet city street at dusk while cars pass slowly "
         "behind him and the camera follows from a short distance.")

CASES = {
    S.FLAG_EMPTY: "   ",
    S.FLAG_REPETITION: "the dog runs in the park " * 10,
    S.FLAG_PROMPT_ECHO: "You are a careful video describer. You are shown frames sampled evenly from one video clip.",
    S.FLAG_SHORT: "A dog.",
}


def fired(flags):
    return {name for name in S.FLAGS if flags[name]}


def test_a_clean_caption_raises_no_flag():
    assert fired(FLAGGER.flags(CLEAN, truncated=False)) == set()


@pytest.mark.parametrize("flag", sorted(CASES))
def test_each_flag_fires_on_its_case(flag):
    assert flag in fired(FLAGGER.flags(CASES[flag], truncated=False))


def test_role_tags_count_as_echo():
    assert S.FLAG_PROMPT_ECHO in fired(FLAGGER.flags("The video shows a cat. USER: describe ASSISTANT: a cat", False))


def test_truncation_comes_from_generation():
    assert fired(FLAGGER.flags(CLEAN, truncated=True)) == {S.FLAG_TRUNCATED}


def test_error_rows_have_no_flags():
    assert all(v is None for v in FLAGGER.flags(None, None).values())


def test_repeat_ratio_and_thresholds_are_configurable():
    loop = words("a b c d " * 5)
    assert repeat_ratio(loop, 4) == pytest.approx(1 - 4 / 17)
    assert repeat_ratio(words(CLEAN), 4) == 0.0
    strict = CaptionFlagger([PROMPT], QualityThresholds(min_words=40))
    assert S.FLAG_SHORT in fired(strict.flags(CLEAN, False))
    with pytest.raises(ValueError):
        QualityThresholds(max_repeat_ratio=0)


def test_flags_are_added_as_columns_without_touching_the_input():
    table = pa.table({S.CAPTION: [CLEAN, CASES[S.FLAG_SHORT], None], S.TRUNCATED: [False, True, None]})
    flagged = FLAGGER.add_columns(table)
    assert table.column_names == [S.CAPTION, S.TRUNCATED]
    assert flagged.column(S.FLAG_SHORT).to_pylist() == [False, True, None]
    assert flagged.column(S.FLAG_TRUNCATED).to_pylist() == [False, True, None]
