"""Launch a fine-tuning run on Ray Train and export its result as a ``weights_dir`` for the pipeline."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile

from ray.train import RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file

from model.loading import save_weights_dir
from model.weights import LoraPair, lora_half
from pipeline.resources import cluster_nodes, cluster_totals, plan_training_cpus
from pipeline.cluster import init_ray
from pipeline.io.storage import get_fs, is_local, join, local_path
from training.config import TrainConfig
from training.data import build_train_dataset
from training.recipe import METRICS_FILE, TRAINABLE_FILE, NoUsableSamples, train_func

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAIN_DECODE_NUM_CPUS = 0.5  # the one decode actor that feeds the workers
WEIGHTS_DIR = "weights"


def _cause_of_type(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``, its workers' failures (Ray Train collects them per rank) or
    their chains (Ray wraps a worker's error in its own)."""
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop(0)
        if exc is None or id(exc) in seen:
            continue
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        pending += [exc.__cause__, exc.__context__, getattr(exc, "controller_failure", None),
                    *getattr(exc, "worker_failures", {}).values()]
    return None


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    if cfg.run.max_steps:
        return cfg.run.max_steps
    per_step = cfg.optim.batch_size * cfg.run.num_workers * cfg.optim.grad_accum_steps
    return cfg.run.epochs * max(1, math.ceil(num_examples / per_step))


def export_weights_dir(trainable_path: str, cfg: TrainConfig, out_uri: str, extra: dict) -> str:
    """Trainable tensors of a checkpoint -> projector + LoRA halves under the pipeline's names."""
    state = load_file(trainable_path)
    projector = {k: v for k, v in state.items() if k.startswith("multi_modal_projector.")}
    pairs: dict[str, LoraPair] = {}
    for key, tensor in state.items():
        half = lora_half(key)  # PEFT's names: language_model.base_model.model.<module>.lora_A.default.weight
        if half:
            module, which = half
            pair = pairs.setdefault(module, LoraPair(module))
            setattr(pair, which, tensor)
    settings = {"r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
                "target_modules": list(cfg.lora.target_modules), "base_model": cfg.model, **extra}
    with tempfile.TemporaryDirectory() as tmp:
        save_weights_dir(tmp, projector, pairs, settings)
        fs, path = get_fs(out_uri, cfg.storage_options)
        fs.makedirs(path, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), f"{path}/{name}")
    return out_uri


def checkpoint_storage(cfg: TrainConfig) -> RunConfig:
    """Ray Train's run config: checkpoints under ``<output>/checkpoints``, on object storage through the run's
    ``storage_options`` (an fsspec filesystem handed to Ray as a pyarrow one)."""
    uri = join(cfg.run.output, CHECKPOINTS_DIR)
    if is_local(uri):
        return RunConfig(name=cfg.run.name, storage_path=os.path.abspath(local_path(uri)))
    import pyarrow.fs

    fs, path = get_fs(uri, cfg.storage_options)
    return RunConfig(name=cfg.run.name, storage_path=path,
                     storage_filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))


def run_training(cfg: TrainConfig) -> dict:
    """Train (resuming from the run's latest checkpoint when there is one) and export ``<output>/weights``."""
    init_ray()
    cpus, gpus = cluster_totals()
    cpus_per_worker = plan_training_cpus(cpus, gpus, cfg.run.num_workers, cfg.run.use_gpu, cfg.run.cpus_per_worker,
                                         TRAIN_DECODE_NUM_CPUS, nodes=cluster_nodes())
    dataset, stats = build_train_dataset(cfg, decode_num_cpus=TRAIN_DECODE_NUM_CPUS)
    steps = total_steps(cfg, stats.examples)
    logger.info("%d examples (%d caption rows without a caption skipped); %d steps on %d workers",
                stats.examples, stats.skipped_without_caption, steps, cfg.run.num_workers)
    trainer = TorchTrainer(
        train_func,
        # The config itself (pickled), not its redacted dict: workers read the store with the real credentials.
        train_loop_config={"train": cfg, "total_steps": steps},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=checkpoint_storage(cfg),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        cause = _cause_of_type(exc, NoUsableSamples)
        if cause is None:
            raise
        raise NoUsableSamples(cause.args[0] if cause.args else str(cause)) from None
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    weights_uri = join(cfg.run.output, WEIGHTS_DIR)
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, METRICS_FILE), encoding="utf-8") as f:
            history = [json.loads(line) for line in f if line.strip()]
        export_weights_dir(os.path.join(folder, TRAINABLE_FILE), cfg, weights_uri,
                           {"steps": history[-1]["step"] if history else steps})
        fs, path = get_fs(join(cfg.run.output, METRICS_FILE), cfg.storage_options)
        fs.pipe_file(path, "".join(json.dumps(m) + "\n" for m in history).encode())
    return {"weights_dir": weights_uri, "steps": steps, "examples": stats.examples,
            "skipped_without_caption": stats.skipped_without_caption, "history": history,
            "checkpoint": result.checkpoint.path}


__all__ = ["run_training", "export_weights_dir", "total_steps"]
