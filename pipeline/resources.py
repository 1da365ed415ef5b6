"""Resource sizing: one function reads what the cluster has and decides what each pool reserves.

Ray waits forever, without a word, for an actor whose CPUs or GPUs the cluster does not have. So every
setting left unset derives from ``ray.cluster_resources()``, and settings given explicitly are checked
against it before anything starts: a job that cannot be scheduled says what it asked and what the cluster
has, and stops. Plain functions of plain numbers, so the rules are tested without Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Light work beside the actor pools: the stateful MarkRepeats actor plus at least one task at a time for
# list reading and file writing. The actor's share differs from the tasks' on purpose: Ray Data fuses map
# steps with equal remote args, and fused into the single actor the list normalisation (annotation lookups)
# would run serially instead of in parallel tasks.
LIGHT_NUM_CPUS = 0.25
SKIP_NUM_CPUS = 0.2
LIGHT_RESERVE_CPUS = 2 * LIGHT_NUM_CPUS
MIN_SHARE_CPUS = 0.25  # no pool is sized below this


class ResourceError(ValueError):
    """The requested pools do not fit the cluster; the message names what was asked and what there is."""


@dataclass(frozen=True)
class Ask:
    """``count`` actors (or workers) of one kind, each reserving ``num_cpus`` and ``num_gpus``."""

    label: str
    count: int
    num_cpus: float
    num_gpus: float = 0.0


@dataclass(frozen=True)
class PipelinePlan:
    decode_concurrency: int
    decode_num_cpus: float
    caption_concurrency: int
    caption_num_cpus: float
    caption_num_gpus: float
    device: str  # "cuda" or "cpu"

    def asks(self) -> list[Ask]:
        return [Ask("decode actors", self.decode_concurrency, self.decode_num_cpus),
                Ask("caption actors", self.caption_concurrency, self.caption_num_cpus, self.caption_num_gpus)]


Node = tuple[float, float]  # (CPUs, GPUs) of one node


def _unplaced(asks: list[Ask], nodes: list[Node]) -> Ask | None:
    """The first ask one of whose actors finds no node with room, placing the largest actors first onto the
    first node that holds them (first-fit decreasing: what Ray's packing can at best do); None when all fit."""
    free = [list(node) for node in nodes]
    units = sorted((a for a in asks for _ in range(a.count)), key=lambda a: (a.num_gpus, a.num_cpus), reverse=True)
    for ask in units:
        node = next((n for n in free if n[0] + 1e-9 >= ask.num_cpus and n[1] + 1e-9 >= ask.num_gpus), None)
        if node is None:
            return ask
        node[0] -= ask.num_cpus
        node[1] -= ask.num_gpus
    return None


def check_fit(asks: list[Ask], cpus: float, gpus: float, reserve_cpus: float = LIGHT_RESERVE_CPUS,
              hint: str = "", nodes: list[Node] | None = None) -> None:
    """Raises ResourceError when the asks plus the light-work reserve exceed the cluster's CPUs or GPUs, or,
    given the ``nodes``, when an actor needs more than any one node has or the actors do not pack onto them."""
    need_cpus = sum(a.count * a.num_cpus for a in asks) + reserve_cpus
    need_gpus = sum(a.count * a.num_gpus for a in asks)
    if need_cpus <= cpus + 1e-9 and need_gpus <= gpus + 1e-9:
        stuck = _unplaced(asks, nodes) if nodes else None
        if stuck is None:
            return
        shown = ", ".join(f"{c:g} CPUs + {g:g} GPUs" for c, g in sorted(nodes, reverse=True)[:8])
        raise ResourceError(
            f"the job cannot be scheduled: one of the {stuck.label} needs {stuck.num_cpus:g} CPUs and "
            f"{stuck.num_gpus:g} GPUs on one node, and the {len(nodes)} nodes ({shown}) have no room for it "
            "once the larger actors are placed (an actor never spans nodes). " + (hint or "Lower the explicit "
                                                                                   "settings."))
    parts = [f"{a.label} {a.count} x ({a.num_cpus:g} CPU" + (f", {a.num_gpus:g} GPU)" if a.num_gpus else ")")
             for a in asks]
    raise ResourceError(
        "the job cannot be scheduled: it asks for " + " + ".join(parts)
        + f" + {reserve_cpus:g} CPU for list reading and writing = {need_cpus:g} CPUs and {need_gpus:g} GPUs, "
        f"but the cluster has {cpus:g} CPUs and {gpus:g} GPUs. " + (hint or "Lower the explicit settings or "
                                                                       "leave them unset to size from the cluster."))


def plan_pipeline(
    cpus: float,
    gpus: float,
    decode_concurrency: int | None = None,
    decode_num_cpus: float | None = None,
    caption_concurrency: int | None = None,
    caption_num_cpus: float | None = None,
    caption_num_gpus: float | None = None,
    nodes: list[Node] | None = None,
    check: bool = True,
) -> PipelinePlan:
    """Pool sizes and shares for the recaption pipeline on a cluster with ``cpus`` CPUs and ``gpus`` GPUs.

    Unset values: one caption actor per GPU (1 GPU, 1 CPU each), or one CPU caption actor with half of what
    the light work leaves; decode actors take the rest at 1 CPU each (one actor with a fractional share
    when less than a CPU is left).

    ``nodes`` (each node's CPUs and GPUs) adds the per-node check; ``check=False`` (an autoscaling cluster,
    which grows when actors wait) skips the checks.

    Raises:
        ResourceError: the explicit values (or what is left for the unset ones) do not fit.
    """
    spare = cpus - LIGHT_RESERVE_CPUS
    num_gpus = caption_num_gpus if caption_num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > 0:
        device = "cuda"
        caption_n = caption_concurrency or max(1, int(gpus // num_gpus))
        caption_cpus = caption_num_cpus if caption_num_cpus is not None else min(1.0, max(
            MIN_SHARE_CPUS, spare / (2 * caption_n)))
    else:
        device = "cpu"
        caption_n = caption_concurrency or 1
        caption_cpus = caption_num_cpus if caption_num_cpus is not None else max(MIN_SHARE_CPUS, spare / 2 / caption_n)
        if caption_num_cpus is None and nodes:
            caption_cpus = min(caption_cpus, max(MIN_SHARE_CPUS, max(n[0] for n in nodes) - LIGHT_RESERVE_CPUS))
    left = spare - caption_n * caption_cpus
    if decode_concurrency is not None and decode_num_cpus is not None:
        decode_n, decode_cpus = decode_concurrency, decode_num_cpus
    elif decode_num_cpus is not None:
        decode_n, decode_cpus = max(1, int(left // decode_num_cpus)) if decode_num_cpus else 1, decode_num_cpus
    elif decode_concurrency is not None:
        decode_n, decode_cpus = decode_concurrency, max(MIN_SHARE_CPUS, min(1.0, left / decode_concurrency))
    elif left >= 1:
        decode_n, decode_cpus = int(left), 1.0
    else:
        decode_n, decode_cpus = 1, max(MIN_SHARE_CPUS, left)
    plan = PipelinePlan(decode_n, decode_cpus, caption_n, caption_cpus, num_gpus, device)
    if nodes and decode_concurrency is None:  # derived decode actors: as many as pack onto the nodes
        while plan.decode_concurrency > 1 and _unplaced(plan.asks(), nodes):
            plan = dataclasses.replace(plan, decode_concurrency=plan.decode_concurrency - 1)
    if check:
        check_fit(plan.asks(), cpus, gpus, nodes=nodes, hint="Lower resources.decode_concurrency / "
                  "decode_num_cpus / caption_concurrency / caption_num_cpus / caption_num_gpus, or leave them unset "
                  "to size from the cluster (on an autoscaling cluster: resources.autoscaling: true).")
    return plan


def cluster_totals() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))


def cluster_nodes() -> list[Node]:
    """(CPUs, GPUs) of each live node of the connected Ray cluster."""
    import ray

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def plan_training_cpus(cpus: float, gpus: float, num_workers: int, use_gpu: bool,
                       cpus_per_worker: float | None = None, decode_num_cpus: float = 0.5,
                       nodes: list[Node] | None = None) -> float:
    """CPUs per Ray Train worker: what is left after the data stream's decode actor and light tasks, split
    over the workers (at most 1 each), unless given.

    Raises:
        ResourceError: the workers and the decode actor that feeds them do not fit.
    """
    spare = cpus - LIGHT_RESERVE_CPUS - decode_num_cpus
    per_worker = cpus_per_worker if cpus_per_worker is not None else max(MIN_SHARE_CPUS,
                                                                         min(1.0, spare / num_workers))
    check_fit([Ask("training workers", num_workers, per_worker, 1.0 if use_gpu else 0.0),
               Ask("decode actors", 1, decode_num_cpus)], cpus, gpus, nodes=nodes,
              hint="Lower run.num_workers or run.cpus_per_worker, or leave cpus_per_worker unset.")
    return per_worker
