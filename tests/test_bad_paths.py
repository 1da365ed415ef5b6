"""Hostile paths and headers: each becomes one error row with a clear stage and reason, never an exception that
aborts the job (the FrameSampler stage called directly, as its Ray actor calls it)."""

import json
import os
import shutil
import stat
import struct
import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline import schema as S
from pipeline.frames import SamplingConfig
from pipeline.generated_videos import write_video
from pipeline.sampler import FrameSampler

from helpers import ROOT
SAMPLING = SamplingConfig(num_frames=4, image_size=64)


def refs(uris):
    n = len(uris)
    return pa.table({S.VIDEO_ID: [f"v{i}" for i in range(n)], S.URI: uris, S.START_S: pa.nulls(n, pa.float64()),
                     S.END_S: pa.nulls(n, pa.float64()), S.ERROR: pa.nulls(n, pa.string()),
                     S.ERROR_STAGE: pa.nulls(n, pa.string()), S.ERROR_REASON: pa.nulls(n, pa.string())})


def outcome(rows):
    return [(r[S.ERROR_STAGE], r[S.ERROR_REASON]) for r in rows]


def test_impossible_local_paths_are_read_errors_of_their_own_kind(tmp_path):
    good = write_video(str(tmp_path / "good.mp4"), 96, 64, 8, 8, seed=1)
    (tmp_path / "folder.mp4").mkdir()
    uris = [
        good,
        good + "/under_a_file.mp4",  # NotADirectoryError
        str(tmp_path / ("x" * 300 + ".mp4")),  # File name too long
        str(tmp_path / "nul\x00byte.mp4"),  # ValueError: embedded null byte
        str(tmp_path / "folder.mp4"),  # a directory
        str(tmp_path / "missing.mp4"),
    ]
    rows = FrameSampler(SAMPLING)(refs(uris)).to_pylist()
    assert outcome(rows) == [(None, None), ("read", "bad_path"), ("read", "bad_path"), ("read", "bad_path"),
                             ("read", "not_a_file"), ("read", "not_found")]
    assert rows[0][S.FRAME_COUNT] == 8
    assert "too long" in rows[2][S.ERROR] and "null" in rows[3][S.ERROR]


PERMISSION_CHECK = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_bad_paths import SAMPLING, refs, outcome
from pipeline.sampler import FrameSampler
print(json.dumps(outcome(FrameSampler(SAMPLING)(refs({uris!r})).to_pylist())))
"""


def without_dac_override() -> list[str]:
    """A command prefix under which even root meets file permissions: root's capabilities to override them
    dropped (``setpriv``, util-linux); nothing for other users."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed: file permissions cannot bind")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_unreadable_files_and_folders_are_permission_errors(tmp_path):
    readable = write_video(str(tmp_path / "ok.mp4"), 96, 64, 8, 8, seed=2)
    (tmp_path / "locked").mkdir()
    hidden = write_video(str(tmp_path / "locked" / "in_locked.mp4"), 96, 64, 8, 8, seed=3)
    unreadable = shutil.copy(readable, str(tmp_path / "unreadable.mp4"))
    os.chmod(unreadable, 0)
    os.chmod(tmp_path / "locked", 0)
    try:
        script = PERMISSION_CHECK.format(root=ROOT, tests=os.path.join(ROOT, "tests"), uris=[readable, hidden, unreadable])
        result = subprocess.run([*without_dac_override(), sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=120)
    finally:
        os.chmod(tmp_path / "locked", stat.S_IRWXU)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[None, None], ["read", "permission"],
                                                                  ["read", "permission"]]


HUGE_HEADER_CHECK = """
import sys
sys.path.insert(0, {root!r})
from pipeline.frames import SamplingConfig, sample_frames
video = sample_frames(open({path!r}, "rb").read(), SamplingConfig(num_frames=4, image_size=64))
print(video.info.decoder, video.info.frame_count)
"""


