"""Training samples/s per worker on CPU with the tiny model: 1 vs 2 Ray Train workers, same data, same run.

    python bench/train_throughput.py [--steps 12] [--videos 8]

Samples/s come from rank 0's per-step metrics (frames decoded by the data pipeline, forward, backward,
optimizer step), averaged over the steps after the first two (warm-up); the total is per worker x workers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from pipeline.cluster import init_ray
from pipeline.generated_videos import write_video
from training.config import TrainConfig
from training.trainer import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i in range(args.videos):
            write_video(os.path.join(tmp, f"v{i}.mp4"), 320, 240, 48, 24, seed=i)
            items.append({"video": f"v{i}.mp4", "QA": [{"q": "What happens?", "a": f"a square slides right {i}"}]})
        with open(os.path.join(tmp, "qa.json"), "w", encoding="utf-8") as f:
            json.dump(items, f)
        init_ray()
        rates = {}
        for workers in (1, 2):
            cfg = TrainConfig.from_dict({
                "model": "tiny", "data": {"uri": os.path.join(tmp, "qa.json")},
                "sampling": {"num_frames": args.num_frames}, "lora": {"r": 8, "alpha": 16},
                "optim": {"batch_size": 2}, "run": {"output": os.path.join(tmp, f"run{workers}"),
                                                     "max_steps": args.steps, "checkpoint_every": args.steps,
                                                     "num_workers": workers, "cpus_per_worker": 0.5}})
            history = run_training(cfg)["history"][2:]
            rates[workers] = sum(h["samples_per_s"] for h in history) / len(history)
    for workers, rate in rates.items():
        print(f"{workers} worker(s): {rate:.2f} samples/s per worker, {rate * workers:.2f} in total "
              f"({rate * workers / rates[1]:.2f}x of 1 worker)")


if __name__ == "__main__":
    main()
