"""The finished ids of an output as a set every reading task tests its rows against, held in Ray's object store.

Each part is the ids of one partition of the output's scan (:mod:`pipeline.resume`) with their 64-bit hashes,
sorted by hash: a row's id is looked up by binary search on its hash, then compared as a string, so a hash
shared by two ids never marks a video done that is not. Parts are made by the scan's tasks and stay in the
object store: the driver holds their references only, and the reading tasks of one node map the same memory
(numpy and Arrow buffers come back from the object store without a copy).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def hash_ids(values: pa.Array | pa.ChunkedArray | Iterable[str]) -> np.ndarray:
    """A stable 64-bit hash per string, the same in every process (unlike Python's ``hash``): pandas' SipHash
    with its fixed key, vectorised."""
    import pandas as pd

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        array = values.to_numpy(zero_copy_only=False)
    else:
        array = np.array(list(values), dtype=object)
    if not len(array):
        return np.array([], dtype=np.uint64)
    return pd.util.hash_array(array, categorize=False).astype(np.uint64, copy=False)


@dataclass(frozen=True)
class DonePart:
    """Ids and their hashes (:func:`hash_ids`), in the same order, sorted by hash."""

    hashes: np.ndarray
    ids: pa.Array

    @classmethod
    def of(cls, ids: pa.Array | pa.ChunkedArray, hashes: np.ndarray | None = None,
           sorted_by_hash: bool = False) -> "DonePart":
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        hashes = hash_ids(ids) if hashes is None else hashes
        if not sorted_by_hash:
            order = np.argsort(hashes, kind="stable")
            hashes, ids = hashes[order], ids.take(pa.array(order))
        return cls(np.ascontiguousarray(hashes, dtype=np.uint64), ids.cast(pa.string()))

    def contains(self, hashes: np.ndarray, ids: pa.Array, found: np.ndarray,
                 order: np.ndarray | None = None) -> None:
        """Set ``found[i]`` for each ``ids[i]`` (hash ``hashes[i]``) in this part. ``order``: the positions of
        ``hashes`` in hash order (only the run of them within this part's range is looked up)."""
        if not len(self.hashes):
            return
        order = np.argsort(hashes, kind="stable") if order is None else order
        ordered = hashes[order]
        lookup = order[np.searchsorted(ordered, self.hashes[0], side="left"):
                       np.searchsorted(ordered, self.hashes[-1], side="right")]
        lookup = lookup[~found[lookup]]
        if not len(lookup):
            return
        first = np.searchsorted(self.hashes, hashes[lookup], side="left")
        count = np.searchsorted(self.hashes, hashes[lookup], side="right") - first
        lookup, first, count = lookup[count > 0], first[count > 0], count[count > 0]
        if not len(lookup):
            return
        same = pc.fill_null(pc.equal(self.ids.take(pa.array(first)), ids.take(pa.array(lookup))), False)
        same = same.to_numpy(zero_copy_only=False)
        found[lookup[same]] = True
        for row, start, n in zip(lookup[~same & (count > 1)], first[~same & (count > 1)], count[~same & (count > 1)]):
            wanted = ids[int(row)].as_py()  # a hash two different ids share: rare, compared one by one
            found[row] = wanted is not None and any(self.ids[int(start) + k].as_py() == wanted
                                                    for k in range(1, int(n)))


def connected_ray():
    """Ray when this process is connected to a cluster (never imported here for a caller that runs without)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


@dataclass(frozen=True)
class DoneSet:
    """Finished ids: :class:`DonePart` s, or references to them in Ray's object store, and how many ids."""

    parts: tuple = ()
    size: int = 0

    @classmethod
    def of(cls, ids: pa.Array | Iterable[str]) -> "DoneSet":
        """A set of the given ids (in the object store when Ray is up: a task that holds the set does not carry
        a copy of it)."""
        return cls().plus(ids)

    def plus(self, ids: pa.Array | Iterable[str]) -> "DoneSet":
        """This set and ``ids``."""
        ids = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())
        if not len(ids):
            return self
        part, ray = DonePart.of(ids), connected_ray()
        return DoneSet(self.parts + (ray.put(part) if ray else part,), self.size + len(ids))

    def __len__(self) -> int:
        return self.size

    def _fetched(self) -> list[DonePart]:
        refs = [p for p in self.parts if not isinstance(p, DonePart)]
        if not refs:
            return list(self.parts)
        key = tuple(r.hex() for r in refs)
        if key not in _FETCHED:
            _FETCHED.clear()  # one set per worker process at a time: the run it works for
            _FETCHED[key] = dict(zip(key, connected_ray().get(refs)))
        fetched = _FETCHED[key]
        return [p if isinstance(p, DonePart) else fetched[p.hex()] for p in self.parts]

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Per id: whether it is in the set (a boolean array)."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        found = np.zeros(len(ids), dtype=bool)
        if self.size and len(ids):
            hashes = hash_ids(ids)
            order = np.argsort(hashes, kind="stable")
            for part in self._fetched():
                part.contains(hashes, ids, found, order)
        return found

    def ids(self) -> pa.Array:
        """Every id of the set (distinct), materialised here: for tests and small sets."""
        arrays = [p.ids for p in self._fetched()]
        return pc.unique(pa.concat_arrays(arrays)) if arrays else pa.array([], pa.string())


_FETCHED: dict[tuple, dict] = {}  # per worker process: the parts of the set it tests rows against
