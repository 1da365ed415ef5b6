"""One input per id: a list may name a video twice, but never give one ``video_id`` to two different videos (or
clips), or the output, which keeps one row per id, would silently lose all but one of them.

The reading tasks register every row with an :class:`IdRegistry` (16 bytes a row: hashes of the id and of the
input) before anything else; the driver asks it for ids with more than one input and refuses the list before any
actor pool starts, naming the rows (a second, filtered read: a rare path).
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray

from pipeline import schema as S
from pipeline.done_set import hash_ids
from pipeline.io.masking import mask_text, public_uri

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class IdConflict(ValueError):
    """The list gives one ``video_id`` to different videos (or clips): refused before anything runs."""


MAX_CONFLICTS_NAMED = 10


def _same_input(uri: str | None) -> str:
    """The URI as one spelling per input: without credentials (most URIs have none, and the regexes cost per
    row), and a local path normalised (``file://``, ``./``, ``a/../``, ``//`` name the same file)."""
    uri = public_uri(uri or "")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if not uri or "://" in uri:
        return uri
    path = posixpath.normpath(uri)
    return "/" + path.lstrip("/") if path.startswith("//") else path  # POSIX keeps a leading "//"


def _bound(value: float | None) -> str:
    return "" if value is None else repr(value + 0.0)  # -0.0 and 0.0 are one bound


def input_keys(refs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per VideoRef row: the hash of its ``video_id`` and of the input it names (the URI without credentials,
    the clip bounds, and for a row the list could not use, why: a row whose bounds are unusable, with them, is
    not the whole video), so that rows naming one input twice can be told from two inputs under one id."""
    ids = refs.column(S.VIDEO_ID).to_pylist()
    columns = [refs.column(c).to_pylist() if c in refs.column_names else [None] * refs.num_rows
               for c in (S.URI, S.START_S, S.END_S, S.ERROR_REASON, S.ERROR)]
    inputs = [f"{_same_input(u)}|{_bound(a)}|{_bound(b)}|{reason or ''}|{text if reason == 'bad_bounds' else ''}"
              for u, a, b, reason, text in zip(*columns)]
    return hash_ids(ids), hash_ids(inputs)


# The form of a clip window's id (pipeline.windows.window_id): the source's id, then _t<start ms>-<end ms>.
_WINDOW_SHAPED = re.compile(r"(.*)_t[0-9]+-[0-9]+", re.DOTALL)


def window_shaped(refs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose id has a clip window's form (``<source>_t<ms>-<ms>``): the hash of each such id and of the
    source id it names. With clip windows, a row that is not split (its duration unreadable, an error) keeps its
    list id, so a list row naming another row's window would share that window's id."""
    shaped = [(video_id, match.group(1)) for video_id in refs.column(S.VIDEO_ID).to_pylist()
              if video_id and "_t" in video_id and (match := _WINDOW_SHAPED.fullmatch(video_id))]
    return hash_ids([a for a, _ in shaped]), hash_ids([b for _, b in shaped])


@ray.remote(num_cpus=0)
class IdRegistry:
    """Every list row's ``(id hash, input hash)`` (16 bytes a row), to find ids that name two different inputs
    before anything runs: a list is the user's statement of what each id means, and an id cannot mean two
    videos (the output keeps one row per id, so one of them would vanish)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.shaped: list[np.ndarray] = []  # (id hash, source id hash) of ids with a window's form

    def add(self, ids: np.ndarray, inputs: np.ndarray, shaped_ids: np.ndarray | None = None,
            shaped_sources: np.ndarray | None = None) -> None:
        if len(ids):
            self.parts.append(np.stack([ids, inputs], axis=1))  # kept as sent: the reading task waits for this
        if shaped_ids is not None and len(shaped_ids):
            self.shaped.append(np.stack([shaped_ids, shaped_sources], axis=1))

    def _by_id(self) -> np.ndarray:
        """Every ``(id, input)`` pair sent, sorted by id (one column's sort: seconds at ten million rows)."""
        pairs = np.concatenate(self.parts) if self.parts else np.empty((0, 2), np.uint64)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        self.parts = [pairs]
        return pairs

    def distinct_ids(self) -> int:
        """How many different ids were registered."""
        ids = self._by_id()[:, 0]
        return int(np.count_nonzero(ids[1:] != ids[:-1]) + 1) if len(ids) else 0

    def conflicting_ids(self) -> np.ndarray:
        """The id hashes that come with more than one input (an id's pairs are neighbours once sorted by id, and
        among two or more different inputs some two neighbours differ)."""
        pairs = self._by_id()
        ids, inputs = pairs[:, 0], pairs[:, 1]
        return np.unique(ids[1:][(ids[1:] == ids[:-1]) & (inputs[1:] != inputs[:-1])])

    def window_clashes(self) -> np.ndarray:
        """``(id hash, source id hash)`` of the ids with a window's form whose source id is also a list row's id
        (registered with ``shaped_ids``: a job with clip windows)."""
        if not self.shaped:
            return np.empty((0, 2), np.uint64)
        shaped = np.unique(np.concatenate(self.shaped), axis=0)
        ids = self._by_id()[:, 0]
        return shaped[np.isin(shaped[:, 1], ids)]


class CheckIds:
    """The reading tasks' first filter: registers every row with the :class:`IdRegistry` (waited for, so the
    check after the read sees every row), then applies ``then`` (the job's :class:`SkipDone`). With ``windows``
    (a job cutting clip windows) the ids with a window's form are registered too."""

    def __init__(self, registry, then=None, windows: bool = False) -> None:
        self.registry, self.then, self.windows = registry, then, windows

    def __call__(self, refs: pa.Table) -> pa.Table:
        ray.get(self.registry.add.remote(*input_keys(refs), *(window_shaped(refs) if self.windows else ())))
        return self.then(refs) if self.then is not None else refs


class OnlyIds:
    """Keeps the rows whose id hash is one of ``id_hashes`` (to name the rows behind a conflict)."""

    def __init__(self, id_hashes: np.ndarray) -> None:
        self.id_hashes = set(int(h) for h in id_hashes)

    def __call__(self, refs: pa.Table) -> pa.Table:
        ids, _ = input_keys(refs)
        return refs.filter(pa.array([int(h) in self.id_hashes for h in ids], pa.bool_()))


def check_list_ids(cfg: "JobConfig", conflicting: np.ndarray) -> None:
    """Refuse a list that gives one id to different inputs, naming the rows (a second, filtered read of the list:
    a rare path, so the first read keeps only 16 bytes a row).

    Raises:
        IdConflict: the ids, each with the inputs the list gives it (URIs without credentials).
    """
    if not len(conflicting):
        return
    from pipeline.io.sources import read_video_refs

    named = conflicting[:MAX_CONFLICTS_NAMED]
    rows = read_video_refs(cfg.source, cfg.storage_options, retry=cfg.retry, keep=OnlyIds(named)).take_all()
    inputs: dict[str, list[str]] = {}
    for row in rows:
        bounds = (f" [{row[S.START_S]}, {row[S.END_S]}] s" if row[S.START_S] is not None or row[S.END_S] is not None
                  else "")
        described = mask_text(public_uri(row[S.URI] or "")) + bounds
        if described not in inputs.setdefault(row[S.VIDEO_ID], []):
            inputs[row[S.VIDEO_ID]].append(described)
    lines = [f"  {video_id!r}: " + "; ".join(uris[:5]) + (f"; ... ({len(uris)} in all)" if len(uris) > 5 else "")
             for video_id, uris in sorted(inputs.items())]
    more = f"\n  ... and {len(conflicting) - len(named)} more ids" if len(conflicting) > len(named) else ""
    raise IdConflict(
        f"the video list {mask_text(cfg.source.input)} gives {len(conflicting)} video_id(s) to more than one "
        "video: the output keeps one row per video_id, so all but one of them would never be captioned. "
        "Give each video its own id (or leave the id column out: ids are then derived from the URIs). Nothing "
        "was run.\n" + "\n".join(lines) + more)


def check_window_ids(cfg: "JobConfig", clashes: np.ndarray) -> None:
    """With clip windows, refuse a list that gives a row the id a window of another row would have
    (``clip_t0-5000`` beside ``clip``), naming the rows: a row that is not cut into windows keeps its list id, and
    the output keeps one row per id, so one of the two would be lost.

    Raises:
        IdConflict: each such id beside the row whose window it names (URIs without credentials).
    """
    if not len(clashes):
        return
    from pipeline.io.sources import read_video_refs

    named = clashes[:MAX_CONFLICTS_NAMED]
    rows = read_video_refs(cfg.source, cfg.storage_options, retry=cfg.retry,
                           keep=OnlyIds(np.unique(named.ravel()))).take_all()
    ids = {int(h): row[S.VIDEO_ID] for h, row in zip(hash_ids([r[S.VIDEO_ID] for r in rows]), rows)}
    where = {row[S.VIDEO_ID]: mask_text(public_uri(row[S.URI] or "")) for row in rows}
    lines = []
    for shaped, source in named:
        shaped_id, source_id = ids.get(int(shaped), "?"), ids.get(int(source), "?")
        lines.append(f"  {shaped_id!r} ({where.get(shaped_id, '?')}) has the form of a window id of {source_id!r} "
                     f"({where.get(source_id, '?')})")
    more = f"\n  ... and {len(clashes) - len(named)} more" if len(clashes) > len(named) else ""
    raise IdConflict(
        f"with clip windows, the video list {mask_text(cfg.source.input)} gives {len(clashes)} row(s) an id of "
        "the form <video_id>_t<start ms>-<end ms>, the id a clip window of another row can get. A row that is not "
        "cut into windows (its duration unreadable, a read error) keeps its list id, and the output keeps one row "
        "per video_id, so one of the two would be lost. Rename these rows (or leave the id column out: ids are "
        "then derived from the URIs). Nothing was run.\n" + "\n".join(lines) + more)


def check_registered_ids(cfg: "JobConfig", registry) -> None:
    """After the list's read: :func:`check_list_ids`, and with clip windows :func:`check_window_ids`, from what
    the reading tasks registered with ``registry`` (an :class:`IdRegistry`)."""
    check_list_ids(cfg, ray.get(registry.conflicting_ids.remote()))
    if cfg.source.windows:
        check_window_ids(cfg, ray.get(registry.window_clashes.remote()))
