"""Ray Data's iteration metrics without the dataset's per-block stats.

While the driver iterates a dataset, Ray Data (2.60) sends the execution's whole ``DatasetStats`` to its stats
actor every 5 s (``_StatsManager.update_iteration_metrics``). The actor reads only the ``iter_*`` timers and
counters, but the object carries a ``BlockStats`` record for every block every operator made, so it grows with
the rows done: 1.25 MB after 200,000 rows of this job (measured). Above 100 KB an actor call's argument goes to
the object store, written by the driver, so each send touches fresh pages of the store (the driver's RSS grew
by about 155 bytes a row, 435 MiB over a 10M-row job) and pickles every record again (driver CPU that grows with
the segment).

:func:`slim_iteration_stats` makes that call send a shallow copy without the per-block records and the parent
datasets' stats: the actor gets every field it reads, and nothing the execution keeps changes. It wraps
the call only where the private API is as described (a newer Ray without it is left alone).
"""

from __future__ import annotations

import copy
import logging

logger = logging.getLogger(__name__)

_SLIM = "_pllava_slim_iteration_stats"


def without_block_stats(stats):
    """A shallow copy of a ``DatasetStats`` without its per-block records (``metadata``) and its parents'
    stats: the ``iter_*`` timers and counters are the very objects of ``stats``."""
    slim = copy.copy(stats)
    slim.metadata = {}
    slim.parents = []
    return slim


def slim_iteration_stats() -> bool:
    """Make Ray Data's periodic iteration-metrics update send :func:`without_block_stats` of the dataset's
    stats (idempotent). False where this Ray has no such call to wrap (nothing is changed then)."""
    try:
        from ray.data._internal import stats as ray_data_stats
    except ImportError:  # pragma: no cover - Ray Data is a dependency; a future layout may move it
        return False
    manager = getattr(ray_data_stats, "_StatsManager", None)
    send = getattr(manager, "update_iteration_metrics", None)
    if send is None:
        logger.debug("Ray Data has no _StatsManager.update_iteration_metrics: iteration stats left as they are")
        return False
    if getattr(send, _SLIM, False):
        return True

    def update_iteration_metrics(stats, *args, **kwargs):
        try:
            slim = without_block_stats(stats)
        except Exception:  # noqa: BLE001 - a DatasetStats of another shape: sent as Ray Data sends it
            slim = stats
        return send(slim, *args, **kwargs)

    setattr(update_iteration_metrics, _SLIM, True)
    update_iteration_metrics.__wrapped__ = send
    manager.update_iteration_metrics = staticmethod(update_iteration_metrics)
    return True
