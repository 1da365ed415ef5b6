"""Prompt sets: every string an evaluation sends to a model, by name.

An evaluation's protocol (structure, rules, scoring) follows the PLLaVA reference; its wording is a prompt set:

* ``own`` (the default): this project's wording, written for it.
* ``--prompts FILE``: a YAML mapping of entry names to strings, replacing those entries.
* ``--reference-repo DIR``: the strings read from a local checkout of the reference's evaluation code
  (``magic-research/PLLaVA``), by parsing its Python files (:mod:`ast`): nothing of it is copied into this
  project, and a checkout that has moved on is reported by entry, not guessed at.

With the reference's strings a rendered prompt is byte for byte the reference's (the layout rules are in
:mod:`pipeline.evaluation.benchmarks` and :mod:`model.prompts`). ``metrics.json`` records the set's source and a
hash of every string (:meth:`PromptSet.record`), so a result says whether it can stand beside the paper's.

Judge entries are ``str.format`` templates: ``{question}``, ``{answer}``, ``{pred}`` (VCG; ``{question1}`` and
``{pred1}`` for the consistency pair), ``{caption}`` and ``{pred}`` (recaption). A literal brace is doubled.
"""

from __future__ import annotations

import ast
import hashlib
import os
import string
from dataclasses import dataclass, field

import yaml

from model.prompts import DEFAULT_RECAPTION_QUERY, DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN
from pipeline.io.masking import public_uri
from pipeline.io.storage import TextFileError, read_text_bounded

# The VCG judge's dimensions, in the order results are shown; each has a system and a user entry.
VCG_DIMENSIONS = ("correctness", "detail", "context", "temporal", "consistency")

_SCORE_REPLY = ("Reply with only a Python dictionary with one key, 'score', whose value is a number from 0 to 5, "
                "for example {{'score': 3}}.")


def _judge_system(what: str) -> str:
    return ("You grade answers a video model gave to questions about videos. You do not see the video: compare "
            f"the predicted answer with the correct answer, judging {what}. Paraphrases and synonyms count as "
            "matches.")


_VCG_ONE = "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {pred}\n\n"

OWN: dict[str, str] = {
    # Multiple choice (mcq, mvbench): query = question block + " " + post_query; the reply starts with
    # answer_prompt; reply_start is put back before the generated text for scoring.
    "mcq.system": (
        "Watch the video closely: what happens and in which order, why it happens, how objects move and what "
        "people do and how they stand. Then choose the option that answers the question best."),
    "mcq.post_query": "\nAnswer with the letter of the best option.",
    "mcq.answer_prompt": "Answer:(",
    "mcq.reply_start": "(",
    # Video-MME: pre_query, the question, the options (A. ...), post_query, one per line.
    "videomme.system": "",
    "videomme.pre_query": "Pick the option that best answers the question about the video. Reply with its letter.",
    "videomme.post_query": "Letter of the best option:",
    # Open questions (VCG) and their judge.
    "vcg.system": ("You are a video assistant. Answer the user's question about the video accurately and in "
                   "detail, from what the frames show."),
    "vcg.judge.correctness.system": _judge_system("whether its facts are those of the correct answer"),
    "vcg.judge.correctness.user": _VCG_ONE + "Score how correct the predicted answer's facts are: 0 wrong or "
                                             "missing, 5 fully right. " + _SCORE_REPLY,
    "vcg.judge.detail.system": _judge_system("how completely and specifically it covers the correct answer"),
    "vcg.judge.detail.user": _VCG_ONE + "Score how fully and specifically the predicted answer covers the main "
                                        "points of the correct answer: 0 not at all, 5 completely. " + _SCORE_REPLY,
    "vcg.judge.context.system": _judge_system("whether it fits the situation the correct answer describes"),
    "vcg.judge.context.user": _VCG_ONE + "Score how well the predicted answer fits the overall situation of the "
                                         "correct answer, without unrelated content: 0 not at all, 5 fully. "
                                         + _SCORE_REPLY,
    "vcg.judge.temporal.system": _judge_system("whether it keeps the order of events of the correct answer"),
    "vcg.judge.temporal.user": _VCG_ONE + "Score how well the predicted answer keeps the order of events the "
                                          "correct answer gives: 0 not at all, 5 exactly. " + _SCORE_REPLY,
    "vcg.judge.consistency.system": _judge_system("whether two answers to two similar questions agree"),
    "vcg.judge.consistency.user": (
        "First question: {question}\nSecond question: {question1}\nCorrect answer: {answer}\n"
        "Predicted answer to the first: {pred}\nPredicted answer to the second: {pred1}\n\n"
        "Score how well the two predicted answers agree with each other and with the correct answer: 0 they "
        "contradict, 5 fully consistent. " + _SCORE_REPLY),
    # Recaption: the caption prompt and the judge comparing a caption with a reference caption.
    "recaption.system": DEFAULT_SYSTEM_PROMPT,
    "recaption.query": DEFAULT_RECAPTION_QUERY,
    "recaption.judge.system": ("You grade video captions. You do not see the video: compare the predicted caption "
                               "with the reference caption of the same video."),
    "recaption.judge.user": (
        "Reference caption: {caption}\nPredicted caption: {pred}\n\nDoes the predicted caption describe the same "
        "video as the reference, without contradicting it? Reply with only a Python dictionary with the keys "
        "'pred' ('yes' or 'no') and 'score' (a number from 0 to 5 for how well it matches), for example "
        "{{'pred': 'yes', 'score': 4}}."),
}