def test_a_container_claiming_billions_of_frames_is_read_from_its_real_frames(tmp_path):
    """decord sizes its index from the header and aborts the whole process (std::bad_alloc) on such a file;
    a child process keeps a regression from taking the test session down with it."""
    path = write_video(str(tmp_path / "liar.mkv"), 96, 64, 12, 12, seed=4)
    data = (tmp_path / "liar.mkv").read_bytes()
    at = data.index(b"\x44\x89\x88")  # Matroska Segment Duration, an 8-byte float in timecode units (ms)
    (tmp_path / "liar.mkv").write_bytes(data[: at + 3] + struct.pack(">d", 1e12) + data[at + 11:])
    result = subprocess.run([sys.executable, "-c", HUGE_HEADER_CHECK.format(root=ROOT, path=path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["pyav", "12"]


def write_audio_only(path):
    import av
    import numpy as np

    with av.open(path, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_devices_pipes_audio_and_bombs_are_error_rows_not_hangs_or_out_of_memory(tmp_path):
    fifo = str(tmp_path / "pipe.mp4")
    os.mkfifo(fifo)  # opening it for reading would block forever
    gif = write_video(str(tmp_path / "small.gif"), 64, 64, 4, 10, codec="gif")
    bomb = bytearray(open(gif, "rb").read())
    bomb[6:10] = struct.pack("<HH", 16000, 16000)  # GIF logical screen: 256 M pixels per frame, 2 KB file
    (tmp_path / "bomb.gif").write_bytes(bytes(bomb))
    uris = ["/dev/zero", fifo, write_audio_only(str(tmp_path / "sound.mp4")), str(tmp_path / "bomb.gif")]
    rows = FrameSampler(SAMPLING)(refs(uris)).to_pylist()
    assert outcome(rows) == [("read", "not_a_file"), ("read", "not_a_file"), ("decode", "no_video_stream"),
                             ("decode", "too_large")]


def test_a_video_with_more_frames_than_allowed_is_too_large(tmp_path):
    path = write_video(str(tmp_path / "long.mkv"), 96, 64, 12, 12, seed=5)
    rows = FrameSampler(SAMPLING.model_copy(update={"max_frames": 5}))(refs([path])).to_pylist()
    assert outcome(rows) == [("decode", "too_large")]


def test_a_video_uri_with_credentials_is_read_without_them(s3_endpoint, tmp_path):
    """README: user info in a URI is not used for access. Left in, s3fs took ``KEY:SECRET@bucket`` for the
    bucket's name and every such row failed read/bad_path although the stored (public) URI is readable."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.makedirs("userinfo-videos", exist_ok=True)
    fs.put(write_video(str(tmp_path / "v.mp4"), 96, 64, 8, 8, seed=6), "userinfo-videos/v.mp4")
    uris = ["s3://AKIAUSER:uri-secret-Tk41@userinfo-videos/v.mp4", "s3://AKIAUSER:uri-secret-Tk41@userinfo-videos/gone.mp4"]
    rows = FrameSampler(SAMPLING)(refs(uris)).to_pylist()
    assert outcome(rows) == [(None, None), ("read", "not_found")]
    assert rows[0][S.FRAME_COUNT] == 8 and "uri-secret-Tk41" not in rows[1][S.ERROR]


def test_an_object_store_prefix_or_bucket_is_not_a_file_like_a_local_folder(s3_endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.makedirs("prefix-videos", exist_ok=True)
    fs.put(write_video(str(tmp_path / "v.mp4"), 96, 64, 8, 8, seed=7), "prefix-videos/folder.mp4/v.mp4")
    uris = ["s3://prefix-videos/folder.mp4", "s3://prefix-videos/folder.mp4/", "s3://prefix-videos"]
    assert outcome(FrameSampler(SAMPLING)(refs(uris)).to_pylist()) == [("read", "not_a_file")] * 3
