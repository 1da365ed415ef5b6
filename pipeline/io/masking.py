"""Keep credentials out of everything the job logs, stores or prints.

Secrets reach a job three ways: storage options (``key``, ``secret``, ``client_kwargs.headers.Authorization``,
...), URIs with user info or signed query strings (``s3://KEY:SECRET@bucket/v.mp4``,
``https://host/v.mp4?X-Amz-Signature=...``), and exception texts that quote either. Options are masked by
key and by value shape; URIs keep their place but lose the secret; free text is scrubbed by shape and by
the literal secrets it may quote.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

MASK = "***"
# Option keys whose values are credentials (matched as substrings of the lower-cased key).
SECRET_KEY_MARKERS = ("key", "secret", "token", "password", "passwd", "passphrase", "credential", "session",
                      "auth", "cookie", "sas", "signature", "private")
# scheme://user:password@host -> the user info part. A password may hold an unencoded "/" (AWS secret keys
# often do): after "user:" everything up to the "@" is taken, unless it starts like a port ("host:8080/...").
USERINFO_PATTERN = r"(?:[^/\s@?#:]+:(?!\d{1,5}(?:[/?#\s]|$))[^\s@?#]*|[^/\s@?#]+)"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)(" + USERINFO_PATTERN + ")@")
# ?X-Amz-Signature=...&sig=...&token=... -> the value. The parameter name around the keyword is bounded (64
# characters a side), so a long URI of separators is scanned in linear time, not rescanned from each one.
_KEYWORD = r"(?:sig|key|secret|token|password|credential|auth)"


def _secret_params(separators: str) -> re.Pattern:
    return re.compile(r"(?i)(" + separators + r"[^=&#\s]{0,64}?" + _KEYWORD + r"[^=&#\s]{0,64}=)[^&#\s]+")


_SECRET_QUERY = _secret_params("[?&;]")  # in a local path (where "#" and "%" are only file name characters)
_SECRET_PARAM = _secret_params("[?&;#]")  # in a URL: its query, and its fragment (#access_token=..., OAuth)
# Percent-encoded inside another URL's query (...?u=https%3A%2F%2Fs3%2Fv.mp4%3FX-Amz-Signature%3D...): the value
# ends at the next separator, encoded or not, so the inner URL's other parameters stay apart.
_ENCODED_NAME = r"(?:(?!%3[Dd]|%26)[^=&#\s])"
_SECRET_ENCODED = re.compile(r"(?i)((?:%3F|%26|%23|%3B)" + _ENCODED_NAME + r"{0,64}?" + _KEYWORD + _ENCODED_NAME
                             + r"{0,64}%3D)(?:(?!%26|%23)[^&#\s])+")
_MAYBE_PARAMS = re.compile(r"[?&;#%]")
# Authorization header values quoted in text.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[A-Za-z0-9._~+/=\-]{6,}")
_AUTH_FIELD = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?!bearer\b|basic\b|digest\b)[^\s\"',}]+")


def userinfo_secrets(uri: str) -> list[str]:
    """The literal secrets of a URI's user info (whole, and each of user and password, raw and unquoted),
    so that error texts quoting the URI without its scheme can be scrubbed too."""
    match = _USERINFO.search(uri)
    if not match:
        return []
    info = match.group(2)
    parts = {info, *info.split(":", 1)}
    parts |= {unquote(p) for p in parts}
    return sorted((p for p in parts if p), key=len, reverse=True)


def basic_auth_token(uri: str) -> str | None:
    """The ``Authorization: Basic`` token an HTTP client sends for a URI's user info (None without one): a
    server that echoes the header quotes this form, not the password."""
    match = _USERINFO.search(uri)
    if not match:
        return None
    user, _, password = match.group(2).partition(":")
    return base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()


def public_uri(uri: str) -> str:
    """``uri`` as it may be stored and shown: user info removed, secret query values masked."""
    if "@" in uri:
        uri = _USERINFO.sub(r"\1", uri)
    if not _MAYBE_PARAMS.search(uri):
        return uri  # no pattern can match (most URIs of a list: one search per row, not three regexes)
    if "://" not in uri:
        return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, uri)
    uri = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, uri)
    return _SECRET_ENCODED.sub(lambda m: m.group(1) + MASK, uri) if "%" in uri else uri


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL user info, signed query values, ``Bearer``/``Basic`` credentials and the given
    literal ``secrets`` masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_ENCODED.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _AUTH_FIELD.sub(lambda m: m.group(1) + MASK, text)


def mask_values(data: Any) -> Any:
    """A copy of a nested structure with every string scrubbed by :func:`mask_text` (keys are not judged)."""
    if isinstance(data, str):
        return mask_text(data)
    if isinstance(data, dict):
        return {k: mask_values(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(mask_values(v) for v in data)
    return data


def is_secret_key(key: Any) -> bool:
    return any(marker in str(key).lower() for marker in SECRET_KEY_MARKERS)


def redacted_config(config) -> dict[str, Any]:
    """A job or training config (a pydantic model with ``storage_options``) as plain data with credentials
    masked: ``storage_options`` by key and value, every other string by value shape (URL user info, signed
    URLs)."""
    data = mask_values(config.model_dump(mode="json"))
    data["storage_options"] = redact(config.storage_options)
    return data


def redact(options: Any) -> Any:
    """A copy of storage options (or any credentials structure) with secrets masked by key and by value."""
    if isinstance(options, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "", {}, []) else redact(v))
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return mask_values(options)


class StorageOptions(dict):
    """fsspec storage options as a secret-bearing type: it is the plain dict fsspec and s3fs take, but its
    ``repr``/``str`` (what logs, tracebacks and f-strings show) and its pickled form's ``repr`` are masked, so
    a stray ``print(cfg)`` or ``logger.info("%s", options)`` never shows a key or a token."""

    def __repr__(self) -> str:
        return repr(redact(dict(self)))

    __str__ = __repr__


class MaskingFilter(logging.Filter):
    """A logging filter that rewrites each record's message through :func:`mask_text` with the given literal
    secrets (the record is kept; only its text changes)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: left for the handler to report, as logging does
            return True
        masked = mask_text(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


@contextlib.contextmanager
def masked_logs(prefixes: Iterable[str], secrets: Iterable[str] = ()) -> Iterator[None]:
    """Mask the records of the loggers named ``prefixes`` and of every existing logger under them while the
    block runs. A logger's own filters see only its own records (not its children's), so each is filtered:
    third-party HTTP clients log request URLs, user info included, on loggers of their own."""
    masking = MaskingFilter(secrets)
    prefixes = tuple(prefixes)
    names = set(prefixes) | {name for name in logging.root.manager.loggerDict
                             if name.startswith(tuple(p + "." for p in prefixes))}
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for each in loggers:
        each.addFilter(masking)
    try:
        yield
    finally:
        for each in loggers:
            each.removeFilter(masking)
