"""A JSONL file sink: one result per line, flushed and fsynced on every write."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from models.records import ClassificationResult
from streaming.metrics import SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkUnavailable


class JsonlSink:
    """Appends ``result.model_dump_json()`` lines to ``path`` (created with its parent directory)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        lines = "".join(result.model_dump_json() + "\n" for result in results)
        try:
            self._file.write(lines)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            SINK_ERRORS.labels(sink=self.name, kind="io").inc()
            raise SinkUnavailable(f"cannot write {self.path}: {exc}") from exc
        return []

    def check(self) -> bool:
        return not self._file.closed and os.access(self.path, os.W_OK)

    def close(self) -> None:
        self._file.close()
