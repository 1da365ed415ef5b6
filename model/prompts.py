"""Prompt templates: how a system prompt, one video and a user query become model input text.

PLLaVA puts exactly one ``<image>`` placeholder per video in the prompt; the model expands it into the
video's pooled visual tokens. Two conversation styles are in use by the published checkpoints:

* ``vicuna``: 7B/13B (Vicuna-based LLaVA-NeXT): ``USER: ...`` / ``ASSISTANT:`` turns, ``</s>`` ends a reply.
* ``chatml``: 34B (Yi-based LLaVA-NeXT): ``<|im_start|>role ... <|im_end|>`` turns.

Both render byte for byte what the reference's recaption code renders for the same system prompt and query
(the video in a user turn of its own); ``vicuna_videoqa`` is its one-turn video-QA layout, and the
``*_one_turn`` templates keep this project's earlier layouts selectable. The system prompt is a setting of
its own (:func:`read_system_prompt`); the rendered text, system prompt included, is what ``prompt_id``
hashes.

The wording of the default recaption prompt is the project's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
# The label of a token no loss is taken on (the prompt, padding, the video's place): torch's cross-entropy default.
IGNORE_INDEX = -100

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful video describer. You are shown frames sampled evenly from one video clip, in order. "
    "Describe only what can be seen; do not guess at sounds, names or intentions."
)

DEFAULT_RECAPTION_QUERY = (
    "Write one detailed paragraph describing this video. Cover the setting and background, the people, "
    "animals or objects that appear, what they do and how the action unfolds over time, and any camera "
    "motion such as panning, zooming or a static shot. Keep to facts that are visible in the frames and "
    "avoid exact counts or fine colour shades you cannot be sure of."
)


@dataclass(frozen=True)
class PromptTemplate:
    """A conversation layout.

    ``text`` holds the ``{image}`` and ``{query}`` fields and ends where the assistant's answer starts;
    ``system_text`` (with ``{system}``) goes before it only when there is a system prompt, as in the
    reference's conversation code. ``stop_strings`` end a reply and are removed from decoded captions;
    ``answer_prefix`` + answer + ``answer_suffix`` is an answer in training text; ``turn_text`` is a later
    user turn of a multi-turn conversation, ending where its answer starts.
    """

    name: str
    text: str
    system_text: str
    stop_strings: tuple[str, ...]
    answer_suffix: str
    answer_prefix: str = ""
    turn_text: str = "{query}"
    description: str = ""

    def render(self, query: str, system: str = DEFAULT_SYSTEM_PROMPT, reply_prefix: str = "") -> str:
        """The full prompt for one video and one query, ending where the assistant's answer starts.

        ``query`` and ``system`` are laid out exactly as given (a system text ending in a newline keeps it, as
        the reference's evaluation system texts do); a blank ``system`` renders no system part at all (no
        stray separator). ``reply_prefix`` opens the assistant's reply (e.g. ``"Best option:("`` for multiple
        choice): the model continues from it.
        """
        if IMAGE_TOKEN in query or IMAGE_TOKEN in system or IMAGE_TOKEN in reply_prefix:
            raise ValueError(f"prompt text must not contain {IMAGE_TOKEN!r}: the template places it")
        head = self.system_text.format(system=system) if system.strip() else ""
        return head + self.text.format(image=IMAGE_TOKEN, query=query) + reply_prefix

    def render_turn(self, query: str) -> str:
        """A later user turn (training text), ending where its answer starts."""
        if IMAGE_TOKEN in query:
            raise ValueError(f"prompt text must not contain {IMAGE_TOKEN!r}: the template places it")
        return self.turn_text.format(query=query.strip())

    def render_answer(self, answer: str) -> str:
        """An answer as it follows its prompt in training text, end-of-turn marker included."""
        return self.answer_prefix + answer.strip() + self.answer_suffix


_VICUNA = dict(system_text="{system} ", stop_strings=("</s>",), answer_suffix="</s>", answer_prefix=" ",
               turn_text="USER: {query} ASSISTANT:")
_CHATML = dict(stop_strings=("<|im_end|>",), answer_suffix="<|im_end|>\n",
               turn_text="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n")

TEMPLATES: dict[str, PromptTemplate] = {
    # The reference's recaption layouts: the video in a user turn of its own, then the query.
    "vicuna": PromptTemplate(
        name="vicuna", text="USER: {image}\n USER: {query} ASSISTANT:", **_VICUNA,
        description="7B/13B, as the reference recaptions: the video in its own USER turn"),
    "chatml": PromptTemplate(
        name="chatml",
        text="<|im_start|>user\n{image}\n<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
        system_text="{system}<|im_end|>\n", **_CHATML,
        description="34B, as the reference recaptions: no system header, the video in its own user turn"),
    # The reference's video-QA layout: video and query in one turn.
    "vicuna_videoqa": PromptTemplate(
        name="vicuna_videoqa", text="USER: {image}\n {query} ASSISTANT:", **_VICUNA,
        description="7B/13B, the reference's video-QA layout: video and query in one USER turn"),
    # This project's earlier defaults (video and query in one turn; ChatML with a system header).
    "vicuna_one_turn": PromptTemplate(
        name="vicuna_one_turn", text="USER: {image}\n{query} ASSISTANT:", **_VICUNA,
        description="7B/13B, video and query in one USER turn (this project's earlier default)"),
    "chatml_one_turn": PromptTemplate(
        name="chatml_one_turn",
        text="<|im_start|>user\n{image}\n{query}<|im_end|>\n<|im_start|>assistant\n",
        system_text="<|im_start|>system\n{system}<|im_end|>\n", **_CHATML,
        description="34B, a system turn, then video and query in one user turn (this project's earlier default)"),
}


@dataclass(frozen=True)
class PromptText:
    """What a run asks: the user query and the system prompt (``""``: none) that a template lays out.

    Per-row prompts (questions of an evaluation, say): ``query_column`` names a list column holding each
    row's own query (a blank value falls back to ``query``), ``reply_prefix_column`` one holding the text
    each reply is made to start with.
    """

    query: str = DEFAULT_RECAPTION_QUERY
    system: str = DEFAULT_SYSTEM_PROMPT
    query_column: str | None = None
    reply_prefix_column: str | None = None

    def layout(self, template: PromptTemplate) -> str:
        """The rendered prompt, or with per-row prompts the layout they are put in (the column names in
        braces where each row's text goes): what ``prompt_id`` hashes, the same for every row of a run."""
        query = f"{{{self.query_column}}}" if self.query_column else self.query
        prefix = f"{{{self.reply_prefix_column}}}" if self.reply_prefix_column else ""
        return template.render(query, system=self.system, reply_prefix=prefix)


def get_template(name: str) -> PromptTemplate:
    """Look up a template by name.

    Raises:
        KeyError: naming the known templates when ``name`` is not one of them.
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}") from None


def template_for_tokenizer(tokenizer) -> PromptTemplate:
    """ChatML when the tokenizer knows ``<|im_start|>`` as one token (Yi/34B), Vicuna otherwise."""
    vocab = tokenizer.get_vocab()
    return TEMPLATES["chatml"] if "<|im_start|>" in vocab else TEMPLATES["vicuna"]


def _read_text(text: str | None, path: str | None, what: str, empty_ok: bool) -> str | None:
    """``text`` exactly as given, or the contents of the file at ``path`` (local or fsspec URI) without the one
    line break that ends a text file's last line (``"\n"`` or ``"\r\n"``: further ones are kept); None if
    neither. Nothing else is stripped: a prompt is laid out byte for byte as given."""
    if text is not None and path is not None:
        raise ValueError(f"give either a {what} or a {what} file, not both")
    if path is not None:
        import fsspec

        with fsspec.open(path, "r", encoding="utf-8", newline="") as f:
            text = f.read()
        text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
        if not text.strip():
            raise ValueError(f"{what} file {path} is empty" + (f" (for no {what}, give an empty {what} instead)"
                                                               if empty_ok else ""))
    if text is not None and not text.strip() and not empty_ok:
        raise ValueError(f"{what} is empty")
    return text


def read_prompt(prompt: str | None = None, prompt_file: str | None = None) -> str:
    """The user query: from ``prompt``, from a text file, or the default recaption query.

    Raises:
        ValueError: when both are given, or the prompt or file is empty.
    """
    text = _read_text(prompt, prompt_file, "prompt", empty_ok=False)
    return DEFAULT_RECAPTION_QUERY if text is None else text


def read_system_prompt(system: str | None = None, system_file: str | None = None) -> str:
    """The system prompt: ``system`` exactly as given (blank: none), from a text file, or the project's default.

    Raises:
        ValueError: when both are given or the file is empty (give ``system=""`` for no system prompt).
    """
    text = _read_text(system, system_file, "system prompt", empty_ok=True)
    return DEFAULT_SYSTEM_PROMPT if text is None else text if text.strip() else ""


def prompt_id(template: PromptTemplate, rendered: str) -> str:
    """A short stable hash of the template and the exact rendered prompt (recorded with every caption)."""
    digest = hashlib.sha256(f"{template.name}\0{rendered}".encode()).hexdigest()
    return digest[:16]


__all__ = [
    "IMAGE_TOKEN",
    "IGNORE_INDEX",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_RECAPTION_QUERY",
    "PromptTemplate",
    "PromptText",
    "TEMPLATES",
    "get_template",
    "template_for_tokenizer",
    "read_prompt",
    "read_system_prompt",
    "prompt_id",
]

