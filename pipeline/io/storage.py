"""Object storage through fsspec: read with bounded retries, atomic writes, credentials kept out of logs.

Credentials come the way users already set them: the standard AWS variables and credential chain
(``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores is read by botocore), plus fsspec
``storage_options`` from the job config.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from pydantic import Field

from model.settings import FrozenSettings
from pipeline.io.masking import USERINFO_PATTERN, mask_text, public_uri, userinfo_secrets

logger = logging.getLogger(__name__)

# Client-side failures that retrying cannot fix, matched by class name (botocore need not be imported).
_PERMANENT_ERROR_NAMES = {"ParamValidationError": "bad_path", "InvalidBucketName": "bad_path",
                          "NoCredentialsError": "permission"}
_BAD_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EINVAL}


TEMPORARY_PREFIX = ".tmp-"  # what write_atomic names its temporaries (a writer's leftovers are found by it)


class RetryPolicy(FrozenSettings):
    """Bounded exponential backoff with jitter for transient object-store errors."""

    attempts: int = Field(4, ge=1, le=100)
    backoff_s: float = Field(0.5, ge=0, le=3600)
    max_backoff_s: float = Field(8.0, ge=0, le=3600)

    def delay_s(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)


class StorageError(Exception):
    """A read, write or listing of the store failed. ``reason`` is ``not_found``, ``permission``,
    ``not_a_file``, ``bad_path`` or ``io`` (retries spent).

    Permanent failures fail at once; anything else (timeouts, resets, throttling, 5xx) is retried with
    backoff up to ``RetryPolicy.attempts`` times. The message never holds the URI's credentials.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


def local_path(uri: str) -> str:
    """The path of a local URI: ``file:///a``, ``file://localhost/a`` and ``file:/a`` are ``/a`` (as fsspec reads
    them), a plain path is itself."""
    for prefix in ("file://localhost/", "file://", "file:"):
        if uri.startswith(prefix):
            return "/" + uri[len(prefix):].lstrip("/") if prefix != "file://" else uri[len(prefix):]
    return uri


# botocore's own retries for S3 unless the storage options say otherwise: the standard mode (throttling-aware,
# 3 attempts) inside our bounded retries, so the two layers cannot multiply into minutes per object.
S3_CLIENT_RETRIES = {"max_attempts": 3, "mode": "standard"}


# scheme://user:password@rest -> scheme://rest (the user info of a URI's authority, nothing after it).
_URI_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)" + USERINFO_PATTERN + "@")


def without_userinfo(uri: str) -> str:
    """``uri`` without the user info of its authority (``s3://KEY:SECRET@bucket/v.mp4`` -> ``s3://bucket/v.mp4``).

    Credentials in a URI are not used for access (they come from the environment or the storage options):
    left in, s3fs would take ``KEY:SECRET@bucket`` for the bucket's name and every such row would fail.
    """
    return _URI_USERINFO.sub(r"\1", uri)


