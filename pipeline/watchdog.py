"""A stall watchdog for the driver: when no output arrives for a while, say what the cluster is waiting on,
and optionally give up, instead of waiting silently forever."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
_DONE = object()


class Stalled(RuntimeError):
    """No output arrived for longer than the configured limit."""


def watched(items: Iterable[T], warn_after_s: float, fail_after_s: float | None,
            describe: Callable[[], str]) -> Iterator[T]:
    """Yield ``items`` (consumed in a background thread). Each ``warn_after_s`` without a new item, log a
    warning with ``describe()``; after ``fail_after_s`` without one, raise :class:`Stalled` with it.

    When the consumer stops (an error, a stall, or it closes this generator), the thread stops taking items
    and closes ``items`` if it is a generator: a job that gave up starts no more work behind its back."""
    inbox: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                inbox.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which re-raises it
            offer(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    threading.Thread(target=pump, name="output-pump", daemon=True).start()
    last = warned = time.monotonic()
    try:
        while True:
            try:
                item = inbox.get(timeout=min(1.0, warn_after_s))
            except queue.Empty:
                now = time.monotonic()
                if fail_after_s is not None and now - last >= fail_after_s:
                    raise Stalled(f"no output for {now - last:.0f} s (limit {fail_after_s:g} s): "
                                  f"{describe()}") from None
                if now - warned >= warn_after_s:
                    warned = now
                    logger.warning("no output for %.0f s: %s", now - last, describe())
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            last = warned = time.monotonic()
            yield item
    finally:
        stop.set()


def describe_cluster() -> str:
    """Actors that wait to start (and why, when the cluster can tell) and what is free: the usual reasons
    a Ray job waits."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    parts, waiting = [], None
    try:  # a private API: the state of every actor of this cluster, without the dashboard
        from ray._private.state import actors

        waiting = sorted(f"{a.get('ActorClassName')} ({a.get('State')})" for a in actors().values()
                         if a.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"))
        parts.append("actors not running yet (starting, or waiting for resources): "
                     + (", ".join(waiting) if waiting else "none"))
    except Exception as exc:  # noqa: BLE001 - the diagnosis must never be what fails
        parts.append(f"actor states unavailable ({type(exc).__name__})")
    for name in ("CPU", "GPU"):
        if total.get(name):
            parts.append(f"{name} free {free.get(name, 0):g} of {total[name]:g}")
    if waiting == []:
        parts.append("every actor has started, so a stage is busy (a slow or hanging read, a long decode or "
                     "generation)")
    return "; ".join(parts)
