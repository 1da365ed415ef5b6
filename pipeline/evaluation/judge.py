"""An LLM judge for open-ended answers (VCG) and captions (recaption) over an OpenAI-compatible chat endpoint.

Any server that speaks that API works: a vLLM server the user runs (``vllm serve <model>``), a hosted API.
The structure is the reference's (``tasks/eval/vcgbench``, ``tasks/eval/recaption``): one request per answer
and dimension, a system message and a user message from the prompt set's entries for that dimension, and a
reply that is a Python dictionary literal (``{'score': 4.5}``; recaption also ``'pred': 'yes' | 'no'``),
read whole with :func:`ast.literal_eval`, as there. Scores are kept as given (floats stay floats); one outside
0-5 is not a score.

Failures are bounded and counted, never hidden: the client retries connection errors, 429 and 5xx answers
``max_retries`` times with backoff; a reply that is not the asked-for dictionary is asked again up to
``attempts`` times; after that the verdict carries the error and the caller scores it 0, as the reference
does. The API key comes from an environment variable. Neither it nor a password in the URL is ever logged or
stored: user info is taken out of the URL the HTTP client sees (sent as the same ``Basic`` header), and every
judge text kept (errors, the client library's own log lines) is masked, since a server may echo the
credentials back.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator

from model.settings import MAX_TOKENS, MAX_WAIT_S, MAX_WORKERS, FrozenSettings, problems_of
from pipeline.io.masking import basic_auth_token, mask_text, mask_values, masked_logs, public_uri, userinfo_secrets

logger = logging.getLogger(__name__)

# The loggers of the OpenAI client and the HTTP stacks it may run on: they log request URLs (user info included).
CLIENT_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")
# What a kept judge text (an error, a quoted reply) may hold, in characters.
MAX_ERROR_CHARS = 300

class JudgeReplyError(ValueError):
    """The judge's reply is not the dictionary asked for."""


