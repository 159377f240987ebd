"""Commits of the stream processor: done batches -> commit positions -> a synchronous offset commit.

A batch reaches the done queue only once every sink acknowledged it and its dead letters were confirmed, so
what :class:`Committer` commits is durably written (at least once; see docs/processor.md, "Commit rule").
Only the processor's main thread uses it: it owns the consumer.
"""

from __future__ import annotations

import logging
import queue
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streaming.observability.metrics import COMMITS, STALLED_SINCE
from streaming.pipeline.envelope import Batch
from streaming.pipeline.offsets import CommitPositions, Ownership

log = logging.getLogger(__name__)

COMMIT_RETRY_S = 1.0


class Committer:
    """Takes the batches the sink stage reports done, in order, and commits their offsets synchronously.

    A failed commit is retried every ``COMMIT_RETRY_S`` together with the positions that came since. It also
    keeps the time since which consumed work has waited with no commit (``/healthz`` and
    ``corestream_stalled_since_seconds``)."""

    def __init__(self, ownership: Ownership, done: queue.Queue[Batch | None]) -> None:
        self.positions = CommitPositions(ownership)
        self.commits = 0
        self.abandoned_batches = 0
        self.waiting_since: float | None = None  # wall time since which work waits with no commit
        self._done = done
        self._retry_at = 0.0

    def collect(self) -> int:
        """Take every batch reported done; its positions wait for the next commit (an abandoned batch's never
        do). Returns how many batches were done."""
        done = 0
        while True:
            try:
                batch = self._done.get_nowait()
            except queue.Empty:
                return done
            if batch is None:
                continue
            done += 1
            if batch.abandoned:
                self.abandoned_batches += 1
            else:
                self.positions.add(batch.positions)

    def pending(self) -> bool:
        """Positions of owned partitions wait to be committed."""
        return bool(self.positions.to_commit())

    def commit(self, consumer: Consumer) -> None:
        """Commit the waiting positions synchronously (unless a failed commit waits for its retry time)."""
        offsets = self.positions.to_commit()
        if not offsets or time.monotonic() < self._retry_at:
            return
        request = [TopicPartition(t, p, offset) for (t, p), offset in offsets.items()]
        try:
            answer = consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            self._retry_at = time.monotonic() + COMMIT_RETRY_S
            log.warning("offset commit failed; will retry", extra={"error": str(exc)})
            return
        done = {(tp.topic, tp.partition): tp.offset for tp in answer or request if not tp.error}
        self.positions.mark_committed(done)
        COMMITS.inc()
        self.commits += 1
        if done:
            self.waiting_since = None  # progress: a stall is measured from here again

    def track_waiting(self, work_waits: bool) -> None:
        """Note whether consumed work waits (in a batch, in flight or uncommitted) for the stall clock."""
        if not work_waits:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = time.time()
        STALLED_SINCE.set(self.waiting_since or 0)

    def stalled_for(self) -> float:
        """Seconds since which consumed work has waited with no commit (0 when nothing waits)."""
        since = self.waiting_since
        return time.time() - since if since is not None else 0.0
