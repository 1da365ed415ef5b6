"""A run against its plan: whether a stored plan is one :func:`pipeline.plan.plan_job` wrote, and a run's
figures beside the plan's projection (the ``vs_plan`` of a run summary). Apart from the planning itself, so the
runner reads plans without importing what runs them."""

from __future__ import annotations

import math

# The figures a run's summary is compared on: (plan projection key, summary "this_run" key).
COMPARED = {
    "videos_per_s": "videos_per_s",
    "decode_cpu_s_per_video": "decode_cpu_s_per_video",
    "caption_s_per_video": "caption_s_per_video",
    "failure_rate": "failure_rate",
}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def well_formed(plan) -> bool:
    """A plan as :func:`plan_job` writes it: an id, and a projection that is None (nothing to run) or holds each
    compared figure as ``{"value": number or None, "range": [low, high]}``."""
    if not isinstance(plan, dict) or not isinstance(plan.get("plan_id"), str):
        return False
    projection = plan.get("projection")
    if projection is None:
        return True
    if not isinstance(projection, dict):
        return False
    for figure in COMPARED:
        f = projection.get(figure)
        if f is None:
            continue
        bounds = f.get("range") if isinstance(f, dict) else None
        if not isinstance(bounds, list) or len(bounds) != 2 or not all(b is None or finite(b) for b in bounds):
            return False
        if f.get("value") is not None and not finite(f["value"]):
            return False
    return True


def compare_with_plan(run: dict, plan: dict) -> dict | None:
    """Per figure of :data:`COMPARED`: the plan's value and range, the run's, their ratio (run / plan) and
    whether the run fell in the range; None when the plan projected nothing. A figure the plan does not hold as
    finite numbers is left out (a plan is advice: a damaged one never fails a run)."""
    projection = plan.get("projection") if isinstance(plan, dict) else None
    if not isinstance(projection, dict) or not projection:
        return None
    actual = dict(run)
    if actual.get("failure_rate") is None and actual.get("videos"):
        actual["failure_rate"] = actual["failed"] / actual["videos"]
    out = {}
    for figure, key in COMPARED.items():
        planned, got = projection.get(figure), actual.get(key)
        if not isinstance(planned, dict) or not finite(planned.get("value")) or not finite(got):
            continue
        value = planned["value"]
        bounds = planned.get("range")
        low, high = bounds if isinstance(bounds, list) and len(bounds) == 2 and all(map(finite, bounds)) \
            else (None, None)
        out[figure] = {"planned": value, "range": [low, high], "actual": got,
                       "ratio": round(got / value, 4) if value else None,
                       "within": low is not None and low <= got <= high}
    return {"plan_id": str(plan.get("plan_id")), "figures": out} if out else None
