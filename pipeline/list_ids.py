"""One input per id: a list may name a video twice, but never give one ``video_id`` to two different videos (or
clips), or the output, which keeps one row per id, would silently lose all but one of them.

The reading tasks register every row with an :class:`IdRegistry` (16 bytes a row: hashes of the id and of the
input) before anything else; the driver asks it for ids with more than one input and refuses the list before any
actor pool starts, naming the rows (a second, filtered read: a rare path).
"""

from __future__ import annotations

import posixpath
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


@ray.remote(num_cpus=0)
class IdRegistry:
    """Every list row's ``(id hash, input hash)`` (16 bytes a row), to find ids that name two different inputs
    before anything runs: a list is the user's statement of what each id means, and an id cannot mean two
    videos (the output keeps one row per id, so one of them would vanish)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, ids: np.ndarray, inputs: np.ndarray) -> None:
        if len(ids):
            self.parts.append(np.stack([ids, inputs], axis=1))  # kept as sent: the reading task waits for this

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


class CheckIds:
    """The reading tasks' first filter: registers every row with the :class:`IdRegistry` (waited for, so the
    check after the read sees every row), then applies ``then`` (the job's :class:`SkipDone`)."""

    def __init__(self, registry, then=None) -> None:
        self.registry, self.then = registry, then

    def __call__(self, refs: pa.Table) -> pa.Table:
        ray.get(self.registry.add.remote(*input_keys(refs)))
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
