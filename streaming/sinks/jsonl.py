"""A JSONL file sink: one result per line; each write is one append of whole lines (one ``write`` call on an
unbuffered file opened for appending, so writers sharing the file never interleave), fsynced.

A process killed during a write can leave a partial last line; it was never acknowledged (so its offsets were not
committed and the records are read again), and the sink cuts it off when it opens the file, so that the next
line does not continue it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from models.records.schema import ClassificationResult
from streaming.observability.metrics import SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkUnavailable

log = logging.getLogger(__name__)


class JsonlSink:
    """Appends ``result.json_bytes`` lines to ``path`` (created with its parent directory)."""

    name = "jsonl"
    stores = True  # written before the output topic, which publishes only what the stores took

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_line(self.path)
        self._file = self.path.open("ab", buffering=0)
        self._lock = threading.Lock()

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        lines: list[bytes] = []
        failures: list[SinkFailure] = []
        for result in results:
            try:
                lines.append(result.json_bytes + b"\n")  # serialised once for all sinks; refuses a lone surrogate
            except ValueError as exc:  # UnicodeEncodeError, PydanticSerializationError
                SINK_ERRORS.labels(sink=self.name, kind="serialise").inc()
                failures.append(SinkFailure(result.id, f"cannot serialise the result: {type(exc).__name__}: {exc}"))
        data = memoryview(b"".join(lines))
        with self._lock:  # writes from concurrent sink groups must not interleave
            try:
                while data:
                    data = data[self._file.write(data):]
                os.fsync(self._file.fileno())
            except OSError as exc:
                SINK_ERRORS.labels(sink=self.name, kind="io").inc()
                with contextlib.suppress(OSError):
                    drop_partial_line(self.path)  # the retry starts on a line of its own
                raise SinkUnavailable(f"cannot write {self.path}: {exc}") from exc
        return failures

    def check(self) -> bool:
        return not self._file.closed and os.access(self.path, os.W_OK)

    def reset(self) -> None:
        """Reopen the file (after :class:`SinkFatal`)."""
        self._file.close()
        drop_partial_line(self.path)
        self._file = self.path.open("ab", buffering=0)

    def close(self) -> None:
        self._file.close()


def drop_partial_line(path: Path, chunk: int = 1 << 16) -> int:
    """Cut ``path`` after its last newline (a line cut short by a kill); the number of bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as file:
        size = end = file.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - chunk)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            file.truncate(end)
            log.warning("cut a partial last line (never acknowledged) from the JSONL file",
                        extra={"path": str(path), "bytes": size - end})
        return size - end
