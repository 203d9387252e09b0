"""Liveness of the processing loop, and the HTTP endpoint that serves it with the metrics.

Contract
--------
* `Heartbeat(stall_s)`: the processing loop calls `beat(now)` on every iteration (it iterates at least every
  `compute.tick_s`, with or without traffic) and `processed(now)` after each message. `stalled(now)` is True when
  the loop has not beaten for `stall_s` seconds: a live process whose loop is stuck is noticed, not only a
  dead one. Times are wall-clock seconds (float).
* `HealthServer(host, port, heartbeat, metrics)`: a threading HTTP server. `GET /metrics` -> Prometheus text;
  `GET /healthz` -> 200 `{"status": "ok", ...}` or 503 `{"status": "stalled", ...}`; anything else 404.
  `port=0` binds a free port (read `.port`). `close()` stops it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scada_tcn.runtime.prometheus import RuntimeMetrics

__all__ = ["Heartbeat", "HealthServer"]


class Heartbeat:
    """Loop liveness; see the module docstring."""

    def __init__(self, stall_s: float) -> None:
        if not stall_s > 0:
            raise ValueError(f"Heartbeat: stall_s must be > 0, got {stall_s}")
        self.stall_s = float(stall_s)
        self.last_beat: float | None = None
        self.last_message: float | None = None
        self.started = time.time()

    def beat(self, now: float) -> None:
        self.last_beat = now

    def processed(self, now: float) -> None:
        self.last_message = now

    def age(self, now: float) -> float:
        return now - (self.last_beat if self.last_beat is not None else self.started)

    def stalled(self, now: float) -> bool:
        return self.age(now) > self.stall_s

    def report(self, now: float) -> dict[str, object]:
        return {
            "status": "stalled" if self.stalled(now) else "ok",
            "loop_age_s": round(self.age(now), 3),
            "stall_s": self.stall_s,
            "last_message_at": self.last_message,
        }


class HealthServer:
    """/metrics and /healthz over HTTP on a daemon thread; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        heartbeat: Heartbeat,
        metrics: RuntimeMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        hb, m = heartbeat, metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/metrics":
                    m.heartbeat_age.set(hb.age(clock()))
                    self._send(200, m.render(), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    rep = hb.report(clock())
                    self._send(200 if rep["status"] == "ok" else 503, json.dumps(rep).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None  # access logs would drown the structured log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
