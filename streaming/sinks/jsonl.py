"""A JSONL file sink: one result per line, flushed and fsynced on every write."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from models.records import ClassificationResult
from streaming.observability.metrics import SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkUnavailable


class JsonlSink:
    """Appends ``result.json_bytes`` lines to ``path`` (created with its parent directory)."""

    name = "jsonl"
    stores = True  # written before the output topic, which publishes only what the stores took

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._lock = threading.Lock()

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        lines: list[bytes] = []
        failures: list[SinkFailure] = []
        for result in results:
            try:
                lines.append(result.json_bytes)  # UTF-8 already: nothing is refused half-way through a write
            except ValueError as exc:  # UnicodeEncodeError, PydanticSerializationError
                SINK_ERRORS.labels(sink=self.name, kind="serialise").inc()
                failures.append(SinkFailure(result.id, f"cannot serialise the result: {type(exc).__name__}: {exc}"))
        try:
            with self._lock:  # writes from concurrent sink groups must not interleave
                self._file.write(b"".join(line + b"\n" for line in lines))
                self._file.flush()
                os.fsync(self._file.fileno())
        except OSError as exc:
            SINK_ERRORS.labels(sink=self.name, kind="io").inc()
            raise SinkUnavailable(f"cannot write {self.path}: {exc}") from exc
        return failures

    def check(self) -> bool:
        return not self._file.closed and os.access(self.path, os.W_OK)

    def reset(self) -> None:
        """Reopen the file (after :class:`SinkFatal`)."""
        self._file.close()
        self._file = self.path.open("ab")

    def close(self) -> None:
        self._file.close()
