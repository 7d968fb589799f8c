"""Rank 0's HTTP server: ``/metrics`` (Prometheus text), ``/progress`` (JSON), ``/healthz``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class MetricsServer:
    """A small threaded HTTP server; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(
        self, registry: CollectorRegistry, progress: Callable[[], dict[str, Any]], host: str = "0.0.0.0", port: int = 0
    ) -> None:
        self.registry = registry
        self.progress = progress
        self._scraped = threading.Condition()
        self.scrapes = 0  # /metrics requests answered

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                    with server._scraped:
                        server.scrapes += 1
                        server._scraped.notify_all()
                elif path == "/progress":
                    body = json.dumps(server.progress(), default=str).encode()
                    self._send(200, "application/json", body)
                elif path in ("/healthz", "/"):
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def wait_for_scrape(self, timeout: float) -> bool:
        """Wait until /metrics is fetched once more (Prometheus has the current values); False on timeout."""
        with self._scraped:
            seen = self.scrapes
            return self._scraped.wait_for(lambda: self.scrapes > seen, timeout=timeout)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
