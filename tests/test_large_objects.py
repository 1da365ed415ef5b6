"""A video far larger than the in-memory limit is streamed to a local file before decoding, so a decode actor's
memory does not grow with object size (measured against reading the same object into memory, in one run)."""

import json
import os
import subprocess
import sys

import pytest
import s3fs

from pipeline.generated_videos import write_video

from helpers import ROOT
OBJECT_MB = 200

PEAK_RSS = """
import json, sys
sys.path.insert(0, {root!r})
import pyarrow as pa
from pipeline import schema as S
from pipeline.frames import SamplingConfig
from pipeline.sampler import FrameSampler
batch = pa.table({{S.VIDEO_ID: ["big"], S.URI: [{uri!r}], S.START_S: pa.nulls(1, pa.float64()),
                   S.END_S: pa.nulls(1, pa.float64()), S.ERROR: pa.nulls(1, pa.string()),
                   S.ERROR_STAGE: pa.nulls(1, pa.string()), S.ERROR_REASON: pa.nulls(1, pa.string())}})
sampler = FrameSampler(SamplingConfig(num_frames=4, image_size=64), max_in_memory_mb={limit})
row = sampler(batch).to_pylist()[0]
# VmHWM: this process image's peak (ru_maxrss would carry the forking parent's size across exec).
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"error": row[S.ERROR], "frames": row[S.FRAME_COUNT], "peak_mb": peak_kb / 1024}}))
"""


def peak_rss(uri: str, limit_mb: float) -> dict:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS.format(root=ROOT, uri=uri, limit=limit_mb)],
                            capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_large_object_is_decoded_without_holding_it_in_memory(s3_endpoint, tmp_path):
    # A real clip (index first) followed by 200 MB that no decoder reads: the object's size is what counts here.
    path = write_video(str(tmp_path / "big.mp4"), 160, 120, 24, 12, seed=3, faststart=True)
    with open(path, "ab") as f:
        for _ in range(OBJECT_MB):
            f.write(b"\0" * (1024 * 1024))
    fs = s3fs.S3FileSystem()
    fs.mkdir("large-objects")
    fs.put(path, "large-objects/big.mp4")
    uri = "s3://large-objects/big.mp4"

    spooled = peak_rss(uri, limit_mb=64)
    in_memory = peak_rss(uri, limit_mb=OBJECT_MB * 2)
    print(f"decode peak RSS for a {OBJECT_MB} MB object: streamed to disk {spooled['peak_mb']:.0f} MB, "
          f"read into memory {in_memory['peak_mb']:.0f} MB")
    assert spooled["error"] is None and spooled["frames"] == 24
    assert in_memory["error"] is None and in_memory["frames"] == 24
    assert spooled["peak_mb"] < in_memory["peak_mb"] - OBJECT_MB * 0.75
