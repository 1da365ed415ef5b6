"""Object-store reads retry transient failures (a real flaky HTTP server), writes are atomic, configs are
validated as a whole, and credentials are masked."""

import http.server
import os
import threading

import pytest

from pipeline.config import JobConfig
from pipeline.masking import redact
from pipeline.storage import ReadError, RetryPolicy, read_bytes, write_atomic

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
    with pytest.raises(ReadError, match="after 4 attempts") as info:
        read_bytes(f"{url}/video.mp4", retry=FAST)
    assert info.value.reason == "io"


@pytest.mark.parametrize(("path", "reason"), [("/missing", "not_found"), ("/forbidden", "permission")])
def test_permanent_errors_fail_at_once(flaky, path, reason):
    server, url = flaky(failures=0)
    with pytest.raises(ReadError) as info:
        read_bytes(url + path, retry=FAST)
    assert info.value.reason == reason
    assert server.requests <= 2  # no retry loop (fsspec may HEAD then GET once)


def test_local_missing_file(tmp_path):
    with pytest.raises(ReadError) as info:
        read_bytes(f"file://{tmp_path}/nope.mp4", retry=FAST)
    assert info.value.reason == "not_found"


def test_atomic_local_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "deep" / "part.parquet"
    write_atomic(str(target), b"abc")
    write_atomic(f"file://{target}", b"abcd")
    assert target.read_bytes() == b"abcd"
    assert os.listdir(target.parent) == ["part.parquet"]


def test_every_config_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict({
            "source": {"input": "", "format": "xml"},
            "resources": {"batch_size": 0},
            "output": {"output": "/tmp/x", "formats": ["csv"]},
            "sampling": {"num_frames": 0},
            "bogus": {},
        })
    text = str(info.value)
    for needle in ("source.input is required", "source.format", "resources.batch_size", "output.formats",
                   "num_frames", "unknown config section 'bogus'"):
        assert needle in text, needle


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown keys in model: \['lora_rank'\]"):
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "model": {"lora_rank": 4}})


def test_credentials_are_masked():
    options = {"key": "AKIA123", "secret": "s3cr3t", "client_kwargs": {"aws_session_token": "tok", "region_name": "eu"},
               "anon": False}
    assert redact(options) == {"key": "***", "secret": "***", "client_kwargs": {"aws_session_token": "***",
                                                                               "region_name": "eu"}, "anon": False}
    cfg = JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "storage_options": options})
    assert "s3cr3t" not in repr(cfg.to_dict()) and cfg.to_dict()["source"]["input"] == "x"
    assert cfg.to_dict(redacted=False)["storage_options"]["secret"] == "s3cr3t"
