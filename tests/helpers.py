"""Helpers the tests share (fixtures are in ``conftest.py``): paths, a small job config, a slow job command."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
LORA_RANK = 4


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int):
    """moto's S3 server on 127.0.0.1:``port`` (a real S3 API over HTTP, as s3fs tests itself), once it answers.

    Raises:
        RuntimeError: it did not start within 10 s.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def chat_reply(content: str, model: str = "m") -> dict:
    """An OpenAI chat-completions answer whose message is ``content``."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def serve_posts(respond):
    """An HTTP server on loopback (a daemon thread) answering each POST with ``respond(request, body bytes) ->
    (status, JSON-able value or bytes)`` (``request.path``, ``request.headers``); ``server.url`` is its address.
    Stop it with ``server.shutdown()``."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            status, answer = respond(self, self.rfile.read(int(self.headers["Content-Length"])))
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def job_config(input_uri: str, output_uri: str, **sections):
    """A small, fast job: tiny model, 4 frames, short captions, tiny batches and files."""
    from pipeline.config import JobConfig

    raw = {
        "source": {"input": input_uri},
        "output": {"output": output_uri, "formats": ["parquet", "webdataset"]},
        "model": {"model": "tiny"},
        "sampling": {"num_frames": 4},
        "generation": {"max_new_tokens": 8},
        "resources": {"batch_size": 2, "rows_per_file": 3, "decode_concurrency": 1, "decode_num_cpus": 0.5,
                      "caption_num_cpus": 0.5},
    }
    return JobConfig.from_dict(raw, sections)


def slow_job_command(folder, num_videos: int = 6, tokens: int = 400) -> list[str]:
    """``jobs/recaption.py`` over ``num_videos`` generated clips, one video per batch and per file, with forced
    long captions: a job slow enough to be interfered with (killed, raced) while it runs."""
    import sys

    import yaml

    from pipeline.generated_videos import write_video

    videos = [write_video(str(folder / f"v{i}.mp4"), 160, 120, 12, 12, seed=i) for i in range(num_videos)]
    (folder / "list.txt").write_text("\n".join(videos) + "\n")
    (folder / "slow.yaml").write_text(yaml.safe_dump({
        "generation": {"max_new_tokens": tokens, "min_new_tokens": tokens},
        "resources": {"batch_size": 1, "rows_per_file": 1, "decode_concurrency": 1, "decode_num_cpus": 0.5,
                      "caption_num_cpus": 0.5}}))
    return [sys.executable, "jobs/recaption.py", "--input", str(folder / "list.txt"), "--output",
            str(folder / "out"), "--model", "tiny", "--num-frames", "4", "--config", str(folder / "slow.yaml")]
