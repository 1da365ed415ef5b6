"""Video lists in every supported format become VideoRef rows with stable ids; missing videos are error rows."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.config import SourceConfig
from pipeline.io.sources import detect_format, read_video_refs, stable_video_id


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
    # A folder of Parquet files (a dataset written by another tool): every file, hidden ones skipped.
    (files / "listing").mkdir()
    pq.write_table(pa.Table.from_pylist(items[:1]), files / "listing" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(items[1:]), files / "listing" / "part-1.parquet")
    pq.write_table(pa.Table.from_pylist(items), files / "listing" / "_tmp.parquet")
    rows = refs(SourceConfig(input=str(files / "listing"), format="parquet"))
    assert sorted(r["caption_old"] for r in rows) == ["x", "y"]


def test_inter4k_annotations_first_existing_extension_wins(ray_local, files):
    (files / "annotations.json").write_text(json.dumps([{"video_name": "a"}, {"video_name": "c"},
                                                        {"video_name": "zzz", "note": "gone"}]))
    cfg = SourceConfig(input=str(files / "annotations.json"), videos_prefix=str(files / "videos"),
                       extensions=("mp4", "mkv", "webm"))
    rows = {r[S.VIDEO_ID]: r for r in read_video_refs(cfg).take_all()}
    assert rows["a"][S.URI].endswith("videos/a.mp4") and rows["c"][S.URI].endswith("videos/c.webm")
    assert rows["zzz"][S.ERROR_STAGE] == "source" and rows["zzz"][S.ERROR_REASON] == "not_found"
    assert "zzz" in rows["zzz"][S.ERROR] and rows["zzz"]["note"] == "gone"


def test_annotations_are_parsed_off_the_driver_and_names_resolve_under_subfolders(ray_local, files):
    (files / "videos" / "day1").mkdir()
    (files / "videos" / "day1" / "d.mkv").write_bytes(b"x")
    (files / "ann.json").write_text(json.dumps([{"video_name": "day1/d", "tags": ["x"]}, {"video_name": "a"}]))
    cfg = SourceConfig(input=str(files / "ann.json"), videos_prefix=str(files / "videos"))
    rows = {r[S.VIDEO_ID]: r for r in read_video_refs(cfg).take_all()}
    assert rows["day1/d"][S.URI] == str(files / "videos" / "day1" / "d.mkv") and rows["day1/d"][S.ERROR] is None
    assert rows["day1/d"]["tags"] == '["x"]' and "_resolved_uri" not in rows["a"]  # nested fields become JSON text
    (files / "flat.json").write_text(json.dumps({"video_name": "a"}))
    with pytest.raises(ValueError, match="expected a JSON list of objects"):
        read_video_refs(SourceConfig(input=str(files / "flat.json"), videos_prefix=str(files / "videos")))


def test_a_large_list_file_is_read_in_pieces_without_losing_or_repeating_a_row(ray_local, files, monkeypatch):
    import pipeline.io.sources as sources

    monkeypatch.setattr(sources, "LIST_PIECE_BYTES", 700)  # about 40 lines a piece: several pieces, cut mid-line
    names = [f"clip-{i:04d}.mp4" for i in range(300)]
    lists = {
        "list.txt": "# header comment\n" + "".join(f"{n}\n" if i % 7 else f"{n}\n\n" for i, n in enumerate(names)),
        "list.csv": "uri,tag\n" + "".join(f"{n},t{i}\n" for i, n in enumerate(names)),
        "list.jsonl": "".join(json.dumps({"uri": n, "tag": f"t{i}"}) + "\n" for i, n in enumerate(names)),
    }
    for name, text in lists.items():
        (files / name).write_text(text)
        pieces = sources.list_pieces([str(files / name)], sources.detect_format(name), None)
        assert len(pieces) > 5 and all(len(p) == 1 and "offset" in p[0] for p in pieces)
        rows = read_video_refs(SourceConfig(input=str(files / name))).take_all()
        got = sorted(os.path.basename(r[S.URI]) for r in rows)
        assert got == names, name  # every line once (Ray Data does not promise to keep list order)
        if name != "list.txt":  # csv pieces keep the header: every row still has its own tag
            assert all(r["tag"] == f"t{int(os.path.basename(r[S.URI])[5:9])}" for r in rows)
    pq.write_table(pa.table({"uri": names}), files / "list.parquet", row_group_size=25)
    pieces = sources.list_pieces([str(files / "list.parquet")], "parquet", None)
    assert len(pieces) > 1 and sorted(g for p in pieces for g in p[0]["row_groups"]) == list(range(12))
    rows = read_video_refs(SourceConfig(input=str(files / "list.parquet"))).take_all()
    assert sorted(os.path.basename(r[S.URI]) for r in rows) == names


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


def test_rows_take_their_uri_from_whichever_column_they_have_and_rows_without_one_are_errors(ray_local, files):
    lines = [{"uri": f"{files}/videos/a.mp4"}, {"path": "b.mkv"}, {"path": "c.webm", "note": "x"},
             {"note": "no video here"}, {"uri": "  ", "note": "blank"}]
    (files / "mixed.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    rows = read_video_refs(SourceConfig(input=str(files / "mixed.jsonl"), videos_prefix=str(files / "videos"))).take_all()
    good = sorted(r[S.URI] for r in rows if r[S.ERROR] is None)
    assert good == [f"{files}/videos/{n}" for n in ("a.mp4", "b.mkv", "c.webm")]
    bad = [r for r in rows if r[S.ERROR] is not None]
    assert len(bad) == 2 and all((r[S.ERROR_STAGE], r[S.ERROR_REASON]) == ("source", "no_uri") for r in bad)
    assert all(r[S.URI] == "" and "None" not in r[S.ERROR] for r in bad)
    assert len({r[S.VIDEO_ID] for r in rows}) == 5  # each bad row keeps an id of its own


def test_clip_bounds_that_are_not_seconds_are_error_rows_not_a_failed_job(ray_local, files):
    (files / "bounds.csv").write_text("uri,start_s,end_s\n"
                                      f"{files}/videos/a.mp4,1.5,4\n"
                                      f"{files}/videos/a.mp4,1:30,\n"
                                      f"{files}/videos/b.mkv,5,2\n"
                                      f"{files}/videos/c.webm,-1,\n")
    rows = read_video_refs(SourceConfig(input=str(files / "bounds.csv"))).take_all()
    ok = [r for r in rows if r[S.ERROR] is None]
    assert [(r[S.START_S], r[S.END_S]) for r in ok] == [(1.5, 4.0)]
    bad = [r for r in rows if r[S.ERROR] is not None]
    assert [(r[S.ERROR_STAGE], r[S.ERROR_REASON]) for r in bad] == [("source", "bad_bounds")] * 3
    assert any("'1:30'" in r[S.ERROR] for r in bad)
    assert len({r[S.VIDEO_ID] for r in rows}) == 4


def test_limit_counts_videos_not_comment_lines(ray_local, files):
    (files / "commented.txt").write_text("# first line is a comment\n\na.mp4\nb.mkv\nc.webm\n")
    rows = read_video_refs(SourceConfig(input=str(files / "commented.txt"), limit=2)).take_all()
    assert sorted(os.path.basename(r[S.URI]) for r in rows) == ["a.mp4", "b.mkv"]


def test_videos_already_done_are_dropped_where_the_list_is_read(ray_local, files):
    import ray

    from pipeline.skip import RowTally, SkipDone

    (files / "long.txt").write_text("# a comment\n" + "".join(f"v{i:03d}.mp4\n" for i in range(100)))
    cfg = SourceConfig(input=str(files / "long.txt"))
    everything = read_video_refs(cfg, rows_per_block=8).take_all()
    done = pa.array(sorted(r[S.VIDEO_ID] for r in everything if r[S.URI] < str(files / "v090.mp4")), pa.string())
    tally = RowTally.remote()
    left = read_video_refs(cfg, rows_per_block=8, keep=SkipDone(done, tally))
    # Read (and counted) when the call returns; the blocks hold only what is left: 10 rows, not 13 blocks' worth.
    assert ray.get(tally.totals.remote()) == {"read": 100, "done": 90}
    assert sorted(os.path.basename(r[S.URI]) for r in left.take_all()) == [f"v{i:03d}.mp4" for i in range(90, 100)]
    assert sum(1 for _ in left.iter_internal_ref_bundles()) == 2
    # With a limit the first videos of the list are taken, then the done ones dropped (as without `keep`).
    limited = read_video_refs(SourceConfig(input=str(files / "long.txt"), limit=95), keep=SkipDone(done))
    assert sorted(os.path.basename(r[S.URI]) for r in limited.take_all()) == [f"v{i:03d}.mp4" for i in range(90, 95)]


def test_a_piece_of_the_list_read_again_is_counted_once(ray_local, files, monkeypatch):
    """Ray reads a piece of the list again when a block of it is lost with its node (lineage reconstruction):
    its rows were counted as read twice, and a run that wrote every row ended as incomplete. Here the reading
    task of one piece runs twice, as a reconstruction runs it, beside the tasks of the other pieces."""
    import ray

    import pipeline.io.sources as sources
    from pipeline.io.sources import NormaliseRefs, _Prepare, _read_list_blocks, list_pieces
    from pipeline.skip import RowTally, SkipDone

    monkeypatch.setattr(sources, "LIST_PIECE_BYTES", 64)  # a 1,000-byte list in pieces of about 64 bytes
    (files / "pieces.txt").write_text("".join(f"w{i:03d}.mp4\n" for i in range(100)))
    cfg = SourceConfig(input=str(files / "pieces.txt"))
    pieces = list_pieces([cfg.input], "txt", None)
    assert len(pieces) > 3
    done = pa.array(sorted(r[S.VIDEO_ID] for r in read_video_refs(cfg).take_all())[:10], pa.string())
    tally = RowTally.remote()
    prepare = _Prepare(NormaliseRefs(cfg, "txt", str(files)), SkipDone(done, tally))
    runs = [pieces[0], *pieces, pieces[-1]]  # the first and the last piece read twice
    for chunk in runs:
        list(_read_list_blocks.remote(chunk, "txt", None, sources.RetryPolicy(), 8, len(pieces), prepare))
    assert ray.get(tally.totals.remote()) == {"read": 100, "done": 10}
    # Counts sent outside a piece (the windows' second skip, a limited list) still add up.
    ray.get(tally.add.remote(done=2))
    ray.get(tally.add.remote(done=3))
    assert ray.get(tally.totals.remote()) == {"read": 100, "done": 15}


def test_video_ids_do_not_hold_or_depend_on_uri_credentials():
    assert stable_video_id("s3://KEY:SECRET@bucket/v.mp4") == stable_video_id("s3://bucket/v.mp4")
    assert stable_video_id("https://h/v.mp4?X-Amz-Signature=one") == stable_video_id("https://h/v.mp4?X-Amz-Signature=two")


def test_bad_lines_in_a_list_read_in_pieces_name_their_real_line_and_keep_their_id(ray_local, files, monkeypatch):
    """A large list is read by several tasks from byte offsets: a bad line far into the file still names its
    line in the file, its id is the same on a second read, and a column whose type changes between pieces
    (a number in one, text in another) does not fail the blocks that meet downstream."""
    import pipeline.io.sources as sources

    monkeypatch.setattr(sources, "LIST_PIECE_BYTES", 700)  # several pieces, cut mid-line
    bad_at = {7, 150, 299}  # 1-based line numbers of the bad lines
    jsonl, csv_text = [], ["uri,tag"]
    for line in range(1, 301):
        tag = line if line < 200 else f"t{line}"  # a number early, text late
        jsonl.append('{"uri": "v%d.mp4", "tag": ' % line if line in bad_at else json.dumps({"uri": f"v{line}.mp4", "tag": tag}))
        if line > 1:  # the csv header is line 1
            csv_text.append(f"v{line}.mp4,{tag},extra" if line in bad_at else f"v{line}.mp4,{tag}")
    (files / "big.jsonl").write_text("\n".join(jsonl) + "\n")
    (files / "big.csv").write_text("\n".join(csv_text) + "\n")
    for name in ("big.jsonl", "big.csv"):
        assert len(sources.list_pieces([str(files / name)], sources.detect_format(name), None)) > 5
        cfg = SourceConfig(input=str(files / name))
        rows = read_video_refs(cfg, rows_per_block=16).repartition(1).take_all()  # one block from every piece
        bad = sorted((r for r in rows if r[S.ERROR]), key=lambda r: r[S.ERROR])
        assert [(r[S.ERROR_STAGE], r[S.ERROR_REASON]) for r in bad] == [("source", "bad_row")] * 3, name
        assert sorted(int(r[S.ERROR].split("line ")[1].split(" ")[0]) for r in bad) == sorted(bad_at), name
        assert all(str(files / name) in r[S.ERROR] for r in bad)
        good = sorted(int(os.path.basename(r[S.URI])[1:-4]) for r in rows if not r[S.ERROR])
        assert good == [n for n in range(2 if name == "big.csv" else 1, 301) if n not in bad_at], name
        assert all(r["tag"] == (str(n) if n < 200 else f"t{n}") for r in rows if not r[S.ERROR]
                   for n in [int(os.path.basename(r[S.URI])[1:-4])])
        again = read_video_refs(cfg).take_all()
        assert sorted(r[S.VIDEO_ID] for r in again if r[S.ERROR]) == sorted(r[S.VIDEO_ID] for r in bad)


def test_a_list_that_cannot_be_used_at_all_is_one_clear_error_not_a_task_traceback(ray_local, files):
    from pipeline.io.sources import VideoListError

    (files / "dup.csv").write_text("uri,uri\na.mp4,b.mp4\n")
    (files / "broken.parquet").write_bytes(b"not a parquet file")
    (files / "nouri.jsonl").write_text('{"name": "a"}\n')
    for name, says in (("dup.csv", "names the column 'uri' twice"), ("broken.parquet", "not a readable Parquet"),
                       ("nouri.jsonl", "set source.uri_column")):
        with pytest.raises(VideoListError) as caught:
            read_video_refs(SourceConfig(input=str(files / name))).take_all()
        assert says in str(caught.value) and "Traceback" not in str(caught.value), name


def test_uri_credentials_are_not_used_to_reach_the_list(ray_local, s3_endpoint):
    """``s3://KEY:SECRET@bucket/list.txt`` is read as ``s3://bucket/list.txt`` with the configured credentials
    (left in, s3fs took ``KEY:SECRET@bucket`` for the bucket's name); relative rows resolve next to it and keep
    no credentials once stored (the sink stores public URIs)."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.makedirs("userinfo-list", exist_ok=True)
    fs.pipe("userinfo-list/list.txt", b"a.mp4\n")
    rows = read_video_refs(SourceConfig(input="s3://AKIAUSER:not-the-secret@userinfo-list/list.txt")).take_all()
    assert [(r[S.URI], r[S.ERROR]) for r in rows] == [("s3://AKIAUSER:not-the-secret@userinfo-list/a.mp4", None)]
    assert rows[0][S.VIDEO_ID] == stable_video_id("s3://userinfo-list/a.mp4")
