"""Iterating a dataset in the driver sends Ray Data's iteration metrics without a record per block: what the
stats actor is sent stays small however many blocks the execution made (it grew by about 480 bytes a block,
and above 100 KB the driver writes it into the object store every 5 s), and the metrics still arrive."""

import pytest
import ray
from ray import cloudpickle
from ray.data._internal import stats as ray_data_stats

from pipeline.cluster import init_ray
from pipeline.iteration_stats import slim_iteration_stats, without_block_stats

BLOCKS = 300


class SentStats:
    """The stats actor, with what its ``update_iteration_metrics`` is sent recorded (the call still reaches the
    real actor): the pickled size and the counters of each stats object sent."""

    def __init__(self, actor) -> None:
        self.actor, self.sizes, self.rows, self.forward = actor, [], [], True

    def __getattr__(self, name):
        return getattr(self.actor, name)

    @property
    def update_iteration_metrics(self):
        outer = self

        class Method:
            def remote(self, stats, *args, **kwargs):
                outer.sizes.append(len(cloudpickle.dumps(stats)))
                outer.rows.append(stats.iter_rows_total)
                if outer.forward:
                    return outer.actor.update_iteration_metrics.remote(stats, *args, **kwargs)

        return Method()


@pytest.fixture()
def sent(ray_local, monkeypatch):
    init_ray()  # installs the slim update in this process, as every job's driver does
    actor = ray_data_stats.get_or_create_stats_actor()
    recorder = SentStats(actor)
    monkeypatch.setattr(ray_data_stats, "get_or_create_stats_actor", lambda: recorder)
    return recorder


def iterate_many_blocks() -> int:
    ds = ray.data.range(BLOCKS * 8, override_num_blocks=BLOCKS).map_batches(lambda b: b, batch_size=8)
    return sum(1 for _ in ds.iter_rows())


def test_the_metrics_sent_stay_small_however_many_blocks_ran(sent):
    assert iterate_many_blocks() == BLOCKS * 8
    assert sent.sizes, "the iteration sent no metrics at all"
    assert max(sent.sizes) < 30_000, sent.sizes
    assert sent.rows[-1] == BLOCKS * 8  # the counters the actor reads are there


def test_without_the_slim_update_the_same_iteration_sends_every_blocks_record(sent, monkeypatch):
    installed = ray_data_stats._StatsManager.update_iteration_metrics
    monkeypatch.setattr(ray_data_stats._StatsManager, "update_iteration_metrics",
                        staticmethod(installed.__wrapped__))
    assert iterate_many_blocks() == BLOCKS * 8
    assert max(sent.sizes) > 100_000  # over Ray's inline limit: the driver would write it into the object store


def test_the_slim_copy_keeps_the_iteration_timers_and_leaves_the_stats_whole():
    parent = ray_data_stats.DatasetStats(metadata={"Read": ["a block's record"] * 3}, parent=None)
    stats = ray_data_stats.DatasetStats(metadata={"MapBatches": ["a block's record"] * 8}, parent=parent)
    stats.iter_rows_total = 64
    slim = without_block_stats(stats)
    assert slim.metadata == {} and slim.parents == []
    assert slim.iter_rows_total == 64 and slim.iter_total_s is stats.iter_total_s
    assert len(stats.metadata["MapBatches"]) == 8 and stats.parents == [parent]  # untouched
    assert slim_iteration_stats() and slim_iteration_stats()  # idempotent: installed once
    installed = ray_data_stats._StatsManager.update_iteration_metrics
    assert not hasattr(installed.__wrapped__, "__wrapped__")  # never wrapped twice


class OtherShape:
    """A stats object whose fields cannot be replaced (what a future Ray might send)."""

    __slots__ = ("iter_rows_total",)

    def __init__(self) -> None:
        self.iter_rows_total = 5


def test_a_stats_object_of_another_shape_is_sent_as_ray_data_sends_it(sent):
    sent.forward = False  # the real actor would not know this object
    ray_data_stats._StatsManager.update_iteration_metrics(OtherShape(), "dataset", None)
    assert sent.rows == [5]
