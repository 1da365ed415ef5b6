"""Soak the recaption output with the randomized invariant harness (tests/invariant_harness.py).

    python bench/soak.py [--seed S] [--steps N] [--worlds W] [--faults] [--keep DIR]

Runs ``--worlds`` sequences (seeds S, S+1, ...) of ``--steps`` random operations each (runs over hostile lists,
kills, concurrent and paused writers, video mutations; with ``--faults`` every other world keeps its output on
a loopback S3 behind a fault-injecting proxy), checking the invariants after every step. A violation prints the
seed and the steps that led to it (rerun with that ``--seed`` and ``--worlds 1`` to replay) and exits 1.
Without ``--seed`` a random one is drawn and printed first.

Everything runs on this machine: one local Ray for the in-process jobs, the job script in subprocesses for
kills and races, moto's S3 server on 127.0.0.1 (also the target of the lists' planted s3:// URIs).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def start_s3() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on loopback, set as the endpoint for every S3 client here and in Ray's workers."""
    from helpers import free_port, start_moto

    port = free_port()
    proc = start_moto(port)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="soak-key-id",
                      AWS_SECRET_ACCESS_KEY="soak-secret", AWS_DEFAULT_REGION="us-east-1")
    return proc, os.environ["AWS_ENDPOINT_URL"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="first seed (default: drawn at random and printed)")
    parser.add_argument("--steps", type=int, default=20, help="operations per world before its final sweep")
    parser.add_argument("--worlds", type=int, default=1, help="sequences to run, seeds seed, seed+1, ...")
    parser.add_argument("--faults", action="store_true", help="odd worlds keep their output on a faulty S3")
    parser.add_argument("--keep", help="folder to keep the worlds in (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"soak: seed {seed}, {args.worlds} world(s) of {args.steps} steps", flush=True)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    s3, endpoint = start_s3()
    from invariant_harness import InvariantViolation, World
    from pipeline.cluster import init_ray

    init_ray(num_cpus=os.cpu_count())
    base = Path(args.keep or tempfile.mkdtemp(prefix="soak-"))
    started, steps = time.time(), 0
    try:
        for k in range(args.worlds):
            world_seed = seed + k
            faulty = args.faults and k % 2 == 1
            world = World(base / f"world-{world_seed}", world_seed,
                          s3={"endpoint": endpoint} if faulty else None, faults=faulty)
            t0 = time.time()
            try:
                world.run(args.steps)
            except InvariantViolation as exc:
                print(f"\nFAILED in world {world_seed} ({steps} operations before it):\n{exc}", flush=True)
                print(f"replay: python bench/soak.py --seed {world_seed} --steps {args.steps} --worlds 1"
                      + (" --faults" if faulty else ""), flush=True)
                return 1
            steps += sum(not step.startswith(" ") for step in world.steps)  # operations, not their outcomes
            print(f"world {world_seed}{' (faulty S3)' if faulty else ''}: {len(world.steps)} steps kept every "
                  f"invariant in {time.time() - t0:.0f} s"
                  + (f"; faults injected {world.proxy.faults}" if world.proxy else ""), flush=True)
            for i, step in enumerate(world.steps):
                print(f"    {i + 1}. {step}")
    finally:
        s3.kill()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    print(f"soak: {steps} steps over {args.worlds} world(s) from seed {seed}: every invariant held "
          f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
