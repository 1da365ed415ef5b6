"""Video lists in every supported format become VideoRef rows with stable ids; missing videos are error rows."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.config import SourceConfig
from pipeline.sources import detect_format, read_video_refs, stable_video_id


def refs(cfg):
    rows = read_video_refs(cfg).take_all()
    return sorted(rows, key=lambda r: r[S.URI])


@pytest.fixture()
def files(tmp_path):
    for name in ("a.mp4", "b.mkv", "c.webm", "notes.txt"):
        (tmp_path / "videos" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(b"x")
    return tmp_path


def test_txt_with_comments_blank_lines_and_relative_paths(ray_local, files):
    listing = files / "videos" / "list.txt"
    listing.write_text(f"# my videos\n\na.mp4\n{files}/videos/b.mkv\n  \n")
    rows = refs(SourceConfig(input=str(listing)))
    assert [r[S.URI] for r in rows] == [f"{files}/videos/a.mp4", f"{files}/videos/b.mkv"]
    assert all(r[S.ERROR] is None for r in rows)
    assert rows[0][S.VIDEO_ID] == stable_video_id(f"{files}/videos/a.mp4")


def test_csv_with_ids_clip_bounds_and_extra_columns(ray_local, files):
    listing = files / "list.csv"
    listing.write_text("path,video_id,start_s,end_s,source\n"
                       f"{files}/videos/a.mp4,clip-1,1.5,4.0,web\n{files}/videos/a.mp4,,,,web\n")
    rows = refs(SourceConfig(input=str(listing)))
    by_id = {r[S.VIDEO_ID]: r for r in rows}
    assert by_id["clip-1"][S.START_S] == 1.5 and by_id["clip-1"][S.END_S] == 4.0
    derived = [i for i in by_id if i != "clip-1"][0]
    assert derived == stable_video_id(f"{files}/videos/a.mp4")
    assert {r["source"] for r in rows} == {"web"}


def test_jsonl_and_parquet(ray_local, files):
    items = [{"uri": f"{files}/videos/a.mp4", "caption_old": "x"}, {"uri": f"{files}/videos/b.mkv", "caption_old": "y"}]
    (files / "list.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    pq.write_table(pa.Table.from_pylist(items), files / "list.parquet")
    for name in ("list.jsonl", "list.parquet"):
        rows = refs(SourceConfig(input=str(files / name)))
        assert [r["caption_old"] for r in rows] == ["x", "y"], name


def test_inter4k_annotations_first_existing_extension_wins(ray_local, files):
    (files / "annotations.json").write_text(json.dumps([{"video_name": "a"}, {"video_name": "c"},
                                                        {"video_name": "zzz", "note": "gone"}]))
    cfg = SourceConfig(input=str(files / "annotations.json"), videos_prefix=str(files / "videos"),
                       extensions=("mp4", "mkv", "webm"))
    rows = {r[S.VIDEO_ID]: r for r in read_video_refs(cfg).take_all()}
    assert rows["a"][S.URI].endswith("videos/a.mp4") and rows["c"][S.URI].endswith("videos/c.webm")
    assert rows["zzz"][S.ERROR_STAGE] == "source" and rows["zzz"][S.ERROR_REASON] == "not_found"
    assert "zzz" in rows["zzz"][S.ERROR] and rows["zzz"]["note"] == "gone"


def test_bare_prefix_lists_video_files_only(ray_local, files):
    rows = refs(SourceConfig(input=str(files / "videos")))
    assert [os.path.basename(r[S.URI]) for r in rows] == ["a.mp4", "b.mkv", "c.webm"]


def test_list_without_a_uri_column_names_the_columns(ray_local, files):
    (files / "bad.csv").write_text("name,size\na,1\n")
    with pytest.raises(Exception, match="uri_column"):
        read_video_refs(SourceConfig(input=str(files / "bad.csv"))).take_all()


def test_missing_list_fails_before_the_job_starts(ray_local, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video_refs(SourceConfig(input=str(tmp_path / "nope.txt")))


def test_format_detection():
    assert [detect_format(u) for u in ("s3://b/l.txt", "l.CSV", "x.jsonl", "x.parquet", "annotations.json", "s3://b/videos/")] \
        == ["txt", "csv", "jsonl", "parquet", "annotations", "prefix"]
