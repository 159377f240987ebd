"""Micro-batching: group items until a record count, a token budget or a waiting time is reached.

Pure bookkeeping (no I/O, no threads). Times are ``time.monotonic()``; ``add`` and ``due`` take an optional
``now`` so that tests can decide what time it is (the processor passes none).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collects items into batches of at most ``max_records`` items and ``max_tokens`` tokens.

    A batch closes when it is full (``add`` returns it) or when its oldest item has waited
    ``max_wait_ms`` (``due`` turns true and the caller ``take``s it). An item that would push the
    batch over the token budget closes the batch before it and starts the next one; a single item
    above the budget becomes a batch of its own.
    """

    def __init__(self, max_records: int, max_tokens: int, max_wait_ms: float) -> None:
        if max_records < 1 or max_tokens < 1 or max_wait_ms < 0:
            raise ValueError("max_records and max_tokens must be >= 1 and max_wait_ms >= 0")
        self.max_records = max_records
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self._items: list[T] = []
        self._item_tokens: list[int] = []
        self._tokens = 0
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def tokens(self) -> int:
        """Tokens of the pending items."""
        return self._tokens

    def add(self, item: T, tokens: int, now: float | None = None) -> list[T] | None:
        """Add one item; return a closed batch when a size limit is reached, else ``None``."""
        tokens = max(0, int(tokens))
        closed: list[T] | None = None
        if self._items and self._tokens + tokens > self.max_tokens:
            closed = self.take()
        if not self._items:
            self._opened_at = time.monotonic() if now is None else now
        self._items.append(item)
        self._item_tokens.append(tokens)
        self._tokens += tokens
        if closed is None and self._full():
            closed = self.take()
        return closed

    def due(self, now: float | None = None) -> bool:
        """True when the pending batch is full or its oldest item has waited ``max_wait_ms``."""
        if not self._items:
            return False
        now = time.monotonic() if now is None else now
        return self._full() or now - (self._opened_at or now) >= self.max_wait_s

    def take(self) -> list[T]:
        """Remove and return the pending items (possibly none)."""
        items = self._items
        self._items, self._item_tokens, self._tokens, self._opened_at = [], [], 0, None
        return items

    def discard(self, predicate: Callable[[T], bool]) -> int:
        """Drop pending items for which ``predicate`` is true (e.g. of revoked partitions); return how many."""
        kept = [(item, n) for item, n in zip(self._items, self._item_tokens, strict=True) if not predicate(item)]
        dropped = len(self._items) - len(kept)
        if dropped:
            self._items = [item for item, _ in kept]
            self._item_tokens = [n for _, n in kept]
            self._tokens = sum(self._item_tokens)
            if not kept:
                self._opened_at = None
        return dropped

    def _full(self) -> bool:
        return len(self._items) >= self.max_records or self._tokens >= self.max_tokens