# The format fields each template entry must use (a judge that is never shown the prediction grades nothing),
# and those it may use.
TEMPLATE_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    **{f"vcg.judge.{d}.user": ({"pred"}, {"question", "answer", "pred"}) for d in VCG_DIMENSIONS[:4]},
    "vcg.judge.consistency.user": ({"pred", "pred1"}, {"question", "question1", "answer", "pred", "pred1"}),
    "recaption.judge.user": ({"pred"}, {"caption", "pred"}),
}

# Where each entry is in the reference checkout: (file, how to find it). Kinds:
#   ("const", NAME): a module-level string constant;
#   ("call", NAME, KEYWORD): a keyword argument of the call assigned to NAME at module level;
#   ("local", FUNCTION, NAME): a string assigned to NAME inside FUNCTION;
#   ("kwarg", FUNCTION, CALLEE, KEYWORD): a keyword argument of a call to CALLEE inside FUNCTION;
#   ("dict", NAME, KEY, ...): a string inside the dict literal (or OrderedDict of one) assigned to NAME.
_EVAL_UTILS = "tasks/eval/eval_utils.py"
_MVBENCH = "tasks/eval/mvbench/pllava_eval_mvbench.py"
_VCG = "tasks/eval/vcgbench/__init__.py"
_RECAPTION = "tasks/eval/recaption/__init__.py"
_VCG_REFERENCE_NAMES = {"detail": "detailed_orientation"}
REFERENCE: dict[str, tuple[str, tuple]] = {
    "mcq.system": (_EVAL_UTILS, ("const", "SYSTEM_MVBENCH")),
    "mcq.post_query": (_MVBENCH, ("local", "run", "post_query_prompt")),
    "mcq.answer_prompt": (_MVBENCH, ("kwarg", "run", "infer_mvbench", "answer_prompt")),
    "mcq.reply_start": (_MVBENCH, ("kwarg", "run", "infer_mvbench", "return_prompt")),
    "vcg.system": (_EVAL_UTILS, ("call", "conv_eval_vcg", "system")),
    **{f"vcg.judge.{d}.{part}": (_VCG, ("dict", "sub_task_type2chatgpt_contents", _VCG_REFERENCE_NAMES.get(d, d),
                                        part))
       for d in VCG_DIMENSIONS for part in ("system", "user")},
    "recaption.system": (_EVAL_UTILS, ("const", "SYSTEM_RECAPTION")),
    "recaption.query": ("tasks/eval/recaption/pllava_recaption.py", ("local", "infer_recaption", "query")),
    "recaption.judge.system": (_RECAPTION, ("dict", "task_type2chatgpt_contents", "Panda70M", "system")),
    "recaption.judge.user": (_RECAPTION, ("dict", "task_type2chatgpt_contents", "Panda70M", "user")),
}

# The entries each benchmark uses (what its results' comparability depends on).
USED_BY: dict[str, tuple[str, ...]] = {
    "mcq": ("mcq.system", "mcq.post_query", "mcq.answer_prompt", "mcq.reply_start"),
    "mvbench": ("mcq.system", "mcq.post_query", "mcq.answer_prompt", "mcq.reply_start"),
    "videomme": ("videomme.system", "videomme.pre_query", "videomme.post_query"),
    "vcg": ("vcg.system", *(f"vcg.judge.{d}.{p}" for d in VCG_DIMENSIONS for p in ("system", "user"))),
    "recaption": ("recaption.system", "recaption.query", "recaption.judge.system", "recaption.judge.user"),
    "captions": ("recaption.system", "recaption.query"),
}


