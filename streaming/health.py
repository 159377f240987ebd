"""One small HTTP server for the processor: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process is alive and its loop is not stuck; ``/readyz`` answers 200
when partitions are assigned, the model is loaded and every sink's ``check()`` passes. Both return a
small JSON body saying why (503 when not).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streaming.metrics import REGISTRY

log = logging.getLogger(__name__)

# A probe returns (ok, details); details become the JSON body.
Probe = Callable[[], tuple[bool, dict]]


def _always_ok() -> tuple[bool, dict]:
    return True, {}


class HealthServer:
    """Serves metrics and probes from a daemon thread; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Probe = _always_ok,
        ready: Probe = _always_ok,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _probe_response(health),
            "/readyz": lambda: _probe_response(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = routes.get(self.path.split("?", 1)[0])
                status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet access log
                log.debug("health request: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics and health endpoints listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe_response(probe: Probe) -> tuple[int, str, bytes]:
    try:
        ok, details = probe()
    except Exception as exc:  # noqa: BLE001 - a failing probe is "not ok", never a crashed server
        ok, details = False, {"error": f"{type(exc).__name__}: {exc}"}
    body = json.dumps({"ok": ok, **details}, default=str).encode() + b"\n"
    return (200 if ok else 503), "application/json", body