def _literal(reply: str) -> dict:
    try:
        data = ast.literal_eval((reply or "").strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise JudgeReplyError(f"the judge's reply is not a Python dictionary: {(reply or '')[:200]!r}") from None
    if not isinstance(data, dict):
        raise JudgeReplyError(f"the judge's reply is not a dictionary: {(reply or '')[:200]!r}")
    return data


def _score(data: dict) -> float:
    value = data.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 5:
        raise JudgeReplyError(f"the judge's score is {value!r}, not a number from 0 to 5")
    return float(value)


def parse_score(reply: str) -> dict:
    """A VCG judge reply -> ``{"score": float}``.

    Raises:
        JudgeReplyError: not a dictionary literal, or no score from 0 to 5 in it.
    """
    return {"score": _score(_literal(reply))}


def parse_caption_verdict(reply: str) -> dict:
    """A recaption judge reply -> ``{"pred": "yes" | "no", "score": float}``.

    Raises:
        JudgeReplyError: not a dictionary literal, a ``pred`` other than yes / no, or no score from 0 to 5.
    """
    data = _literal(reply)
    pred = data.get("pred")
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        raise JudgeReplyError(f"the judge's pred is {pred!r}, not 'yes' or 'no'")
    return {"pred": pred.strip().lower(), "score": _score(data)}


class JudgeConfig(FrozenSettings):
    """Where the judge is: ``url`` (the API base, e.g. ``http://host:8000/v1``), ``model`` (its name there),
    the environment variable holding the API key (unset: no key, as a local vLLM server needs none).

    The key itself is never part of the config (it is read from the environment when the judge is made); the
    URL's user info, the one secret a config can hold, is masked wherever the config is shown (``repr``,
    ``str``, :meth:`to_dict`, the errors of a refused config).
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = Field(3, ge=0, le=100)  # transport errors, 429 and 5xx, with backoff (the client's)
    attempts: int = Field(3, ge=1, le=100)  # replies that are not the dictionary asked for
    timeout_s: float = Field(120.0, gt=0, le=MAX_WAIT_S)
    concurrency: int = Field(8, ge=1, le=MAX_WORKERS)
    max_tokens: int = Field(200, ge=1, le=MAX_TOKENS)

    def __init__(self, url: Any = None, model: Any = None, /, **settings: Any) -> None:
        """``JudgeConfig(url, model, **settings)`` (or every field by name).

        Raises:
            ValueError: ``invalid judge config:`` and every setting that cannot work, each with its name (the URL
                shown without its secrets).
        """
        settings.update({k: v for k, v in (("url", url), ("model", model)) if v is not None})
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            secrets = userinfo_secrets(settings["url"]) if isinstance(settings.get("url"), str) else []
            problems = problems_of(exc, type(self))
            raise ValueError(mask_text("invalid judge config: " + "; ".join(problems), secrets)) from None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the judge URL must be http(s)://host[:port]/path, got {public_uri(value)!r}")
        return value

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the judge model name is empty")
        return value

    def __repr_args__(self):  # repr and str: the URL without its user info
        for name, value in super().__repr_args__():
            yield name, public_uri(value) if name == "url" else value

    def to_dict(self) -> dict[str, Any]:
        """Plain data, credentials masked (the URL's user info)."""
        return mask_values(self.model_dump(mode="json"))


@dataclass(frozen=True)
class Verdict:
    values: dict | None  # what the reply gave (None: no verdict)
    error: str | None = None  # why there is none
    reason: str | None = None  # the error's kind: request_failed, bad_reply, no_prediction


@dataclass(frozen=True)
class JudgeRequest:
    """One request: the two messages, and how to read the reply. ``prediction`` empty: not sent (no verdict)."""

    system: str
    user: str
    parse: Callable[[str], dict]
    prediction: str = "x"

    def key(self, model: str) -> str:
        """What the verdict depends on: the judge model and both messages (a rerun reuses an equal one)."""
        return hashlib.sha256(json.dumps([model, self.system, self.user]).encode()).hexdigest()[:24]


def _split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user info, and the ``Authorization: Basic`` header the HTTP client would have made of it
    (so the request is the same, while the URL the client logs holds no password)."""
    token = basic_auth_token(url)
    if token is None:
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), {"Authorization": f"Basic {token}"}


class Judge:
    """Sends requests to the configured endpoint (``temperature`` 0, one request per verdict)."""

    def __init__(self, cfg: JudgeConfig) -> None:
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise ImportError("the judge needs the openai client: pip install -e '.[eval]'") from exc

        self.cfg = cfg
        api_key = os.environ.get(cfg.api_key_env) or ""
        url, headers = _split_userinfo(cfg.url)
        # Every literal form a server or a library could quote back: the key, the URL's user info (raw and
        # decoded), and the Basic token made of it.
        self.secrets = [s for s in (api_key, *userinfo_secrets(cfg.url), basic_auth_token(cfg.url)) if s]
        self.client = OpenAI(base_url=url, api_key=api_key or "no-key", default_headers=headers or None,
                             max_retries=cfg.max_retries, timeout=cfg.timeout_s)

    def mask(self, text: str) -> str:
        """``text`` without the judge's credentials, cut to :data:`MAX_ERROR_CHARS` (masked first, so a cut never
        leaves part of a secret)."""
        text = mask_text(text, self.secrets)
        return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."

    def _failed(self, error: str, reason: str) -> Verdict:
        return Verdict(None, self.mask(error), reason)

    def ask(self, request: JudgeRequest) -> Verdict:
        """One verdict; never raises for a failing judge (the verdict carries the error)."""
        from openai import OpenAIError

        if not request.prediction.strip():
            return self._failed("no prediction to judge", "no_prediction")
        messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}]
        problem = ""
        for _ in range(self.cfg.attempts):
            try:
                reply = self.client.chat.completions.create(model=self.cfg.model, messages=messages, temperature=0,
                                                            max_tokens=self.cfg.max_tokens)
            except OpenAIError as exc:  # retried by the client already: give up on this verdict
                return self._failed(f"judge request failed: {type(exc).__name__}: {exc}", "request_failed")
            try:
                content = reply.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):  # a 200 without a message: a server speaking another API
                problem = "the judge's reply has no message (choices[0].message.content)"
                continue
            try:  # masked before parsing: the error quotes the reply
                return Verdict(request.parse(mask_text(content, self.secrets)))
            except JudgeReplyError as exc:
                problem = str(exc)
        return self._failed(f"after {self.cfg.attempts} replies: {problem}", "bad_reply")

    def ask_all(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """Verdicts in the order of ``requests`` (``concurrency`` at a time)."""
        with masked_logs(CLIENT_LOGGERS, self.secrets), ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(self.ask, requests))
