"""An LLM judge for open-ended answers (the VCG scores) over an OpenAI-compatible chat-completions endpoint.

Any server that speaks that API works: a vLLM server the user runs (``vllm serve <model>``), a hosted API.
Each answer gets one request asking for the five scores of the reference's VCG evaluation (correctness,
detail orientation, context, temporal understanding, and, for a pair of similar questions, consistency), as
integers from 0 to 5 in a JSON object. The wording of the prompt is this project's own.

Failures are bounded: the client retries connection errors, 429 and 5xx answers ``max_retries`` times with
backoff; a reply that is not the asked-for JSON is asked again up to ``attempts`` times; after that the row
keeps a ``judge_error`` and no scores (counted in the metrics, never a zero that looks like a grade). The API
key comes from an environment variable. Neither it nor a password in the URL is ever logged or stored: user
info is taken out of the URL the HTTP client sees (sent as the same ``Basic`` header), and every judge text
kept (errors, the client library's own log lines) is masked, since a server may echo the credentials back.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pipeline.io.masking import basic_auth_token, mask_text, masked_logs, public_uri, userinfo_secrets

logger = logging.getLogger(__name__)

# The loggers of the OpenAI client and the HTTP stacks it may run on: they log request URLs (user info included).
CLIENT_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")
# What a kept judge text (an error, a quoted reply) may hold, in characters.
MAX_ERROR_CHARS = 300

SCORES = ("correctness", "detail", "context", "temporal", "consistency")

JUDGE_SYSTEM_PROMPT = (
    "You grade answers that a video model gave to questions about videos. You do not see the video: compare "
    "the predicted answer with the correct answer. Paraphrases and synonyms count as matches. Give each score "
    "as a whole number from 0 (wrong or missing) to 5 (fully right)."
)

_CRITERIA = (
    "- correctness: are the facts of the predicted answer those of the correct answer, with nothing false?\n"
    "- detail: does it cover the main points of the correct answer with specific rather than generic details?\n"
    "- context: does it fit the overall situation the correct answer describes, without unrelated content?\n"
    "- temporal: does it keep the order of events that the correct answer gives?\n"
)


def judge_prompt(question: str, answer: str, prediction: str, pair: tuple[str, str] | None = None) -> str:
    """The user message for one answer; with ``pair`` (the similar question and the model's answer to it) it
    also asks whether the two answers agree."""
    lines = [f"Question: {question}", f"Correct answer: {answer}", f"Predicted answer: {prediction}"]
    criteria = _CRITERIA
    keys = SCORES[:4]
    if pair is not None:
        lines += [f"A similar question: {pair[0]}", f"Predicted answer to it: {pair[1]}"]
        criteria += "- consistency: do the two predicted answers agree with each other and with the correct answer?\n"
        keys = SCORES
    example = json.dumps({k: 3 for k in keys})
    return ("\n".join(lines) + "\n\nScore the predicted answer:\n" + criteria +
            f"Reply with only a JSON object with the keys {', '.join(keys)}, for example {example}.")


class JudgeReplyError(ValueError):
    """The judge's reply is not the JSON object of scores asked for."""


def parse_scores(reply: str, with_consistency: bool) -> dict[str, int | None]:
    """The scores in a judge reply: the first ``{...}`` in it, JSON or a Python dict literal.

    Raises:
        JudgeReplyError: no such object, a missing key, or a score that is not a number from 0 to 5.
    """
    match = re.search(r"\{.*?\}", reply or "", re.S)
    if not match:
        raise JudgeReplyError(f"no JSON object in the judge's reply: {reply[:200]!r}")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        try:
            data = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            raise JudgeReplyError(f"the judge's reply is not valid JSON: {match.group(0)[:200]!r}") from None
    if not isinstance(data, dict):
        raise JudgeReplyError(f"the judge's reply is not an object: {match.group(0)[:200]!r}")
    keys = SCORES if with_consistency else SCORES[:4]
    scores: dict[str, int | None] = {k: None for k in SCORES}
    for key in keys:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 5:
            raise JudgeReplyError(f"the judge's {key} score is {value!r}, not a number from 0 to 5")
        scores[key] = int(round(value))
    return scores


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is: ``url`` (the API base, e.g. ``http://host:8000/v1``), ``model`` (its name there),
    the environment variable holding the API key (unset: no key, as a local vLLM server needs none)."""

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 3  # transport errors, 429 and 5xx, with backoff (the client's)
    attempts: int = 3  # replies that are not the JSON asked for
    timeout_s: float = 120.0
    concurrency: int = 8
    max_tokens: int = 200

    def __repr__(self) -> str:  # the URL without its user info, wherever a config is shown
        return (f"JudgeConfig(url={public_uri(self.url or '')!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    def __post_init__(self) -> None:
        """Raises: ValueError naming every setting that cannot work (the URL shown without its secrets)."""
        problems = []
        parts = urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"the judge URL must be http(s)://host[:port]/path, got {public_uri(self.url or '')!r}")
        if not (self.model or "").strip():
            problems.append("the judge model name is empty")
        for name in ("attempts", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"judge {name} must be >= 1")
        if self.max_retries < 0 or self.timeout_s <= 0:
            problems.append("judge max_retries must be >= 0 and timeout_s > 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, int | None]
    error: str | None = None  # why there are no scores
    reason: str | None = None  # the error's kind: request_failed, bad_reply, no_prediction


def _split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user info, and the ``Authorization: Basic`` header the HTTP client would have made of it
    (so the request is the same, while the URL the client logs holds no password)."""
    token = basic_auth_token(url)
    if token is None:
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), {"Authorization": f"Basic {token}"}


class Judge:
    """Scores answers with the configured endpoint (``temperature`` 0, one request per answer)."""

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
        return Verdict({k: None for k in SCORES}, self.mask(error), reason)

    def score(self, question: str, answer: str, prediction: str, pair: tuple[str, str] | None = None) -> Verdict:
        """One answer's verdict; never raises for a failing judge (the verdict carries the error)."""
        from openai import OpenAIError

        if not prediction.strip():
            return self._failed("no prediction to judge", "no_prediction")
        messages = [{"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                    {"role": "user", "content": judge_prompt(question, answer, prediction, pair)}]
        problem = ""
        for _ in range(self.cfg.attempts):
            try:
                reply = self.client.chat.completions.create(model=self.cfg.model, messages=messages, temperature=0,
                                                            max_tokens=self.cfg.max_tokens)
            except OpenAIError as exc:  # retried by the client already: give up on this row
                return self._failed(f"judge request failed: {type(exc).__name__}: {exc}", "request_failed")
            try:
                content = reply.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):  # a 200 without a message: a server speaking another API
                problem = "the judge's reply has no message (choices[0].message.content)"
                continue
            try:  # masked before parsing: the error quotes the reply
                return Verdict(parse_scores(mask_text(content, self.secrets), pair is not None))
            except JudgeReplyError as exc:
                problem = str(exc)
        return self._failed(f"after {self.cfg.attempts} replies: {problem}", "bad_reply")

    def score_all(self, items: list[dict]) -> list[Verdict]:
        """``items``: dicts with ``question``, ``answer``, ``prediction`` and optional ``pair``; in order."""
        with masked_logs(CLIENT_LOGGERS, self.secrets), ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda item: self.score(item["question"], item["answer"], item["prediction"],
                                                         item.get("pair")), items))
