"""Joining the Ray cluster: the one place the recaption job, training and the tests start or join Ray."""

from __future__ import annotations

import logging
import os
import warnings

import ray

from pipeline.iteration_stats import slim_iteration_stats

# Messages a user of this job cannot act on, each silenced at its source logger (nothing else of it):
# - token authentication being on (the safe default) for the local Ray this job starts; its being *off*
#   stays a warning;
# - Ray Data's note that its progress bars are off (the job reports its own progress; -v turns them on).
_NOISE = {
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled for this Ray cluster",
    "ray.data._internal.progress": "Progress bars disabled",
}
# Ray 2.60 deprecates passing max_restarts / max_task_retries / max_concurrency through map_batches'
# ray_remote_args, but has no named parameter for them yet (switch when one appears).
_DEPRECATION = r"`ray_remote_args` is deprecated"


class _Drop(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_ray_noise() -> None:
    """Silence the Ray messages listed above (idempotent)."""
    for name, start in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
            logger.addFilter(_Drop(start))
    warnings.filterwarnings("ignore", message=_DEPRECATION)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set under ``ray job submit``), else start a local Ray.

    An explicit ``address="local"`` keeps a stale ``ray start`` session on this machine from being joined.
    """
    quiet_ray_noise()
    slim_iteration_stats()  # in this process, the one that iterates the job's datasets
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=False)
