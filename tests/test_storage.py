"""Object-store reads (pipeline.io.storage) retry transient failures (a real flaky HTTP server) and fail at once
on permanent ones, telling the two apart by the error; writes are atomic."""

import http.server
import os
import threading

import pytest

from pipeline.io.storage import StorageError, RetryPolicy, permanent_reason, read_bytes, with_retries, write_atomic

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.02)


class FlakyServer(http.server.ThreadingHTTPServer):
    """Serves /video.mp4 after ``failures`` 503 answers; /missing gives 404; /forbidden 403."""

    def __init__(self, failures: int):
        self.failures = failures
        self.requests = 0
        super().__init__(("127.0.0.1", 0), FlakyHandler)


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    body = b"0123456789" * 100

    def log_message(self, *args):
        pass

    def _answer(self, with_body: bool):
        self.server.requests += 1
        if self.path == "/missing":
            self.send_error(404)
            return
        if self.path == "/forbidden":
            self.send_error(403)
            return
        if self.server.failures > 0:
            self.server.failures -= 1
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(self.body)

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)


@pytest.fixture()
def flaky():
    servers = []

    def start(failures):
        server = FlakyServer(failures)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_transient_errors_are_retried_until_the_read_succeeds(flaky):
    server, url = flaky(failures=2)
    assert read_bytes(f"{url}/video.mp4", retry=FAST) == FlakyHandler.body
    assert server.requests >= 3


def test_retries_are_bounded(flaky):
    server, url = flaky(failures=100)
    with pytest.raises(StorageError, match="after 4 attempts") as info:
        read_bytes(f"{url}/video.mp4", retry=FAST)
    assert info.value.reason == "io"


@pytest.mark.parametrize(("path", "reason"), [("/missing", "not_found"), ("/forbidden", "permission")])
def test_permanent_errors_fail_at_once(flaky, path, reason):
    server, url = flaky(failures=0)
    with pytest.raises(StorageError) as info:
        read_bytes(url + path, retry=FAST)
    assert info.value.reason == reason
    assert server.requests <= 2  # no retry loop (fsspec may HEAD then GET once)


def test_local_missing_file(tmp_path):
    with pytest.raises(StorageError) as info:
        read_bytes(f"file://{tmp_path}/nope.mp4", retry=FAST)
    assert info.value.reason == "not_found"


def test_atomic_local_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "deep" / "part.parquet"
    write_atomic(str(target), b"abc")
    write_atomic(f"file://{target}", b"abcd")
    assert target.read_bytes() == b"abcd"
    assert os.listdir(target.parent) == ["part.parquet"]


@pytest.mark.parametrize(("exc", "reason"), [
    (FileNotFoundError(2, "gone"), "not_found"), (PermissionError(13, "no"), "permission"),
    (IsADirectoryError(21, "dir"), "not_a_file"), (NotADirectoryError(20, "under a file"), "bad_path"),
    (OSError(36, "File name too long"), "bad_path"), (ValueError("embedded null byte"), "bad_path"),
    (TypeError("bad argument"), "bad_path"), (ConnectionResetError(104, "reset"), None), (TimeoutError(), None),
])
def test_permanent_failures_are_told_from_transient_ones(exc, reason):
    assert permanent_reason(exc) == reason


def test_a_client_side_validation_error_is_not_retried():
    botocore = pytest.importorskip("botocore.exceptions")
    calls = []

    def bad_request():
        calls.append(1)
        raise botocore.ParamValidationError(report='Invalid bucket name "KEY:SECRET@bucket"')

    with pytest.raises(StorageError) as info:
        with_retries("s3://KEY:SECRET@bucket/v.mp4", "reading", bad_request, FAST)
    assert info.value.reason == "bad_path" and len(calls) == 1
    assert "SECRET" not in str(info.value) and "s3://bucket/v.mp4" in str(info.value)


def test_a_list_behind_a_failing_store_is_a_transient_failure_not_a_missing_file(flaky):
    from pipeline.config import SourceConfig
    from pipeline.io.sources import VideoListError, read_video_refs

    _, url = flaky(failures=10**6)  # every request answers 503
    s3_options = {"key": "id", "secret": "value", "client_kwargs": {"endpoint_url": url, "region_name": "us-east-1"},
                  "config_kwargs": {"retries": {"max_attempts": 1}}}
    for uri, options in (("s3://lists/videos.txt", s3_options), (f"{url}/videos.txt", None)):
        with pytest.raises(VideoListError, match="transient I/O failure") as info:
            read_video_refs(SourceConfig(input=uri), options, retry=FAST)
        assert "503" in str(info.value) and "after 4 attempts" in str(info.value)


def test_the_sampler_counts_the_retries_each_video_needed(flaky):
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.frames import SamplingConfig
    from pipeline.sampler import FrameSampler

    _, url = flaky(failures=2)  # two 503s, then the (undecodable) body
    batch = pa.table({S.VIDEO_ID: ["v"], S.URI: [f"{url}/video.mp4"], S.START_S: pa.nulls(1, pa.float64()),
                      S.END_S: pa.nulls(1, pa.float64()), S.ERROR: pa.nulls(1, pa.string()),
                      S.ERROR_STAGE: pa.nulls(1, pa.string()), S.ERROR_REASON: pa.nulls(1, pa.string())})
    row = FrameSampler(SamplingConfig(num_frames=2, image_size=32), retry=FAST)(batch).to_pylist()[0]
    assert row[S.READ_RETRIES] >= 1 and row[S.ERROR_STAGE] == "decode"  # read after retrying, then not a video
