"""Object storage through fsspec: read with bounded retries, atomic writes, credentials kept out of logs.

Credentials come the way users already set them: the standard AWS variables and credential chain
(``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores is read by botocore), plus fsspec
``storage_options`` from the job config.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)

_SECRET_MARKERS = ("key", "secret", "token", "password", "credential", "session")
# Errors that retrying cannot fix.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for transient object-store errors."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry backoff must be >= 0")

    def delay_s(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)


class ReadError(Exception):
    """An object could not be read. ``reason`` is ``not_found``, ``permission`` or ``io`` (retries spent).

    Missing objects and refused access fail at once; anything else (timeouts, resets, throttling, 5xx)
    is retried with backoff up to ``RetryPolicy.attempts`` times.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def get_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for ``uri`` (local paths, ``file://``, ``s3://``, ``gs://``...)."""
    return url_to_fs(uri, **(storage_options or {}))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _classify(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "permission"
    return "io"


def read_bytes(
    uri: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = RetryPolicy()
) -> bytes:
    """The whole object, retrying transient failures with backoff.

    Raises:
        ReadError: missing object, no permission, or the retries are spent.
    """
    for attempt in range(retry.attempts):
        try:
            fs, path = get_fs(uri, storage_options)
            return fs.cat_file(path)
        except PERMANENT_ERRORS as exc:
            raise ReadError(_classify(exc), f"{uri}: {exc}") from exc
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - backends raise their own types (aiohttp, botocore); bounded
            if _http_status(exc) in (400, 401, 403, 404, 410):
                raise ReadError("not_found" if _http_status(exc) in (404, 410) else "permission",
                                f"{uri}: {exc}") from exc
            if attempt + 1 == retry.attempts:
                raise ReadError("io", f"{uri}: {type(exc).__name__}: {exc} (after {retry.attempts} attempts)") from exc
            delay = retry.delay_s(attempt)
            logger.warning("transient error reading %s (%s); retry %d in %.1fs", uri, type(exc).__name__,
                           attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def write_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` so that readers see the whole file or nothing.

    Local: a hidden temporary file in the same folder, then ``os.replace``. Object stores: one PUT
    (or a multipart upload, which becomes visible only when complete).
    """
    if is_local(uri):
        path = local_path(uri)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, path = get_fs(uri, storage_options)
    fs.pipe_file(path, data)


def list_files(uri: str, storage_options: dict[str, Any] | None = None, suffix: str = "") -> list[str]:
    """Full URIs of the files under ``uri`` ending in ``suffix`` (empty when the folder does not exist)."""
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        return []
    found = fs.find(path)
    return sorted(unstrip(fs, p, uri) for p in found if p.endswith(suffix))


def unstrip(fs: fsspec.AbstractFileSystem, path: str, like_uri: str) -> str:
    """A path returned by ``fs`` turned back into a URI of the same kind as ``like_uri``."""
    if is_local(like_uri):
        return ("file://" if like_uri.startswith("file://") else "") + path
    return fs.unstrip_protocol(path)


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = get_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm_file(path)


def redact(options: Any) -> Any:
    """A copy of a config or storage-options structure with secret-looking values masked."""
    if isinstance(options, dict):
        return {
            k: ("***" if any(m in str(k).lower() for m in _SECRET_MARKERS) and v else redact(v))
            for k, v in options.items()
        }
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return options