def get_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for ``uri`` (local paths, ``file://``, ``s3://``, ``gs://``...);
    user info in ``uri`` is dropped (:func:`without_userinfo`)."""
    uri = without_userinfo(uri)
    if is_local(uri):
        uri = local_path(uri)  # one reading of file: spellings for fsspec and for our own local writes
    options = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", S3_CLIENT_RETRIES)
        options["config_kwargs"] = config
    return url_to_fs(uri, **options)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def permanent_reason(exc: BaseException) -> str | None:
    """The read-error reason of a failure that retrying cannot fix; None for a possibly transient one."""
    if isinstance(exc, FileNotFoundError):
        # fsspec's HTTP filesystem reports every failed lookup as missing; the cause tells a 503 from a 404.
        cause = _http_status(exc.__cause__) if exc.__cause__ is not None else None
        return None if cause is not None and (cause >= 500 or cause == 429) else "not_found"
    if isinstance(exc, PermissionError):
        return "permission"
    if isinstance(exc, IsADirectoryError):
        return "not_a_file"
    if isinstance(exc, (NotADirectoryError, ValueError, TypeError)):
        return "bad_path"  # a path under a regular file, a NUL byte, a value the client cannot send
    if isinstance(exc, OSError) and exc.errno in _BAD_PATH_ERRNOS:
        return "bad_path"  # file name too long, symlink loop
    for cls in type(exc).__mro__:
        if cls.__name__ in _PERMANENT_ERROR_NAMES:
            return _PERMANENT_ERROR_NAMES[cls.__name__]
    status = _http_status(exc)
    if status in (404, 410):
        return "not_found"
    if status in (401, 403):
        return "permission"
    if status == 400:
        return "bad_path"
    return None


def with_retries(uri: str, action: str, call, retry: RetryPolicy = RetryPolicy(), on_retry=None):
    """``call()`` with transient failures retried (bounded, jittered backoff); ``on_retry()`` is called before
    each retry (to count them).

    Raises:
        StorageError: a permanent failure (at once) or the retries are spent (reason ``io``); its message names
            ``action`` and the URI without credentials.
    """
    shown, secrets = public_uri(uri), userinfo_secrets(uri)
    for attempt in range(retry.attempts):
        try:
            return call()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - backends raise their own types (aiohttp, botocore); bounded
            reason = permanent_reason(exc)
            shown_exc = exc.__cause__ if reason is None and exc.__cause__ is not None else exc
            detail = mask_text(f"{type(shown_exc).__name__}: {shown_exc}", secrets)
            if reason is not None:
                raise StorageError(reason, f"{action} {shown}: {detail}") from exc
            if attempt + 1 == retry.attempts:
                raise StorageError("io", f"{action} {shown}: transient I/O failure, {detail} "
                                      f"(after {retry.attempts} attempts)") from exc
            delay = retry.delay_s(attempt)
            if on_retry is not None:
                on_retry()
            logger.warning("transient error (%s) on %s %s; retry %d in %.1fs", type(exc).__name__, action, shown,
                           attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(
    uri: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = RetryPolicy()
) -> bytes:
    """The whole object, retrying transient failures with backoff.

    Raises:
        StorageError: a permanent failure (missing, refused, not a file, bad path), or the retries are spent.
    """
    def fetch() -> bytes:
        fs, path = get_fs(uri, storage_options)
        return fs.cat_file(path)

    return with_retries(uri, "reading", fetch, retry)


def read_block(uri: str, offset: int, length: int, storage_options: dict[str, Any] | None = None,
               retry: RetryPolicy = RetryPolicy(), delimiter: bytes = b"\n") -> bytes:
    """Bytes ``[offset, offset + length)`` of an object moved to delimiter boundaries (fsspec's
    ``read_block``): consecutive blocks split a text file into whole lines, each line in exactly one block.

    Raises:
        StorageError: as :func:`read_bytes`.
    """
    def fetch() -> bytes:
        fs, path = get_fs(uri, storage_options)
        return fs.read_block(path, offset, length, delimiter=delimiter)

    return with_retries(uri, "reading", fetch, retry)


class TextFileError(ValueError):
    """A text file that cannot be read whole. ``reason``: ``not_found``, ``unreadable``, ``too_large`` or
    ``not_utf8``; the message names the file, without its credentials."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def read_text_bounded(uri: str, max_bytes: int, storage_options: dict[str, Any] | None = None, what: str = "file",
                      hint: str = "", keep_userinfo: bool = False) -> str:
    """The text of a UTF-8 file (a config, a prompt set, a list read whole) of at most ``max_bytes``: at most
    ``max_bytes + 1`` bytes are read, so a huge or endless file costs no more than that. The URI's user info is
    dropped as :func:`get_fs` drops it, unless ``keep_userinfo``: then fsspec gets the URI as given (HTTP basic
    auth, a path that holds an ``@``), as prompt files are read.

    Raises:
        TextFileError: ``<what> <uri>: not found``, ``...: cannot read (<why>)``, ``...: larger than <size>``
            (then ``; <hint>``) or ``...: not UTF-8 text (byte <n>)``.
    """
    shown = f"{what} {public_uri(uri)}"
    try:
        fs, path = url_to_fs(uri, **(storage_options or {})) if keep_userinfo else get_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise TextFileError("not_found", f"{shown}: not found") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - stores raise their own types, and may quote the URI's user info
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TextFileError("unreadable", f"{shown}: cannot read ({mask_text(str(why), userinfo_secrets(uri))})"
                            ) from None
    if len(raw) > max_bytes:
        raise TextFileError("too_large", f"{shown}: larger than {_size(max_bytes)}" + (f"; {hint}" if hint else ""))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFileError("not_utf8", f"{shown}: not UTF-8 text (byte {exc.start})") from None


def read_or_spool(uri: str, spool_dir: str, max_in_memory_bytes: int, storage_options: dict[str, Any] | None = None,
                  retry: RetryPolicy = RetryPolicy(), on_retry=None) -> bytes | str:
    """The object's bytes when it is at most ``max_in_memory_bytes``; else a copy streamed to a file under
    ``spool_dir`` (its path; the caller removes it), so memory does not grow with object size.

    Raises:
        StorageError: as :func:`read_bytes`.
    """
    def fetch() -> bytes | str:
        fs, path = get_fs(uri, storage_options)
        info = fs.info(path)
        if info.get("type") == "directory":  # an object-store prefix, or a bucket: not_a_file, as a local folder
            raise IsADirectoryError(errno.EISDIR, "a folder (prefix), not a file", public_uri(uri))
        size = info.get("size")
        if size is not None and size <= max_in_memory_bytes:
            return fs.cat_file(path)
        local = os.path.join(spool_dir, f"{uuid.uuid4().hex}-{os.path.basename(path)[-80:]}")
        try:
            with fs.open(path, "rb", block_size=SPOOL_CHUNK_BYTES) as src, open(local, "wb") as dst:
                while chunk := src.read(SPOOL_CHUNK_BYTES):
                    dst.write(chunk)
        except BaseException:
            if os.path.exists(local):
                os.remove(local)
            raise
        return local

    return with_retries(uri, "reading", fetch, retry, on_retry)


