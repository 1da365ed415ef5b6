"""A static HTML gallery of a caption output: keyframe, caption, duration, resolution, flags and errors per
video; search, filters and paging; an optional side-by-side comparison with a second run.

One self-contained directory: ``index.html``, ``thumbs/*.jpg`` and ``data/page-NNNNN.js``. Pages are
small JavaScript files loaded on demand with ``<script>`` tags, so the gallery works straight from disk
(``file://``, where browsers refuse ``fetch``) and from ``python -m http.server``, and stays fast with
100k rows: only the pages being looked at (or searched) are loaded.
"""

from __future__ import annotations

import io
import json
import os
import tarfile



from pipeline import schema as S
from pipeline.query import read_captions
from pipeline.sinks import WEBDATASET_DIR, sample_key
from pipeline.storage import get_fs, join, list_files

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gallery_template.html")


def _keyframes(outputs: list[str], storage_options: dict | None) -> dict[str, bytes]:
    """``{sample key: jpeg}`` from the WebDataset shards of the outputs (absent shards: no thumbnails)."""
    found: dict[str, bytes] = {}
    for output in outputs:
        for uri in list_files(join(output, WEBDATASET_DIR), storage_options, suffix=".tar"):
            fs, path = get_fs(uri, storage_options)
            with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(".jpg"):
                        found[member.name.rsplit("/", 1)[-1][: -len(".jpg")]] = tar.extractfile(member).read()
    return found


def _card(row: dict, thumb: str | None, other: dict | None) -> dict:
    flags = [name.removeprefix("flag_") for name in S.FLAGS if row.get(name)]
    card = {
        "id": row[S.VIDEO_ID], "uri": row[S.URI], "caption": row[S.CAPTION], "error": row[S.ERROR],
        "stage": row[S.ERROR_STAGE], "duration": row[S.DURATION_S], "width": row[S.WIDTH],
        "height": row[S.HEIGHT], "flags": flags, "thumb": thumb, "model": row[S.MODEL],
    }
    if other is not None:
        card.update(caption_b=other.get(S.CAPTION), error_b=other.get(S.ERROR), model_b=other.get(S.MODEL))
    return card


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
    keyframes = _keyframes(outputs, storage_options)
    os.makedirs(os.path.join(out_dir, "thumbs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    columns = [S.VIDEO_ID, S.URI, S.CAPTION, S.ERROR, S.ERROR_STAGE, S.DURATION_S, S.WIDTH, S.HEIGHT, S.MODEL,
               *S.FLAGS]
    rows = table.select(columns).to_pylist()
    pages = max(1, -(-len(rows) // page_size))
    for number in range(pages):
        cards = []
        for row in rows[number * page_size : (number + 1) * page_size]:
            key = sample_key(row[S.VIDEO_ID])
            thumb = None
            if key in keyframes:
                thumb = f"thumbs/{key}.jpg"
                with open(os.path.join(out_dir, thumb), "wb") as f:
                    f.write(keyframes[key])
            cards.append(_card(row, thumb, others.get(row[S.VIDEO_ID]) if compare else None))
        with open(os.path.join(out_dir, "data", f"page-{number:05d}.js"), "w", encoding="utf-8") as f:
            f.write(f"window.galleryPage({number}, {json.dumps(cards)});\n")
    index = {"title": title, "rows": len(rows), "pages": pages, "page_size": page_size, "compare": bool(compare),
             "sources": outputs, "compare_sources": compare or []}
    with open(TEMPLATE, encoding="utf-8") as f:
        html = f.read().replace("__GALLERY_INDEX__", json.dumps(index))
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(html)
    return index


__all__ = ["build_gallery"]
