"""Names in the output come from hashes and sanitised keys, never from raw input: hostile ids and URIs cannot
place a file or a tar member outside the output folder, and our own SQL never interpolates them."""

import os
import tarfile

import pyarrow as pa

from pipeline import schema as S
from pipeline.config import OutputConfig
from pipeline.tools.query import VIEWS
from pipeline.sinks import ShardWriter

HOSTILE_IDS = ["../../escape", "/etc/passwd", "a/b/c", "..", "x\x00y", "C:\\windows\\evil", "-rf", "é" * 300,
               "a" * 300, "a" * 299 + "b"]


def test_hostile_ids_stay_inside_the_output_and_its_tars(tmp_path):
    out = tmp_path / "out"
    n = len(HOSTILE_IDS)
    ShardWriter(OutputConfig(output=str(out), formats=("parquet", "webdataset")), run_id="r")(pa.table({
        S.VIDEO_ID: HOSTILE_IDS, S.URI: [f"/videos/{i}.mp4" for i in range(n)], S.CAPTION: ["c"] * n,
        S.ERROR: pa.nulls(n, pa.string()), S.ERROR_STAGE: pa.nulls(n, pa.string()),
        S.ERROR_REASON: pa.nulls(n, pa.string())}))
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path) for f in files]
    assert written and all(os.path.realpath(p).startswith(str(out) + os.sep) for p in written)
    assert sorted(os.listdir(out)) == ["parquet", "webdataset"]
    (tar_path,) = [p for p in written if p.endswith(".tar")]
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert len(names) == n
    assert all("/" not in name and "\\" not in name and not name.startswith(".") for name in names)
    # Each member name fits a file system's 255-byte name limit, and long ids that share a prefix stay apart.
    assert all(len(name.encode()) <= 255 for name in names) and len(set(names)) == n


def test_ready_made_views_take_no_text_from_the_data_or_the_user():
    assert all("{" not in sql.replace("{limit}", "") for sql in VIEWS.values())
