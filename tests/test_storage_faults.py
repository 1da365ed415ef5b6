"""Object-store faults on every path (list read, video reads, output writes, the lease): a proxy on loopback in
front of the S3 server answers 503 SlowDown, drops connections and delays requests on a fixed pattern. The job
ends with one row per input and nothing lost, in bounded time; the summary reports the retries that reached our
layer (the FrameSampler's count is checked exactly against a flaky HTTP server in test_storage)."""

import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from fault_proxy import FaultProxy
from helpers import job_config
from pipeline import schema as S
from pipeline.runner import run_job
from pipeline.generated_videos import write_video


class FaultyProxy(FaultProxy):
    """Of every 12 requests two in a row answer 503 SlowDown, two in a row lose their connection and one waits
    0.3 s first. In a row, so that the client's own retries (2 attempts here) run out and ours are needed too.
    Bounded: it stops injecting after ``max_faults``."""

    def __init__(self, upstream_port: int, max_faults: int = 60):
        self.count = 0
        self.max_faults = max_faults
        super().__init__(upstream_port)

    def next_fault(self) -> str | None:
        self.count += 1
        if sum(self.faults.values()) >= self.max_faults:
            return None
        return {3: "slow_down", 4: "slow_down", 7: "dropped", 8: "dropped", 10: "delayed"}.get(self.count % 12)


@pytest.fixture()
def proxy(s3_endpoint):
    server = FaultyProxy(int(s3_endpoint.rsplit(":", 1)[1])).start()
    yield server, server.url
    server.shutdown()


@pytest.mark.parametrize("list_name", ["list.txt", "list.parquet"])
def test_a_job_through_a_faulty_store_loses_nothing_and_counts_its_retries(ray_local, proxy, tmp_path, list_name):
    server, url = proxy
    direct = s3fs.S3FileSystem()
    bucket = "faulty-store-" + list_name.rsplit(".", 1)[1]
    direct.makedirs(bucket, exist_ok=True)
    uris = []
    for i in range(6):
        local = write_video(str(tmp_path / f"v{i}.mp4"), 160, 120, 12, 12, seed=i)
        direct.put(local, f"{bucket}/videos/v{i}.mp4")
        uris.append(f"s3://{bucket}/videos/v{i}.mp4")
    if list_name == "list.txt":
        direct.pipe(f"{bucket}/{list_name}", ("\n".join(uris) + "\n").encode())
    else:  # a Parquet list is read with the same retries as a text list
        buffer = io.BytesIO()
        pq.write_table(pa.table({"uri": uris, "source": ["cam"] * len(uris)}), buffer)
        direct.pipe(f"{bucket}/{list_name}", buffer.getvalue())
    # botocore's own retries off; s3fs still retries some errors itself (5 times), ours come on top.
    options = {"client_kwargs": {"endpoint_url": url}, "config_kwargs": {"retries": {"max_attempts": 1}}}

    started = time.monotonic()
    summary = run_job(job_config(f"s3://{bucket}/{list_name}", f"s3://{bucket}/out", storage_options=options,
                                 retry={"attempts": 6, "backoff_s": 0.05, "max_backoff_s": 0.5}))
    elapsed = time.monotonic() - started
    direct.invalidate_cache()
    rows = [r for f in direct.glob(f"{bucket}/out/parquet/*.parquet") for r in pq.read_table(f, filesystem=direct).to_pylist()]
    assert sorted(r[S.URI] for r in rows) == sorted(uris) and all(r[S.ERROR] is None for r in rows)
    run = summary["this_run"]
    assert summary["complete"] and run["list_rows"] == 6 and run["videos"] == 6
    assert all(server.faults.values()), server.faults  # every kind of fault was met
    print(f"faults injected {server.faults} over {server.count} requests; retries read {run['read_retries']}, "
          f"write {run['write_retries']}; {elapsed:.1f} s")
    assert run["read_retries"] >= 0 and run["write_retries"] >= 0  # counted (what the clients did not absorb)
    assert json.dumps(summary)  # the summary itself was written through the same proxy
