"""A static HTML gallery of a caption output: keyframe, caption, duration, resolution, flags and errors per
video; search, filters and paging; an optional side-by-side comparison with a second run.

One self-contained directory: ``index.html``, ``thumbs/*.jpg`` and ``data/page-NNNNN.js``. Pages are
small JavaScript files loaded on demand with ``<script>`` tags, so the gallery works straight from disk
(``file://``, where browsers refuse ``fetch``) and from ``python -m http.server``, and stays fast with
100k rows: only the pages being looked at (or searched) are loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

from pipeline import schema as S
from pipeline.tools.query import read_captions
from pipeline.io.masking import public_uri
from pipeline.io.output_store import OutputStore, sample_key

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gallery_template.html")


def script_json(value) -> str:
    """JSON that is safe inside an HTML ``<script>`` element and in a JavaScript file: ``<``, ``>``, ``&`` and
    the line separators U+2028/U+2029 become ``\\u`` escapes, so no text (a title, a path, a caption) can
    close the element or break the script."""
    text = json.dumps(value)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def thumb_name(key: str) -> str:
    """A short, safe file name for a sample's keyframe (ids can be longer than a file name may be)."""
    return hashlib.sha1(key.encode()).hexdigest()[:24] + ".jpg"


def _write_thumbs(outputs: list[str], wanted: set[str], thumbs_dir: str, storage_options: dict | None) -> set[str]:
    """Copy the keyframes of the ``wanted`` sample keys from the outputs' WebDataset shards into ``thumbs_dir``,
    streaming one tar member at a time (memory does not grow with the output); returns the keys written."""
    written: set[str] = set()
    for output in outputs:
        for key, jpeg in OutputStore(output, storage_options).keyframes(wanted - written):
            with open(os.path.join(thumbs_dir, thumb_name(key)), "wb") as out:
                out.write(jpeg)
            written.add(key)
    return written


def _number(value) -> float | None:
    """A finite number, or None: a foreign Parquet file may hold text (markup) in the numeric columns."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _text(value) -> str | None:
    return None if value is None else str(value)


def _card(row: dict, thumb: str | None, other: dict | None) -> dict:
    """What the page shows of a row: texts as strings, numbers as numbers or None, whatever the file held
    (the page escapes every field too)."""
    flags = [name.removeprefix("flag_") for name in S.FLAGS if row.get(name)]
    card = {
        "id": _text(row[S.VIDEO_ID]), "uri": _text(row[S.URI]), "caption": _text(row[S.CAPTION]),
        "error": _text(row[S.ERROR]), "stage": _text(row[S.ERROR_STAGE]), "duration": _number(row[S.DURATION_S]),
        "width": _number(row[S.WIDTH]), "height": _number(row[S.HEIGHT]), "flags": flags, "thumb": thumb,
        "model": _text(row[S.MODEL]),
    }
    if other is not None:
        card.update(caption_b=_text(other.get(S.CAPTION)), error_b=_text(other.get(S.ERROR)),
                    model_b=_text(other.get(S.MODEL)))
    return card


def gallery_index(title: str, rows: int, pages: int, page_size: int, outputs: list[str],
                  compare: list[str] | None) -> dict:
    """What ``index.html`` embeds. The sources as they may be shown: a URI's user info or signed query would
    otherwise be written into the page."""
    return {"title": title, "rows": rows, "pages": pages, "page_size": page_size, "compare": bool(compare),
            "sources": [public_uri(o) for o in outputs], "compare_sources": [public_uri(o) for o in compare or []]}


def build_gallery(
    outputs: list[str],
    out_dir: str,
    compare: list[str] | None = None,
    page_size: int = 200,
    storage_options: dict | None = None,
    title: str = "Captions",
) -> dict:
    """Write the gallery to the local folder ``out_dir``; returns its index (rows, pages, compare)."""
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    table = read_captions(outputs, storage_options).sort_by(S.VIDEO_ID)
    others = {}
    if compare:
        other = read_captions(compare, storage_options)
        others = {r[S.VIDEO_ID]: r for r in other.select([S.VIDEO_ID, S.CAPTION, S.ERROR, S.MODEL]).to_pylist()}
    os.makedirs(os.path.join(out_dir, "thumbs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    columns = [S.VIDEO_ID, S.URI, S.CAPTION, S.ERROR, S.ERROR_STAGE, S.DURATION_S, S.WIDTH, S.HEIGHT, S.MODEL,
               *S.FLAGS]
    rows = table.select(columns).to_pylist()
    with_thumbs = _write_thumbs(outputs, {sample_key(r[S.VIDEO_ID]) for r in rows if r[S.CAPTION] is not None},
                                os.path.join(out_dir, "thumbs"), storage_options)
    pages = max(1, -(-len(rows) // page_size))
    for number in range(pages):
        cards = []
        for row in rows[number * page_size : (number + 1) * page_size]:
            key = sample_key(row[S.VIDEO_ID])
            thumb = f"thumbs/{thumb_name(key)}" if key in with_thumbs else None
            cards.append(_card(row, thumb, others.get(row[S.VIDEO_ID]) if compare else None))
        with open(os.path.join(out_dir, "data", f"page-{number:05d}.js"), "w", encoding="utf-8") as f:
            f.write(f"window.galleryPage({number}, {script_json(cards)});\n")
    index = gallery_index(title, len(rows), pages, page_size, outputs, compare)
    with open(TEMPLATE, encoding="utf-8") as f:
        html = f.read().replace("__GALLERY_INDEX__", script_json(index))
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(html)
    return index


__all__ = ["build_gallery"]
