"""A pipeline stage declared as data: the callable class, its keyword constructor arguments and its
``map_batches`` settings (batch size, pool, resources, retries), the way ``ray.data.llm`` declares its stages.

A job's stage list is plain data a test can inspect (names, arguments bound against each constructor's
signature, resources) before anything runs; :func:`apply_stages` is the only place it meets Ray Data.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass(frozen=True)
class Stage:
    """One ``map_batches`` step over Arrow batches.

    ``fn`` is a callable class; ``kwargs`` its constructor's keyword arguments (checked against its signature
    here, so a renamed or new parameter fails at declaration, never misbinds). ``map_batches`` holds the rest of
    Ray Data's settings. With an actor pool (``compute``), each actor builds ``fn(**kwargs)`` once; without one
    the instance is built here, on the driver, and Ray runs it in tasks (it must pickle).
    """

    name: str
    fn: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    map_batches: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            inspect.signature(self.fn).bind(**self.kwargs)
        except TypeError as exc:
            raise TypeError(f"stage {self.name!r}: {self.fn.__name__}({', '.join(self.kwargs)}): {exc}") from None

    @property
    def on_actors(self) -> bool:
        return isinstance(self.map_batches.get("compute"), ray.data.ActorPoolStrategy)

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        if self.on_actors:
            return ds.map_batches(self.fn, fn_constructor_kwargs=self.kwargs, batch_format="pyarrow",
                                  **self.map_batches)
        return ds.map_batches(self.fn(**self.kwargs), batch_format="pyarrow", **self.map_batches)


def apply_stages(ds: ray.data.Dataset, stages: list[Stage]) -> ray.data.Dataset:
    """``ds`` through each stage in order (lazy: nothing runs until the result is consumed)."""
    for stage in stages:
        ds = stage.apply(ds)
    return ds
