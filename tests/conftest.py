"""Shared fixtures: tiny models saved to disk through the real writers, and generated video files."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from model.tiny import TinySpec, save_tiny_pllava  # noqa: E402
from pipeline.generated_videos import write_video  # noqa: E402
from helpers import LORA_RANK, free_port, job_config, start_moto  # noqa: E402,F401 - fixtures below use them

# -- the fast tier ---------------------------------------------------------------------------------------
# `pytest -m "not slow"` is the inner loop; CI runs everything. Slow: a test that starts Ray, a subprocess job
# or a browser, or takes more than a few seconds. A test that reaches Ray through a fixture (``ray_local``, or one
# built on it such as ``two_runs``: pytest's fixture closure lists both) is marked here; subprocess, browser and
# merely long tests carry ``@pytest.mark.slow`` themselves. A test outside the slow tier that starts Ray another
# way fails in its teardown, so it cannot slip into the inner loop unnoticed.
STARTS_RAY = frozenset({"ray_local"})
_RAY_BEFORE = pytest.StashKey[bool]()  # whether Ray was up when the test's setup began


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if STARTS_RAY.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE] = _ray_running()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    started = not item.stash.get(_RAY_BEFORE, True) and _ray_running()
    try:
        return (yield)
    finally:
        if started and item.get_closest_marker("slow") is None:
            pytest.fail(f"{item.nodeid} started Ray but is not marked slow: use the ray_local fixture or "
                        "mark it @pytest.mark.slow (see tests/conftest.py)", pytrace=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A published-layout tiny PLLaVA without LoRA."""
    return save_tiny_pllava(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory) -> str:
    """A published-layout tiny PLLaVA with un-merged LoRA (r=4) under PEFT names, in two shards."""
    return save_tiny_pllava(str(tmp_path_factory.mktemp("tiny_lora")), lora_rank=LORA_RANK, max_shard_size="300KB")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("videos")
    write_video(str(folder / "a.mp4"), 320, 240, 48, 24, seed=1)
    write_video(str(folder / "b.mp4"), 480, 270, 30, 30, seed=2)
    write_video(str(folder / "c.mkv"), 256, 256, 20, 10, seed=3)
    return str(folder)


@pytest.fixture()
def frames_batch() -> np.ndarray:
    """Three different uint8 videos (B=3, T=4, 336x336)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, TinySpec().num_frames, 336, 336, 3), dtype=np.uint8)
    frames[1] = 20
    frames[2] = np.linspace(0, 255, 336, dtype=np.uint8)[None, None, :, None]
    return frames


# -- Ray and S3 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_environment():
    """Where the test S3 endpoint will listen, set the way users configure S3-compatible stores
    (AWS_ENDPOINT_URL and the standard credential variables) before Ray starts, so its workers see them;
    the server itself starts only for tests that ask for ``s3_endpoint``."""
    url = f"http://127.0.0.1:{free_port()}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing-key-id",
                      AWS_SECRET_ACCESS_KEY="testing-secret-value", AWS_DEFAULT_REGION="us-east-1")
    yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_endpoint(s3_environment):
    """A real S3 API over HTTP on loopback (moto's server, as s3fs tests itself) at ``s3_environment``."""
    proc = start_moto(int(s3_environment.rsplit(":", 1)[1]))
    yield s3_environment
    proc.kill()


@pytest.fixture(scope="session")
def ray_local(s3_environment):
    """One local Ray for the in-process pipeline tests (2 CPUs, like CI), started after the S3 variables
    are set so its workers see them (the S3 server starts only where a test uses it)."""
    import ray

    from pipeline.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def two_runs(ray_local, tmp_path_factory):
    """Two small pipeline runs over the same list with different prompts (4 videos in two folders + 1 broken):
    what the query and gallery tests look at."""
    from pipeline.runner import run_job
    from pipeline.generated_videos import write_video

    root = tmp_path_factory.mktemp("query")
    for folder in ("cam1", "cam2"):
        (root / folder).mkdir()
    videos = [write_video(str(root / "cam1" / f"a{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(3)]
    videos.append(write_video(str(root / "cam2" / "b0.mp4"), 160, 120, 12, 12, seed=9))
    (root / "cam2" / "broken.mp4").write_text("no video")
    listing = root / "list.txt"
    listing.write_text("\n".join(videos + [str(root / "cam2" / "broken.mp4")]))
    first = run_job(job_config(str(listing), str(root / "run_a")))
    second = run_job(job_config(str(listing), str(root / "run_b"), prompt="Name the main object."))
    return root, first, second
