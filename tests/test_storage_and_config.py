"""Object-store reads retry transient failures (a real flaky HTTP server) and fail at once on permanent ones,
writes are atomic, configs are validated as a whole, and credentials are masked wherever they appear."""

import http.server
import json
import os
import threading

import pytest

from pipeline.config import JobConfig
from pipeline.io.masking import mask_text, public_uri, redact, userinfo_secrets
from pipeline.io.storage import ReadError, RetryPolicy, permanent_reason, read_bytes, with_retries, write_atomic

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
    for needle in ("source.input: String should have at least 1 character", "source.format: Input should be",
                   "resources.batch_size: Input should be greater than or equal to 1", "output.formats.0:",
                   "sampling.num_frames: Input should be greater than or equal to 1", "bogus: unknown key"):
        assert needle in text, needle
    assert len(text.splitlines()) == 7  # the title and one line per problem


def test_unknown_keys_are_named_with_the_keys_there_are():
    with pytest.raises(ValueError, match=r"model\.lora_rank: unknown key; known: .*lora_alpha") as info:
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "model": {"lora_rank": 4}})
    assert "required" not in str(info.value)  # an unknown key is not also a missing one


def test_values_are_read_as_their_types_and_shapes_are_checked():
    cfg = JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "resources": {"batch_size": "8"}})
    assert cfg.resources.batch_size == 8  # a quoted number in YAML is that number
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y", "formats": "parquet"},
                             "resources": {"batch_size": "eight"}})
    text = str(info.value)
    assert "output.formats: Input should be a valid tuple" in text  # a string is not a list of formats
    assert "resources.batch_size: Input should be a valid integer" in text
    with pytest.raises(ValueError, match=r"output\.formats: Value error, must include parquet|must include parquet"):
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y", "formats": ["webdataset"]}})
    with pytest.raises(ValueError, match=r"source: required[\s\S]*output: required"):
        JobConfig.from_dict({})


def test_credentials_are_masked():
    options = {"key": "AKIA123", "secret": "s3cr3t", "client_kwargs": {"aws_session_token": "tok", "region_name": "eu"},
               "anon": False}
    assert redact(options) == {"key": "***", "secret": "***", "client_kwargs": {"aws_session_token": "***",
                                                                               "region_name": "eu"}, "anon": False}
    cfg = JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "storage_options": options})
    assert "s3cr3t" not in repr(cfg.to_dict()) and cfg.to_dict()["source"]["input"] == "x"
    assert cfg.to_dict(redacted=False)["storage_options"]["secret"] == "s3cr3t"


def test_credentials_in_headers_cookies_and_urls_are_masked():
    options = {
        "client_kwargs": {"headers": {"Authorization": "Bearer hdr-token-123", "X-Api-Key": "apikey-456"},
                          "endpoint_url": "http://minio:pw-in-url@minio.local:9000",
                          "proxies": {"https": "http://proxyuser:proxy-pass@proxy:3128"}},
        "cookie": "session=cookie-789", "passphrase": "pass-phrase", "auth": ("u", "basic-pw"),
        "sas_token": "sv=2024&sig=sas-sig", "region_name": "eu-west-1", "anon": False,
    }
    masked = repr(redact(options))
    for secret in ("hdr-token-123", "apikey-456", "pw-in-url", "proxy-pass", "cookie-789", "pass-phrase", "basic-pw",
                   "sas-sig"):
        assert secret not in masked, secret
    assert "eu-west-1" in masked and "minio.local:9000" in masked and "'anon': False" in masked

    # Built without the config's checks: no one filesystem takes all these options (from_dict refuses them,
    # test_storage_options), but to_dict must mask whatever a config holds.
    from pipeline.config import OutputConfig, SourceConfig
    from pipeline.io.masking import StorageOptions

    cfg = JobConfig.model_construct(source=SourceConfig(input="s3://AKIAUSER:list-secret@bucket/list.txt"),
                                    output=OutputConfig(output="https://host/out?X-Amz-Signature=sig-abc&x=1"),
                                    storage_options=StorageOptions(options))
    shown = json.dumps(cfg.to_dict())
    for secret in ("list-secret", "sig-abc", "hdr-token-123", "pw-in-url"):
        assert secret not in shown, secret
    assert "s3://***@bucket/list.txt" in shown and "x=1" in shown


def test_uris_lose_user_info_and_signatures_and_text_is_scrubbed():
    assert public_uri("s3://KEY:SECRET@bucket/v.mp4") == "s3://bucket/v.mp4"
    assert public_uri("https://h/v.mp4?X-Amz-Credential=cred&X-Amz-Signature=abc&part=2") == \
        "https://h/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&part=2"
    assert public_uri("/data/a@b/v.mp4") == "/data/a@b/v.mp4"  # an @ in a local path is not user info
    text = 'Invalid bucket name "KEY:SECRET@bucket"; header Authorization: Bearer abcdef123456'
    scrubbed = mask_text(text, userinfo_secrets("s3://KEY:SECRET@bucket/v.mp4"))
    assert "SECRET" not in scrubbed and "abcdef123456" not in scrubbed and "bucket" in scrubbed


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

    with pytest.raises(ReadError) as info:
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


def test_storage_credentials_are_a_secret_type_shown_masked_but_used_in_full(caplog):
    import logging

    from pipeline.io.storage import get_fs

    cfg = JobConfig.from_dict({"source": {"input": "s3://b/l.txt"}, "output": {"output": "s3://b/o"},
                               "storage_options": {"key": "AKIAEXAMPLE", "secret": "S3CR3T",
                                                   "client_kwargs": {"region_name": "eu"}}})
    with caplog.at_level("INFO"):
        logging.getLogger("test").info("config %s, options %r", cfg, cfg.storage_options)
    shown = repr(cfg) + str(cfg) + caplog.text + repr(cfg.to_dict())
    assert "S3CR3T" not in shown and "AKIAEXAMPLE" not in shown and "eu" in shown
    fs, _ = get_fs("s3://b/l.txt", cfg.storage_options)  # the store still gets the real credentials
    assert (fs.key, fs.secret) == ("AKIAEXAMPLE", "S3CR3T")
    assert cfg.to_dict(redacted=False)["storage_options"]["secret"] == "S3CR3T"
