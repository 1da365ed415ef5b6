"""Credentials (pipeline.io.masking) are masked wherever they appear: storage options, headers, cookies, URLs,
configs and logs, while the store still gets them in full."""

import json

from pipeline.config import JobConfig
from pipeline.io.masking import mask_text, public_uri, redact, userinfo_secrets


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


def test_tokens_in_fragments_and_percent_encoded_signatures_are_masked():
    assert public_uri("https://h/v.mp4#access_token=tok-123&x=1") == "https://h/v.mp4#access_token=***&x=1"
    nested = "https://cdn/r?u=https%3A%2F%2Fs3%2Fx.mp4%3FX-Amz-Signature%3Dsig-456%26part%3D2&q=2"
    assert public_uri(nested) == "https://cdn/r?u=https%3A%2F%2Fs3%2Fx.mp4%3FX-Amz-Signature%3D***%26part%3D2&q=2"
    assert "sig-789" not in mask_text("GET https://cdn/r?u=a.mp4%3Fpart%3D3%26sig%3Dsig-789 failed")
    assert "sig-7" not in public_uri("https://cdn/r?u=a.mp4%3Bsig%3Dsig-7") + public_uri("https://h/v?x%3Dy_token=sig-7")
    for plain in ("https://h/a%20b.mp4", "https://h/v.mp4#t=10", "/data/clip%201.mp4", "/data/take#auth=2.mp4",
                  "/data/Q%26A_keynote%3D2024.mp4"):
        assert public_uri(plain) == plain  # a local path's "#" and "%" are file name characters


def test_masking_keeps_the_other_parameters_of_an_encoded_url_apart():
    """The masked form is also a video's identity (its derived id, the id check's input): two videos that differ
    after a secret must stay two."""
    a = "https://www.google.com/url?q=https%3A%2F%2Fv.example.com%2Fwatch%3Fauthor%3Dalice%26id%3D41&sa=D"
    b = a.replace("id%3D41", "id%3D42")
    assert public_uri(a) != public_uri(b) and "alice" not in public_uri(a)


def test_masking_a_long_run_of_separators_takes_linear_time():
    import time

    for text in ("%3F" * 33_000, "?" * 100_000, "%26token" * 12_000, "#" * 100_000):
        started = time.perf_counter()
        public_uri("https://h/" + text)
        mask_text(text)
        assert time.perf_counter() - started < 10, text[:12]  # a hang guard: quadratic took minutes


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
