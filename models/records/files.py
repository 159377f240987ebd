"""Record files (JSON lines, plain or gzip): open, read numbered lines, count skipped lines by reason code.

Used by the trainer (dataset builders, training data, backfill) and the ``corestream produce`` command, so that
every reader opens, compresses and bounds lines the same way.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

GZIP_MAGIC = b"\x1f\x8b"
# What reading a truncated or corrupt gzip file raises (BadGzipFile is an OSError).
GZIP_ERRORS: tuple[type[Exception], ...] = (EOFError, gzip.BadGzipFile, zlib.error)

PathLike = str | os.PathLike[str]


def is_gzip(path: PathLike) -> bool:
    """Whether the file is gzip-compressed: its name ends with ``.gz`` or it starts with the gzip magic bytes."""
    path = Path(path)
    if path.suffix == ".gz":
        return True
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def open_bytes(path: PathLike) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (see :func:`is_gzip`)."""
    path = Path(path)
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")  # type: ignore[return-value]


def open_text(path: PathLike, mode: str = "r") -> IO[str]:
    """UTF-8 text: read as :func:`open_bytes`; written (``mode="w"``) gzip-compressed when the name ends with
    ``.gz``."""
    path = Path(path)
    if mode == "r":
        return io.TextIOWrapper(open_bytes(path), encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


def bounded_lines(handle: IO[bytes], limit: int) -> Iterator[bytes | int]:
    """Each line without its newline, or for a line longer than ``limit`` bytes its length, read in pieces: one
    huge line costs neither memory nor a crash."""
    while line := handle.readline(limit + 2):
        ended = line.endswith(b"\n")
        if len(line) - ended <= limit:
            yield line[:-1] if ended else line
            continue
        size = len(line)
        while not ended and (line := handle.readline(1 << 20)):
            size += len(line)
            ended = line.endswith(b"\n")
        yield size - ended


def numbered_lines(path: PathLike, max_bytes: int | None = None) -> Iterator[tuple[int, bytes | int]]:
    """``(line number, line)`` for every line of the file, from 1. Without ``max_bytes`` each line is returned as
    read (newline included); with it, as :func:`bounded_lines` returns it (a line too long is its length).
    Reading a truncated gzip file raises one of :data:`GZIP_ERRORS`."""
    with open_bytes(path) as handle:
        lines = handle if max_bytes is None else bounded_lines(handle, max_bytes)
        yield from enumerate(lines, start=1)


def count_lines(path: PathLike) -> int:
    """Lines in the file (a last line without a newline counts), read in chunks."""
    count, last = 0, b"\n"
    with open_bytes(path) as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


class SkipCounts(Counter[str]):
    """Skipped inputs by reason code, with the first few messages (``where: message``) as examples."""

    example_limit = 5

    def __init__(self, *args: object, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.examples: list[str] = []

    def skip(self, reason: str, where: str, message: str) -> None:
        self[reason] += 1
        if len(self.examples) < self.example_limit:
            self.examples.append(f"{where}: {message}")

    def summary(self) -> str:
        """``reason: count, ...`` sorted by reason, or ``none``."""
        return ", ".join(f"{reason}: {count}" for reason, count in sorted(self.items())) or "none"
