"""Partition ownership and commit positions.

Every assignment of a partition gets a new *epoch*; work carries the epoch it was consumed under, so a
batch that outlived a revoke (or a revoke followed by a re-assign) is recognised as stale and never
committed. Only the main thread changes ownership; worker threads read it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping

TopicPartition = tuple[str, int]


class Ownership:
    """The partitions this consumer owns, each with the epoch of its current assignment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[TopicPartition, int] = {}
        self._counter = itertools.count(1)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._epochs[tp] = next(self._counter)

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._epochs.pop(tp, None)

    def epoch(self, tp: TopicPartition) -> int | None:
        with self._lock:
            return self._epochs.get(tp)

    def owns(self, tp: TopicPartition, epoch: int) -> bool:
        with self._lock:
            return self._epochs.get(tp) == epoch

    def partitions(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._epochs)


class CommitPositions:
    """Offsets waiting to be committed (the next offset to read, per partition) and the last committed ones.

    Batches complete in consumption order, so a later position for a partition always supersedes an
    earlier one; positions of partitions no longer owned (or re-assigned since) are dropped.
    """

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership
        self.pending: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self._pending_epochs: dict[TopicPartition, int] = {}

    def add(self, positions: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Record ``{tp: (next_offset, epoch)}`` from a completed batch."""
        for tp, (offset, epoch) in positions.items():
            if self.ownership.owns(tp, epoch) and offset > self.pending.get(tp, -1):
                self.pending[tp] = offset
                self._pending_epochs[tp] = epoch

    def to_commit(self) -> dict[TopicPartition, int]:
        """Pending positions of partitions still owned under the same epoch."""
        stale = [tp for tp, epoch in self._pending_epochs.items() if not self.ownership.owns(tp, epoch)]
        for tp in stale:
            self.pending.pop(tp, None)
            self._pending_epochs.pop(tp, None)
        return dict(self.pending)

    def mark_committed(self, positions: Mapping[TopicPartition, int]) -> None:
        for tp, offset in positions.items():
            if offset < self.committed.get(tp, -1):
                continue  # a late answer to an older commit
            self.committed[tp] = offset
            if self.pending.get(tp) == offset:
                self.pending.pop(tp)
                self._pending_epochs.pop(tp, None)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self._pending_epochs.pop(tp, None)
            self.committed.pop(tp, None)
