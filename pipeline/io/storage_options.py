"""Storage options checked against the filesystems a job will use, before it runs.

s3fs and fsspec's HTTP filesystem take any option and hand the ones they do not know to their client libraries
(aiobotocore's session, aiohttp's requests), which fail only at the first request, with a ``TypeError`` on
every read (or a traceback where the output is first touched).
"""

from __future__ import annotations

import re
from typing import Any

import fsspec

from pipeline.io.masking import MASK, mask_text
from pipeline.io.storage import get_fs


def storage_option_problems(storage_options: dict[str, Any] | None, uris: list[str | None]) -> list[str]:
    """What the filesystems of ``uris`` would refuse in ``storage_options``, one problem per key (its value
    masked), found before anything is read.

    s3fs and fsspec's HTTP filesystem take any option and hand the ones they do not know to their client
    libraries (aiobotocore's session, aiohttp's requests), which fail only at the first request, with a
    ``TypeError`` on every read. Here those keys are checked against what the libraries take.
    """
    options = dict(storage_options or {})
    problems, seen = [], set()
    for uri in uris:
        protocol = fsspec.core.split_protocol(uri)[0] or "file" if uri else None
        if protocol is None or protocol in seen:
            continue
        seen.add(protocol)
        try:
            fs, _ = get_fs(uri, options)
        except ImportError:
            continue  # a filesystem that is not installed says so when it is used
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(f"storage_options: the {protocol}:// filesystem refuses them: "
                            f"{mask_text(str(exc), option_secrets(options))}")
            continue
        problems += [f"storage_options.{key} (value {MASK}): {why}" for key, why in _refused(fs, protocol)]
    return problems


def _refused(fs: fsspec.AbstractFileSystem, protocol: str) -> list[tuple[str, str]]:
    """(key path, why) for each option ``fs`` holds that its client library would refuse."""
    import inspect

    def unknown(given: dict, takes: Any, skip: tuple[str, ...] = ("self",)) -> list[str]:
        known = set(inspect.signature(takes).parameters) - set(skip)
        return [k for k in given if k not in known]

    refused = []
    if type(fs).__name__ == "S3FileSystem":
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
        from botocore.session import Session

        own = sorted(set(inspect.signature(type(fs).__init__).parameters) - {"self", "kwargs", "loop"})
        for key in unknown(fs.kwargs, AioSession.__init__):
            refused.append((key, f"not an option of the {protocol}:// filesystem (s3fs would hand it to "
                                 f"aiobotocore's session, which refuses it); it takes {', '.join(own)}"))
        for key in unknown(fs.client_kwargs, Session.create_client, ("self", "service_name", "config")):
            refused.append((f"client_kwargs.{key}", "not an argument of botocore's create_client"))
        try:
            AioConfig(**fs.config_kwargs)
        except (TypeError, ValueError) as exc:
            named = re.search(r"argument '(\w+)'", str(exc))
            refused.append(("config_kwargs" + (f".{named.group(1)}" if named else ""),
                            f"botocore's Config refuses it: {exc}"))
    elif type(fs).__name__ == "HTTPFileSystem":
        import aiohttp

        for key in unknown(fs.kwargs, aiohttp.ClientSession._request, ("self", "method", "str_or_url")):
            refused.append((key, f"not an option of the {protocol}:// filesystem (fsspec would pass it to "
                                 "every aiohttp request, which refuses it)"))
        for key in unknown(fs.client_kwargs, aiohttp.ClientSession.__init__):
            refused.append((f"client_kwargs.{key}", "not an argument of aiohttp's ClientSession"))
    return refused


def option_secrets(options: dict[str, Any]) -> list[str]:
    """The string values of the options, to scrub from a library's error text that may quote them."""
    found = []
    for value in options.values():
        if isinstance(value, dict):
            found += option_secrets(value)
        elif isinstance(value, str) and len(value) >= 4:
            found.append(value)
    return found
