"""Gallery escaping without a browser: a foreign Parquet file with markup in every column, numbers included,
and the page's own card renderer run by Node on hostile cards, its HTML parsed (not grepped)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.tools.gallery import TEMPLATE, build_gallery, gallery_index

SCRIPT = "<script>window.pwned=1</script>"
BREAKOUT = '"><img src=x onerror="window.pwned=1">'
QUOTE = "' onmouseover='window.pwned=1"
HOSTILE = f"{SCRIPT}{BREAKOUT}{QUOTE}"
# What the page's own markup may hold: its elements and attributes, nothing a field could add.
ALLOWED_TAGS = {"div", "span", "img", "br", "h4"}
ALLOWED_ATTRIBUTES = {"class", "data-id", "loading", "src", "alt"}


class Markup(HTMLParser):
    """The elements, attributes and text of an HTML fragment, as a browser's tokenizer sees them."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text = ""
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def render_cards(cards: list[dict], compare: bool) -> list[str]:
    """The gallery page's ``card()`` function (read from the shipped template) run by Node on ``cards``."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("the renderer check needs node (Debian: apt-get install nodejs)")
    template = open(TEMPLATE, encoding="utf-8").read()
    functions = template[template.index("function esc"):template.index("async function render")]
    program = (f"const INDEX = {json.dumps({'compare': compare})};\n{functions}\n"
               f"process.stdout.write(JSON.stringify({json.dumps(cards)}.map(card)));")
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_inert(html: str) -> Markup:
    markup = Markup(html)
    for tag, attrs in markup.tags:
        assert tag in ALLOWED_TAGS, f"markup from the data: <{tag}> in {html}"
        assert set(attrs) <= ALLOWED_ATTRIBUTES, f"attributes from the data: {attrs} in {html}"
        if tag == "img":
            assert attrs["src"].startswith("thumbs/"), html
    return markup


def _foreign_output(root) -> str:
    """An output folder holding one foreign Parquet file: markup in every column, numeric ones included."""
    out = root / "foreign"
    (out / "parquet").mkdir(parents=True)
    pq.write_table(pa.table({
        S.VIDEO_ID: [f"id{HOSTILE}"], S.URI: [f"/videos/{HOSTILE}.mp4"], S.CAPTION: [f"caption {HOSTILE}"],
        S.ERROR: [f"error {HOSTILE}"], S.ERROR_STAGE: [f"stage {HOSTILE}"], S.MODEL: [f"model {HOSTILE}"],
        S.DURATION_S: [HOSTILE], S.WIDTH: [BREAKOUT], S.HEIGHT: [SCRIPT],
    }), out / "parquet" / "part-00000.parquet")
    return str(out)


def test_numeric_columns_holding_text_reach_the_page_as_nothing(tmp_path):
    build_gallery([_foreign_output(tmp_path)], str(tmp_path / "site"))
    page = open(tmp_path / "site" / "data" / "page-00000.js", encoding="utf-8").read()
    cards = json.loads(re.fullmatch(r"window\.galleryPage\(0, (.*)\);\n", page, re.S).group(1))
    assert [(c["width"], c["height"], c["duration"]) for c in cards] == [(None, None, None)]
    assert cards[0]["caption"] == f"caption {HOSTILE}" and cards[0]["id"] == f"id{HOSTILE}"
    for compare in (False, True):
        for html in render_cards(cards, compare):
            markup = assert_inert(html)
            assert f"error {HOSTILE}" in markup.text and f"/videos/{HOSTILE}.mp4" in markup.text


@pytest.mark.parametrize("compare", [False, True])
def test_the_page_escapes_every_field_of_a_card_numbers_included(compare):
    """The renderer itself, on cards whose every field is hostile (as a page file edited by hand, or one
    written by an older gallery, would be): each field stays text."""
    card = {key: f"{key} {HOSTILE}" for key in ("id", "uri", "caption", "error", "stage", "model", "caption_b",
                                                  "error_b", "model_b")}
    card.update(width=BREAKOUT, height=SCRIPT, duration=HOSTILE, flags=[f"flag {HOSTILE}"], thumb=None)
    numeric = {**card, "width": 640, "height": 360, "duration": 2.0, "thumb": "thumbs/abc.jpg"}
    plain, hostile = render_cards([numeric, card], compare)
    assert "640×360" in Markup(plain).text and "2.0 s" in Markup(plain).text
    markup = assert_inert(hostile)
    for literal in (f"id {HOSTILE}", f"uri {HOSTILE}", f"flag {HOSTILE}", BREAKOUT, SCRIPT):
        assert literal in markup.text, literal
    assert markup.tags[0][1]["data-id"] == f"id {HOSTILE}"


def test_the_page_does_not_show_the_sources_credentials():
    index = gallery_index("t", 1, 1, 10, ["s3://KEYID:SECRETVALUE@bucket/run?X-Amz-Signature=abc123"],
                          ["https://user:pw@host/run_b"])
    assert index["sources"] == ["s3://bucket/run?X-Amz-Signature=***"]
    assert index["compare_sources"] == ["https://host/run_b"]


def test_the_gallery_command_names_a_missing_output_without_a_traceback(tmp_path, capsys):
    from jobs.build_gallery import main

    assert main([str(tmp_path / "nothing"), "--to", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--to", str(tmp_path / "site"), "--page-size", "0"])
