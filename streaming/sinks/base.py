"""The sink contract: where classification results are durably written before offsets are committed.

Failures come in three kinds (see docs/processor.md, "Failure rules"):

* one record cannot be written (it cannot be serialised, the sink refuses that item, it is too large):
  ``write`` returns a :class:`SinkFailure` for it and writes the rest;
* the sink is down for now (connection, timeout, 429/5xx): ``write`` raises :class:`SinkUnavailable`,
  saying which results did get through, and the processor retries the others later;
* the sink can never work as it is (a fatal producer error, a whole-request 4xx, bad configuration):
  ``write`` raises :class:`SinkFatal`; the processor recreates the client once (``reset``) and stops if that
  does not help.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from models.records.schema import ClassificationResult

MAX_ID_BYTES = 512  # Elasticsearch's limit for a document _id; a longer id is refused as one record


@dataclass(frozen=True)
class SinkFailure:
    """One record a sink permanently refused (after retries); the processor dead-letters it."""

    record_id: str
    reason: str


class SinkUnavailable(Exception):
    """The sink is down after retries: the processor pauses, does not commit, and retries the batch later.

    ``written``: ids that did get through (not sent again); ``failures``: records already refused for good.
    """

    def __init__(self, message: str, *, written: Collection[str] = (),
                 failures: Sequence[SinkFailure] = ()) -> None:
        super().__init__(message)
        self.written = frozenset(written)
        self.failures = list(failures)


class SinkFatal(Exception):
    """The sink cannot work as it is (fatal client error, whole-request 4xx, bad configuration): retrying the
    same client is pointless. The processor calls ``reset()`` once and stops if the sink still fails."""


@runtime_checkable
class Sink(Protocol):
    name: str

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        """Block until ``results`` are durably written; return per-record permanent failures."""
        ...

    def check(self) -> bool:
        """True when the sink is reachable (readiness); answers within the sink's probe timeout."""
        ...

    def close(self) -> None: ...


def encoded_id(result: ClassificationResult) -> bytes:
    """The record id as UTF-8; ``ValueError`` when it cannot be a key or document id (lone surrogate, too long)."""
    raw = result.id.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    if len(raw) > MAX_ID_BYTES:
        raise ValueError(f"id is {len(raw)} bytes; at most {MAX_ID_BYTES} can be written")
    return raw


def result_bytes(result: ClassificationResult) -> int:
    """A cheap estimate of a result's size in a sink request (for sink batching limits)."""
    return 300 + 2 * len(result.id) + 48 * len(result.categories)


def backoff_delays(retries: int, base_s: float, max_s: float) -> list[float]:
    """Exponential backoff: ``base, 2*base, 4*base, ...`` capped at ``max_s``, one delay per retry."""
    return [min(base_s * 2**attempt, max_s) for attempt in range(retries)]
