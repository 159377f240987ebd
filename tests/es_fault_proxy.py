"""A small threaded HTTP proxy in front of an Elasticsearch URL that injects faults on demand.

Modes: pass-through (default), :meth:`EsFaultProxy.fail_next` (the next N matching requests get an error
status), :meth:`~EsFaultProxy.fail_all` (every request gets an error status), :meth:`~EsFaultProxy.refuse`
(stop listening and drop open connections: clients see "connection refused"), :meth:`~EsFaultProxy.heal`;
:meth:`~EsFaultProxy.miscount_bulk` (the next N bulk answers list one item fewer or more than were sent).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, add=False)
        super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy = self.server.proxy
        proxy.last_headers = {key.lower(): value for key, value in self.headers.items()}
        fault = proxy._take_fault(self.command, self.path)
        if fault is not None:
            payload = json.dumps({"error": {"type": "injected_fault", "reason": f"fault proxy returned {fault}"},
                                  "status": fault}).encode()
            proxy._record(self.command, self.path, fault)
            self.send_response(fault)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = proxy._mangle(self.path, response.read())
        except OSError as exc:  # upstream down: answer like a gateway would
            self.send_error(502, f"upstream unreachable: {exc}")
            return
        finally:
            upstream.close()
        proxy._record(self.command, self.path, response.status)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, proxy: EsFaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", port), _Handler)


class EsFaultProxy:
    """``with EsFaultProxy(es_url) as proxy: Elasticsearch(proxy.url) ...``"""

    def __init__(self, upstream_url: str, port: int = 0) -> None:
        parts = urlsplit(upstream_url)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 9200
        self.port = port
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answered request
        self.last_headers: dict[str, str] = {}  # headers of the latest request, names in lower case
        self._lock = threading.Lock()
        self._fail_next = 0
        self._fail_next_status = 429
        self._fail_next_match = ""
        self._fail_all_status: int | None = None
        self._miscount = 0
        self._miscount_by = -1
        self._connections: set[socket.socket] = set()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- modes

    def fail_next(self, n: int, status: int = 429, match: str = "_bulk") -> None:
        """Answer the next ``n`` requests whose path contains ``match`` with ``status``."""
        with self._lock:
            self._fail_next, self._fail_next_status, self._fail_next_match = n, status, match

    def fail_all(self, status: int = 503) -> None:
        """Answer every request with ``status`` until :meth:`heal`."""
        with self._lock:
            self._fail_all_status = status

    def refuse(self) -> None:
        """Stop listening and close open connections, so clients get 'connection refused'."""
        self._stop_server()

    def heal(self) -> None:
        """Back to pass-through (listening again on the same port if refused)."""
        with self._lock:
            self._fail_next, self._fail_all_status, self._miscount = 0, None, 0
        if self._server is None:
            self._start_server()

    def miscount_bulk(self, n: int, by: int = -1) -> None:
        """The next ``n`` bulk answers (passed through from upstream) lose their last item (``by=-1``) or list
        it twice (``by=1``)."""
        with self._lock:
            self._miscount, self._miscount_by = n, by

    def count(self, match: str = "_bulk", status: int | None = None) -> int:
        """How many answered requests had ``match`` in their path (and ``status``, if given)."""
        with self._lock:
            return sum(1 for _, path, code in self.requests if match in path and status in (None, code))

    # ----------------------------------------------------------------- plumbing

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            if self._fail_all_status is not None:
                return self._fail_all_status
            if self._fail_next > 0 and self._fail_next_match in path:
                self._fail_next -= 1
                return self._fail_next_status
        return None

    def _mangle(self, path: str, data: bytes) -> bytes:
        with self._lock:
            if "_bulk" not in path or self._miscount <= 0:
                return data
            self._miscount -= 1
            by = self._miscount_by
        answer = json.loads(data)
        items = answer.get("items", [])
        answer["items"] = items[:-1] if by < 0 else items + items[-1:] * by
        return json.dumps(answer).encode()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _start_server(self) -> None:
        self._server = _ProxyServer(self.port, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="es-fault-proxy", daemon=True)
        self._thread.start()

    def _stop_server(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server = None

    def start(self) -> EsFaultProxy:
        self._start_server()
        return self

    def stop(self) -> None:
        self._stop_server()

    def __enter__(self) -> EsFaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