SPOOL_CHUNK_BYTES = 8 * 1024 * 1024
# Objects larger than this are streamed to a local file before decoding, not held in memory (the default of the
# job's resources.decode_max_in_memory_mb, of the sampler's and of caption_video's).
SPOOL_ABOVE_MB = 64


def count_newlines(uri: str, end: int, storage_options: dict[str, Any] | None = None,
                   retry: RetryPolicy = RetryPolicy()) -> int:
    """How many ``\\n`` bytes the object holds before byte ``end`` (read in chunks, never held whole).

    Raises:
        StorageError: as :func:`read_bytes`.
    """
    def count() -> int:
        fs, path = get_fs(uri, storage_options)
        total, left = 0, end
        with fs.open(path, "rb", block_size=SPOOL_CHUNK_BYTES) as f:
            while left > 0 and (chunk := f.read(min(SPOOL_CHUNK_BYTES, left))):
                total += chunk.count(b"\n")
                left -= len(chunk)
        return total

    return with_retries(uri, "counting the lines of", count, retry)


def object_info(uri: str, storage_options: dict[str, Any] | None = None,
                retry: RetryPolicy = RetryPolicy()) -> dict[str, Any]:
    """fsspec ``info`` of an object; unlike ``fs.exists`` a transient failure is retried, not taken for absence.

    Raises:
        StorageError: ``not_found`` only when the store says so; ``io`` when it could not be asked.
    """
    def info() -> dict[str, Any]:
        fs, path = get_fs(uri, storage_options)
        return fs.info(path)

    return with_retries(uri, "looking up", info, retry)


def check_local_file(path: str) -> None:
    """A local path names a readable regular file.

    Raises:
        StorageError: ``not_found``, ``permission``, ``not_a_file`` (a folder or a device) or ``bad_path``
            (a NUL byte, a name too long, a path under a regular file).
    """
    try:
        if not os.path.isfile(path) and os.path.exists(path):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        with open(path, "rb"):
            pass
    except (OSError, ValueError) as exc:
        raise StorageError(permanent_reason(exc) or "io", f"{path}: {type(exc).__name__}: {exc}") from exc


def write_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None,
                 retry: RetryPolicy = RetryPolicy(), on_retry=None) -> None:
    """Write ``data`` so that readers see the whole file or nothing.

    Local: a hidden temporary file in the same folder, then ``os.replace``. Object stores: one PUT
    (or a multipart upload, which becomes visible only when complete), transient failures retried.

    Raises:
        OSError: a permanent failure, or the retries are spent.
    """
    if is_local(uri):
        path = local_path(uri)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
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
    def put() -> None:
        fs, path = get_fs(uri, storage_options)
        fs.pipe_file(path, data)

    try:
        with_retries(uri, "writing", put, retry, on_retry)
    except StorageError as exc:
        raise OSError(str(exc)) from exc


def find_fresh(fs: fsspec.AbstractFileSystem, path: str, detail: bool = False):
    """``fs.find(path)`` that sees what other processes wrote since this process last listed ``path``.

    s3fs and gcsfs keep the listings they make and fill new ones in only where none is cached, so a folder
    listed before a run would still miss the files the run's workers wrote (and opening one of those would
    fail as missing): the cached listings of ``path`` and below are dropped first.
    """
    cache = getattr(fs, "dircache", None)
    if cache is not None:
        fs.invalidate_cache(path)
        stripped = path.rstrip("/")
        for key in [k for k in list(cache) if k.startswith(stripped + "/")]:
            cache.pop(key, None)
    return fs.find(path, detail=detail)


def list_files(uri: str, storage_options: dict[str, Any] | None = None, suffix: str = "",
               retry: RetryPolicy = RetryPolicy()) -> list[str]:
    """Full URIs of the files under ``uri`` ending in ``suffix``, sorted (empty when the folder does not exist);
    transient store failures are retried like reads.

    Raises:
        OSError: a permanent failure, or the retries are spent.
    """
    return list(list_file_sizes(uri, storage_options, suffix, retry))


def list_file_sizes(uri: str, storage_options: dict[str, Any] | None = None, suffix: str = "",
                    retry: RetryPolicy = RetryPolicy()) -> dict[str, int]:
    """:func:`list_files` with each file's size in bytes, from one listing (no request per file)."""
    def find() -> dict[str, int]:
        fs, path = get_fs(uri, storage_options)
        if not fs.exists(path):
            return {}
        found = find_fresh(fs, path, detail=True)
        return {unstrip(fs, p, uri): int(info.get("size") or 0) for p, info in sorted(found.items())
                if p.endswith(suffix)}

    try:
        return with_retries(uri, "listing", find, retry)
    except StorageError as exc:
        raise OSError(str(exc)) from exc


def unstrip(fs: fsspec.AbstractFileSystem, path: str, like_uri: str) -> str:
    """A path returned by ``fs`` turned back into a URI of the same kind as ``like_uri``."""
    if is_local(like_uri):
        return ("file://" if like_uri.startswith("file://") else "") + path
    return fs.unstrip_protocol(path)


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = get_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm_file(path)


def remove_tree(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """A folder (or prefix) and everything under it; nothing when it does not exist."""
    fs, path = get_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)
