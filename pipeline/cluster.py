"""Joining the Ray cluster: the one place the recaption job, training and the tests start or join Ray."""

from __future__ import annotations

import os

import ray


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set under ``ray job submit``), else start a local Ray.

    An explicit ``address="local"`` keeps a stale ``ray start`` session on this machine from being joined.
    """
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=False)
