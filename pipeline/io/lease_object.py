"""Compare-and-swap on one small object: the primitive under the output lease (:mod:`pipeline.lease`).

Each write names the version it replaces (the *token* a read or a write returned) and fails with
:class:`LeaseConflict` when the object changed since, so two jobs can never both believe they hold an output:

- S3 and S3-compatible stores (MinIO, moto): conditional PUT and DELETE, ``If-None-Match: *`` to create and
  ``If-Match: <etag>`` to replace or delete; the store decides, atomically.
- Local paths: the same checks made under an exclusive ``flock`` on the output folder, then an atomic rename.
- Other fsspec stores: compare, write, then read back (a narrow race remains when two jobs start within the
  same moment; a warning says so once per process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from typing import Any, Iterator

from pipeline.io.masking import mask_text
from pipeline.io.storage import (StorageError, get_fs, is_local, local_path, read_bytes, remove, with_retries,
                                 write_atomic)

logger = logging.getLogger(__name__)

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_warned_schemes: set[str] = set()


class LeaseConflict(RuntimeError):
    """The object is not at the version the write expected (another writer got there first)."""


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _is_precondition_failure(exc: BaseException) -> bool:
    for error in (exc, exc.__cause__, exc.__context__):
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _CONFLICT_CODES or status in ("409", "412"):
                return True
    return False


class LeaseObject:
    """One object with versioned reads and conditional writes. ``token`` is an opaque version: the ETag on S3,
    a digest of the content elsewhere; ``None`` means "the object does not exist"."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options or {}
        self.kind = "s3" if uri.startswith(("s3://", "s3a://")) else "local" if is_local(uri) else "other"
        if self.kind == "other":
            scheme = uri.split("://", 1)[0]
            if scheme not in _warned_schemes:
                _warned_schemes.add(scheme)
                logger.warning("the output lease on %s:// is checked by reading it back, not by a conditional "
                               "write: two jobs started at the same moment on one output may both start", scheme)

    # -- reads -------------------------------------------------------------------------------------------
    def read(self) -> tuple[bytes | None, str | None]:
        """``(content, token)``, or ``(None, None)`` when there is no object.

        Raises:
            OSError: the store could not be read (after its retries).
        """
        if self.kind == "s3":
            return self._s3_read()
        try:
            data = read_bytes(self.uri, self.storage_options)
        except StorageError as exc:
            if exc.reason == "not_found":
                return None, None
            raise OSError(str(exc)) from exc
        return data, _digest(data)

    # -- conditional writes ------------------------------------------------------------------------------
    def write(self, data: bytes, expected: str | None) -> str:
        """Write ``data`` if the object is still at version ``expected`` (``None``: if there is none); returns
        the new token.

        Raises:
            LeaseConflict: the object changed (or appeared) since ``expected`` was read.
        """
        if self.kind == "s3":
            return self._s3_write(data, expected)
        with self._locked():
            self._check(expected)
            write_atomic(self.uri, data, self.storage_options)
        if self.kind == "other" and self.read()[1] != _digest(data):
            raise LeaseConflict(f"{mask_text(self.uri)} was written by another job at the same time")
        return _digest(data)

    def delete(self, expected: str) -> None:
        """Remove the object if it is still at version ``expected``.

        Raises:
            LeaseConflict: the object changed since.
        """
        if self.kind == "s3":
            return self._s3_delete(expected)
        with self._locked():
            self._check(expected)
            remove(self.uri, self.storage_options)

    # -- helpers -----------------------------------------------------------------------------------------
    def _check(self, expected: str | None) -> None:
        current = self.read()[1]
        if current != expected:
            raise LeaseConflict(f"{mask_text(self.uri)} changed since it was read")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Local files: an exclusive lock on the folder that holds the object, for the read-compare-write."""
        if self.kind != "local":
            yield
            return
        folder = os.path.dirname(local_path(self.uri)) or "."
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _s3(self, action: str, call):
        """``call(fs, bucket, key)`` with transient store failures retried (bounded, like every read and write
        here); a failed precondition is not transient: it comes back as :class:`LeaseConflict` at once."""
        conflict = []

        def attempt():
            fs, path = get_fs(self.uri, self.storage_options)
            bucket, key = path.split("/", 1)
            try:
                return call(fs, bucket, key)
            except LeaseConflict as exc:
                conflict.append(exc)
                return None

        try:
            result = with_retries(self.uri, action, attempt)
        except StorageError as exc:
            raise OSError(str(exc)) from exc
        if conflict:
            raise conflict[0]
        return result

    def _s3_read(self) -> tuple[bytes | None, str | None]:
        from fsspec.asyn import sync

        def read(fs, bucket: str, key: str) -> tuple[bytes | None, str | None]:
            async def get() -> tuple[bytes, str]:
                response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
                return await response["Body"].read(), response["ETag"]

            try:
                return sync(fs.loop, get)  # content and ETag from one response: they belong together
            except FileNotFoundError:
                return None, None

        return self._s3("reading", read)

    def _s3_write(self, data: bytes, expected: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}

        def put(fs, bucket: str, key: str) -> str:
            try:
                return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
            except OSError as exc:  # s3fs turns the store's 412 into FileExistsError or EINVAL, 404 into not found
                gone = isinstance(exc, FileNotFoundError) and expected is not None  # removed since it was read
                if gone or isinstance(exc, FileExistsError) or _is_precondition_failure(exc):
                    raise LeaseConflict(f"{mask_text(self.uri)} changed since it was read") from exc
                raise

        return self._s3("writing", put)

    def _s3_delete(self, expected: str) -> None:
        def delete(fs, bucket: str, key: str) -> None:
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=expected)
            except FileNotFoundError:
                return  # already gone
            except OSError as exc:
                if _is_precondition_failure(exc):
                    raise LeaseConflict(f"{mask_text(self.uri)} changed: not removed") from exc
                raise

        self._s3("removing", delete)
