"""Prompt templates: how a system prompt, one video and a user query become model input text.

PLLaVA puts exactly one ``<image>`` placeholder per video in the prompt; the model expands it into the
video's pooled visual tokens. Two conversation styles are in use by the published checkpoints:

* ``vicuna``: 7B/13B (Vicuna-based LLaVA-NeXT): ``USER: ...`` / ``ASSISTANT:`` turns, ``</s>`` ends a reply.
* ``chatml``: 34B (Yi-based LLaVA-NeXT): ``<|im_start|>role ... <|im_end|>`` turns.

The wording of the default recaption prompt is the project's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

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

    ``text`` holds ``{system}``, ``{image}`` and ``{query}`` fields; ``stop_strings`` end a reply and are
    removed from decoded captions; ``answer_suffix`` closes an assistant answer in training text.
    """

    name: str
    text: str
    stop_strings: tuple[str, ...]
    answer_suffix: str  # closes an answer in training text
    answer_prefix: str = ""
    turn_text: str = "{query}"  # a later user turn of a multi-turn conversation, ending where the answer starts

    def render(self, query: str, system: str = DEFAULT_SYSTEM_PROMPT) -> str:
        """The full prompt for one video and one query, ending where the assistant's answer starts."""
        if IMAGE_TOKEN in query or IMAGE_TOKEN in system:
            raise ValueError(f"prompt text must not contain {IMAGE_TOKEN!r}: the template places it")
        return self.text.format(system=system, image=IMAGE_TOKEN, query=query.strip())


TEMPLATES: dict[str, PromptTemplate] = {
    "vicuna": PromptTemplate(
        name="vicuna",
        text="{system} USER: {image}\n{query} ASSISTANT:",
        stop_strings=("</s>",),
        answer_suffix="</s>",
        answer_prefix=" ",
        turn_text="USER: {query} ASSISTANT:",
    ),
    "chatml": PromptTemplate(
        name="chatml",
        text=(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image}\n{query}<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        stop_strings=("<|im_end|>",),
        answer_suffix="<|im_end|>\n",
        turn_text="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
    ),
}


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


def read_prompt(prompt: str | None = None, prompt_file: str | None = None) -> str:
    """The user query: from ``prompt``, from a text file, or the default recaption query.

    Raises:
        ValueError: when both are given or the file is empty.
    """
    if prompt is not None and prompt_file is not None:
        raise ValueError("give either a prompt or a prompt file, not both")
    if prompt_file is not None:
        import fsspec

        with fsspec.open(prompt_file, "r", encoding="utf-8") as f:
            text = f.read().strip()
        if not text:
            raise ValueError(f"prompt file {prompt_file} is empty")
        return text
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("prompt is empty")
        return prompt.strip()
    return DEFAULT_RECAPTION_QUERY


def prompt_id(template: PromptTemplate, rendered: str) -> str:
    """A short stable hash of the template and the exact rendered prompt (recorded with every caption)."""
    digest = hashlib.sha256(f"{template.name}\0{rendered}".encode()).hexdigest()
    return digest[:16]


__all__ = [
    "IMAGE_TOKEN",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_RECAPTION_QUERY",
    "PromptTemplate",
    "TEMPLATES",
    "get_template",
    "template_for_tokenizer",
    "read_prompt",
    "prompt_id",
]

