"""The sink contract: where classification results are durably written before offsets are committed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from models.records import ClassificationResult


@dataclass(frozen=True)
class SinkFailure:
    """One record a sink permanently refused (after retries); the processor dead-letters it."""

    record_id: str
    reason: str


class SinkUnavailable(Exception):
    """The sink is down after retries: the processor pauses, does not commit, and retries the batch later."""


@runtime_checkable
class Sink(Protocol):
    name: str

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        """Block until ``results`` are durably written; return per-record permanent failures."""
        ...

    def check(self) -> bool:
        """True when the sink is reachable (readiness)."""
        ...

    def close(self) -> None: ...


def backoff_delays(retries: int, base_s: float, max_s: float) -> list[float]:
    """Exponential backoff: ``base, 2*base, 4*base, ...`` capped at ``max_s``, one delay per retry."""
    return [min(base_s * 2**attempt, max_s) for attempt in range(retries)]
