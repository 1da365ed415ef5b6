"""Storage options a filesystem would refuse are a config error before the run, naming the key with its value
masked; ``headers`` is a real option of http(s) URLs (fsspec sends it with every request) and works there."""

import http.server
import subprocess
import sys
import threading

import pytest

from helpers import ROOT, job_config
from pipeline.io.storage import read_bytes
from pipeline.io.storage_options import storage_option_problems

SECRET = "Bearer header-secret-Pq93"


def test_headers_on_s3_are_a_config_error_naming_the_key_with_its_value_masked():
    with pytest.raises(ValueError) as caught:
        job_config("s3://bucket/list.txt", "/tmp/out", storage_options={"headers": {"Authorization": SECRET}})
    text = str(caught.value)
    assert "storage_options.headers (value ***): not an option of the s3:// filesystem" in text
    assert "header-secret" not in text and "endpoint_url" in text  # the options s3 does take are listed


def test_every_refused_option_is_named_at_once_and_valid_ones_pass():
    problems = storage_option_problems(
        {"key": "AKIA", "secret": "s", "profiles": "x", "config_kwargs": {"retries": {"max_attempts": 1}, "retry": 2},
         "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "region": "x"}},
        ["s3://b/list.txt", "s3://b/out", None, "/local/list.txt"])
    assert [p.split(" (value")[0] for p in problems] == [
        "storage_options.profiles", "storage_options.client_kwargs.region", "storage_options.config_kwargs.retry"]
    assert storage_option_problems({"key": "AKIA", "secret": "s", "anon": False, "use_listings_cache": False,
                                    "client_kwargs": {"endpoint_url": "http://x"}, "profile": "p"},
                                   ["s3://b/list.txt"]) == []
    assert storage_option_problems({"headers": {"X-Token": "t"}}, ["https://h/list.txt", "/local/out"]) == []
    assert storage_option_problems({"header": {"X-Token": "t"}}, ["https://h/list.txt"])[0].startswith(
        "storage_options.header (value ***): not an option of the https:// filesystem")


class HeaderCheckingHandler(http.server.BaseHTTPRequestHandler):
    """Serves a list only to requests that carry the expected Authorization header."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        ok = self.headers.get("Authorization") == SECRET
        body = b"a.mp4\n" if ok else b"forbidden"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


def test_headers_are_sent_with_http_reads():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HeaderCheckingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/list.txt"
        assert read_bytes(url, {"headers": {"Authorization": SECRET}}) == b"a.mp4\n"
        job_config(url, "/tmp/out", storage_options={"headers": {"Authorization": SECRET}})  # accepted
    finally:
        server.shutdown()


@pytest.mark.slow
def test_the_job_script_stops_with_the_config_error_not_a_traceback(tmp_path):
    (tmp_path / "job.yaml").write_text(f"storage_options: {{headers: {{Authorization: '{SECRET}'}}}}\n")
    result = subprocess.run([sys.executable, "jobs/recaption.py", "--input", "s3://bucket/list.txt", "--output",
                             str(tmp_path / "out"), "--model", "tiny", "--config", str(tmp_path / "job.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "storage_options.headers (value ***)" in result.stderr and "Traceback" not in result.stderr
    assert "header-secret" not in result.stderr + result.stdout