class PromptSetError(ValueError):
    """A prompt file or reference checkout that cannot give the strings asked of it."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSet:
    """The strings of one evaluation, and where each came from (``own``, ``file``, ``reference``)."""

    strings: dict[str, str] = field(default_factory=lambda: dict(OWN))
    origin: dict[str, str] = field(default_factory=lambda: {k: "own" for k in OWN})
    sources: tuple[str, ...] = ()  # the file and checkout read, as given

    def __getitem__(self, name: str) -> str:
        return self.strings[name]

    def record(self, benchmark: str) -> dict:
        """What ``metrics.json`` keeps: the set's sources, per entry this benchmark uses its origin and hash, and
        whether every one of them is the reference's (the paper's numbers were made with those)."""
        used = USED_BY.get(benchmark, ())
        return {
            "sources": list(self.sources) or ["own"],
            "entries": {name: {"origin": self.origin[name], "sha256_16": digest(self.strings[name])}
                        for name in used},
            "reference_strings": bool(used) and all(self.origin[n] == "reference" for n in used),
        }


MAX_STRING_CHARS = 100_000  # a prompt entry longer than this is refused (a judge prompt is a page at most)
MAX_SOURCE_BYTES = 10_000_000  # a reference file or prompt file larger than this is not read


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + f"... ({len(text)} characters)"


def _check(name: str, text, where: str) -> str:
    """``text`` as entry ``name``: a known entry, a string of UTF-8 text without the video placeholder; a judge
    template uses only its plain fields (no attribute, index, conversion or format spec: a template gets the
    texts it names, as written).

    Raises:
        PromptSetError: naming ``where`` and the entry.
    """
    if name not in OWN:
        raise PromptSetError(f"{where}: unknown prompt entry {_brief(name)}; known: {sorted(OWN)}")
    if not isinstance(text, str):
        raise PromptSetError(f"{where}: {name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptSetError(f"{where}: {name} holds a character that is not text (a lone surrogate)") from None
    if len(text) > MAX_STRING_CHARS:
        raise PromptSetError(f"{where}: {name} is {len(text)} characters long, more than {MAX_STRING_CHARS}")
    if IMAGE_TOKEN in text:
        raise PromptSetError(f"{where}: {name} must not hold {IMAGE_TOKEN!r}: the template places the video")
    if name in TEMPLATE_FIELDS:
        needed, allowed = TEMPLATE_FIELDS[name]
        try:
            parts = [(f, spec, conversion) for _, f, spec, conversion in string.Formatter().parse(text)
                     if f is not None]
        except ValueError as exc:
            raise PromptSetError(f"{where}: {name} is not a format template ({exc}); write a literal brace as "
                                 "{{ or }}") from None
        fields = {f for f, _, _ in parts}
        if not needed <= fields or not fields <= allowed:
            raise PromptSetError(f"{where}: {name} must use the fields {sorted(needed)} and may use "
                                 f"{sorted(allowed)}; it uses {_brief(sorted(fields))}")
        if any(spec or conversion for _, spec, conversion in parts):
            raise PromptSetError(f"{where}: {name} must name its fields plainly ({{pred}}, not {{pred!r}} or "
                                 "{pred:...}): the judge is shown each text as written")
    return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (the first string would be lost)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a key that is not text",
                                                        key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"{_brief(key)} is given twice",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_prompt_file(path: str) -> dict[str, str]:
    """A YAML mapping of entry names to strings (read as written: YAML's ``|`` block keeps a final newline).

    Raises:
        PromptSetError: unreadable, not UTF-8, not YAML, not a mapping, a name given twice, an unknown name or a
            value that is not a usable string (:func:`_check`).
    """
    shown = public_uri(path)
    try:
        text = read_text_bounded(path, MAX_SOURCE_BYTES, what="prompt file", hint="not a prompt file",
                                 keep_userinfo=True)
    except TextFileError as exc:
        raise PromptSetError(str(exc)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PromptSetError(f"{shown}: not YAML ({str(exc).splitlines()[0][:200]})") from None
    except RecursionError:
        raise PromptSetError(f"{shown}: not YAML this reader can take (nested too deep)") from None
    if not isinstance(data, dict) or not data:
        raise PromptSetError(f"{shown}: a prompt file is a YAML mapping of entry names to strings")
    return {str(k): _check(str(k), v, shown) for k, v in data.items()}


def _string(node: ast.AST, what: str) -> str:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise PromptSetError(f"{what} is not a literal string (an f-string or an expression)") from None
    if not isinstance(value, str):
        raise PromptSetError(f"{what} is {type(value).__name__}, not a string")
    return value


def _assigned(body, name: str) -> list[ast.AST]:
    return [n.value for n in body if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise PromptSetError(f"no function {name}()")


def _one(values: list, what: str):
    if len(values) != 1:
        raise PromptSetError(f"{what}: found {len(values)} candidates, expected exactly one")
    return values[0]


def _locate(tree: ast.Module, how: tuple) -> str:
    kind, *args = how
    if kind == "const":
        return _string(_one(_assigned(tree.body, args[0]), args[0]), args[0])
    if kind == "call":
        name, keyword = args
        call = _one(_assigned(tree.body, name), name)
        if not isinstance(call, ast.Call):
            raise PromptSetError(f"{name} is not a call")
        return _string(_one([k.value for k in call.keywords if k.arg == keyword], f"{name}({keyword}=...)"),
                       f"{name}({keyword}=...)")
    if kind == "local":
        function, name = args
        nodes = [n.value for n in ast.walk(_function(tree, function)) if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]
        return _string(_one(nodes, f"{name} in {function}()"), f"{name} in {function}()")
    if kind == "kwarg":
        function, callee, keyword = args
        values = [k.value for n in ast.walk(_function(tree, function)) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id == callee for k in n.keywords if k.arg == keyword]
        return _string(_one(values, f"{callee}({keyword}=...) in {function}()"), f"{callee}({keyword}=...)")
    if kind == "dict":
        name, *keys = args
        node = _one(_assigned(tree.body, name), name)
        if isinstance(node, ast.Call) and len(node.args) == 1:  # OrderedDict({...})
            node = node.args[0]
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise PromptSetError(f"{name} is not a literal dict") from None
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                raise PromptSetError(f"{name} has no entry {'/'.join(keys)}")
            value = value[key]
        if not isinstance(value, str):
            raise PromptSetError(f"{name}[{'/'.join(keys)}] is not a string")
        return value
    raise AssertionError(kind)


def _parse(local: str, path: str) -> ast.Module:
    """A reference file's syntax tree: a regular file of at most :data:`MAX_SOURCE_BYTES` of UTF-8 Python.

    Raises:
        PromptSetError: anything else, the file named (nothing of its contents quoted).
    """
    try:
        if not os.path.isfile(local):
            raise PromptSetError("missing, or not a regular file")
        if os.path.getsize(local) > MAX_SOURCE_BYTES:
            raise PromptSetError(f"larger than {MAX_SOURCE_BYTES} bytes")
        with open(local, "rb") as f:
            source = f.read(MAX_SOURCE_BYTES + 1).decode("utf-8")
        return ast.parse(source, filename=path)
    except PromptSetError:
        raise
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"not UTF-8 text (byte {exc.start})") from None
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes
        raise PromptSetError(f"not Python this reader can parse ({type(exc).__name__})") from None
    except (RecursionError, MemoryError):
        raise PromptSetError("nested too deep to parse") from None
    except OSError as exc:
        raise PromptSetError(f"cannot read ({type(exc).__name__})") from None


def read_reference(checkout: str) -> dict[str, str]:
    """The reference's strings from a local checkout of its repository (``DIR/tasks/eval/...``).

    Raises:
        PromptSetError: not a checkout of the reference, or an entry that cannot be found where it was (each
            entry named with its file and what was looked for).
    """
    if not os.path.isdir(os.path.join(checkout, "tasks", "eval")):
        raise PromptSetError(f"{checkout}: not a checkout of the PLLaVA reference (no tasks/eval folder)")
    trees: dict[str, ast.Module] = {}
    found, problems = {}, []
    for name, (path, how) in REFERENCE.items():
        try:
            if path not in trees:
                trees[path] = _parse(os.path.join(checkout, path), path)
            found[name] = _check(name, _locate(trees[path], how), path)
        except PromptSetError as exc:
            problems.append(f"{name} ({path}): {exc}")
        except (TypeError, ValueError, RecursionError, MemoryError) as exc:  # crafted literals and nesting
            problems.append(f"{name} ({path}): not a literal this reader can take ({type(exc).__name__})")
    if problems:
        raise PromptSetError(f"{checkout}: cannot read these prompt entries from the reference checkout: "
                             + "; ".join(problems))
    return found


def load_prompt_set(prompts_file: str | None = None, reference_repo: str | None = None) -> PromptSet:
    """The own set, with a reference checkout's strings over it, and a prompt file's over those."""
    strings, origin, sources = dict(OWN), {k: "own" for k in OWN}, []
    for kind, path, read in (("reference", reference_repo, read_reference), ("file", prompts_file,
                                                                              read_prompt_file)):
        if path:
            replaced = read(path)
            strings.update(replaced)
            origin.update({k: kind for k in replaced})
            sources.append(f"{kind}:{os.path.abspath(path) if '://' not in path else public_uri(path)}")
    return PromptSet(strings, origin, tuple(sources))
