"""One small HTTP server for the processor: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process is alive and its loop is not stuck; ``/readyz`` answers 200
when partitions are assigned, the model is loaded and every sink's ``check()`` passes. Both return a
small JSON body saying why (503 when not). A probe that does not answer within ``probe_timeout_s`` is
"not ok" (its check goes on in one background thread, never one per request); an idle connection is
closed after ``idle_timeout_s`` and at most ``max_connections`` are served at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streaming.observability.metrics import REGISTRY

log = logging.getLogger(__name__)

# A probe returns (ok, details); details become the JSON body.
Probe = Callable[[], tuple[bool, dict]]

MAX_CONNECTIONS = 32


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
        probe_timeout_s: float = 2.0,
        idle_timeout_s: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        health_probe, ready_probe = TimedProbe(health, probe_timeout_s), TimedProbe(ready, probe_timeout_s)
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _probe_response(health_probe),
            "/readyz": lambda: _probe_response(ready_probe),
        }

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout_s  # a connection that sends nothing is closed, its thread freed

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

        self._server = _BoundedServer((host, port), Handler, max_connections)
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


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; more are closed at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        if not self._slots.acquire(blocking=False):
            log.warning("health server: too many open connections; closing a new one")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class TimedProbe:
    """Runs ``probe`` in a background thread and waits at most ``timeout_s`` for it; a slow probe is "not ok".

    While one check is still running, later calls wait on that same check instead of starting another."""

    def __init__(self, probe: Probe, timeout_s: float) -> None:
        self.probe, self.timeout_s = probe, timeout_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._box: dict = {}

    def __call__(self) -> tuple[bool, dict]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._box = box = {}
                self._thread = threading.Thread(target=self._run, args=(box,), name="health-probe", daemon=True)
                self._thread.start()
            thread, box = self._thread, self._box
        thread.join(self.timeout_s)
        if thread.is_alive():
            return False, {"error": f"the check did not answer within {self.timeout_s}s"}
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _run(self, box: dict) -> None:
        try:
            box["result"] = self.probe()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc


def _probe_response(probe: Probe) -> tuple[int, str, bytes]:
    try:
        ok, details = probe()
    except Exception as exc:  # noqa: BLE001 - a failing probe is "not ok", never a crashed server
        ok, details = False, {"error": f"{type(exc).__name__}: {exc}"}
    body = json.dumps({"ok": ok, **details}, default=str).encode() + b"\n"
    return (200 if ok else 503), "application/json", body
