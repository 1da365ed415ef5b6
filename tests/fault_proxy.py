"""A proxy on loopback in front of the S3 server that injects store faults: 503 SlowDown, dropped connections
and delays. Which request fails is the subclass's choice (:meth:`FaultProxy.next_fault`): a fixed pattern in
test_storage_faults, a seeded random one in the invariant harness."""

from __future__ import annotations

import http.client
import http.server
import threading
import time

SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
FAULTS = ("slow_down", "dropped", "delayed")


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream_port`` on 127.0.0.1 unless :meth:`next_fault` names a fault;
    ``faults`` counts those injected. ``delay_s``: how long a delayed request waits before it is forwarded."""

    daemon_threads = True

    def __init__(self, upstream_port: int, delay_s: float = 0.3) -> None:
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.lock = threading.Lock()
        self.faults = {fault: 0 for fault in FAULTS}
        super().__init__(("127.0.0.1", 0), _FaultHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "FaultProxy":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def next_fault(self) -> str | None:
        """The fault for the next request (one of ``FAULTS``), or None to forward it; counted by the caller."""
        return None

    def _draw(self) -> str | None:
        with self.lock:
            fault = self.next_fault()
            if fault:
                self.faults[fault] += 1
            return fault


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server._draw()
        if fault == "dropped":
            self.close_connection = True
            self.connection.close()
            return
        if fault == "slow_down":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        if fault == "delayed":
            time.sleep(self.server.delay_s)
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # A HEAD answer has no body but the object's length (s3fs sizes files from it).
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward
