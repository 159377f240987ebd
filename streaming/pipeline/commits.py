"""Commits of the stream processor: done batches -> commit positions -> asynchronous offset commits.

A batch reaches the done queue only once every sink acknowledged it and its dead letters were confirmed, so
what :class:`Committer` commits is durably written (at least once; see docs/processor.md, "Commit rule").
Only the processor's main thread uses it: it owns the consumer, and the consumer serves ``on_commit`` on the
thread that polls.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streaming.observability.metrics import COMMIT_FAILURES, COMMITS, STALLED_SINCE
from streaming.pipeline.envelope import Batch
from streaming.pipeline.offsets import CommitPositions, Ownership
from streaming.pipeline.offsets import TopicPartition as TP

log = logging.getLogger(__name__)

COMMIT_RETRY_S = 1.0
COMMIT_ANSWER_TIMEOUT_S = 60.0  # a commit with no answer for this long is considered lost and sent again


class Committer:
    """Takes the batches the sink stage reports done, in order, and commits their offsets.

    While the processor runs, commits are asynchronous (``commit(asynchronous=True)``) so the loop keeps consuming
    during the round trip; their answer comes through the consumer's ``on_commit`` callback
    (:meth:`on_commit`, pass it to the consumer). At most one commit is in flight; the positions that come
    meanwhile go with the next one. A failed commit is retried after ``COMMIT_RETRY_S`` together with the
    positions that came since. :meth:`commit_now` commits synchronously: on shutdown and on partition revocation,
    where the answer must be known before the partitions go. It also keeps the time since which consumed work has
    waited with no commit (``/healthz`` and ``corestream_stalled_since_seconds``)."""

    def __init__(self, ownership: Ownership, done: queue.Queue[Batch | None] | queue.SimpleQueue[Batch | None]) -> None:
        self.ownership = ownership
        self.positions = CommitPositions(ownership)
        self.commits = 0
        self.failed_commits = 0
        self.abandoned_batches = 0
        self.waiting_since: float | None = None  # wall time since which work waits with no commit
        self._done = done
        self._retry_at = 0.0
        self._in_flight: dict[TP, tuple[int, int | None]] | None = None  # {tp: (offset, epoch)} awaiting its answer
        self._sent_at = 0.0

    def collect(self) -> int:
        """Take every batch reported done; its positions wait for the next commit (an abandoned batch's never
        do). Returns how many batches were done."""
        done = 0
        while True:
            if self._done.empty():  # this thread is the only reader: a queue that is not empty has a batch
                return done
            batch = self._done.get_nowait()
            if batch is None:
                continue
            done += 1
            if batch.abandoned:
                self.abandoned_batches += 1
            else:
                self.positions.add(batch.positions)

    def pending(self) -> bool:
        """Positions of owned partitions wait to be committed (or for the answer to their commit)."""
        return bool(self.positions.to_commit())

    def in_flight(self) -> bool:
        """An asynchronous commit waits for its answer."""
        return self._in_flight is not None

    def commit(self, consumer: Consumer) -> None:
        """Send the waiting positions in an asynchronous commit, unless one is in flight or a failed commit waits
        for its retry time."""
        now = time.monotonic()
        if self._in_flight is not None:
            if now - self._sent_at < COMMIT_ANSWER_TIMEOUT_S:
                return
            self._failed(f"no answer to the offset commit after {COMMIT_ANSWER_TIMEOUT_S:.0f}s")
        offsets = self.positions.to_commit()
        if not offsets or now < self._retry_at:
            return
        sent = self._sent(offsets)
        try:
            consumer.commit(offsets=self._request(sent), asynchronous=True)
        except KafkaException as exc:
            self._failed(str(exc))
            return
        self._in_flight, self._sent_at = sent, now

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback: the answer to the asynchronous commit in flight."""
        sent, self._in_flight = self._in_flight, None
        if sent is None:
            return  # no asynchronous commit of ours waits (a late answer to one given up on)
        failed = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in partitions if tp.error]
        if error is not None or failed:
            self._failed(error.str() if error is not None else "; ".join(failed))
        if error is None:
            self._confirmed({(tp.topic, tp.partition): tp.offset for tp in partitions if not tp.error}, sent)

    def commit_now(self, consumer: Consumer) -> bool:
        """Commit the waiting positions synchronously (shutdown, revocation); True when nothing is left waiting."""
        offsets = self.positions.to_commit()
        if not offsets:
            return True
        sent = self._sent(offsets)
        request = self._request(sent)
        try:
            answer = consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            self._failed(str(exc))
            return False
        self._confirmed({(tp.topic, tp.partition): tp.offset for tp in answer or request if not tp.error}, sent)
        return not self.pending()

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

    # ------------------------------------------------------------------ internals

    def _sent(self, offsets: Mapping[TP, int]) -> dict[TP, tuple[int, int | None]]:
        return {tp: (offset, self.ownership.epoch(tp)) for tp, offset in offsets.items()}

    @staticmethod
    def _request(sent: Mapping[TP, tuple[int, int | None]]) -> list[TopicPartition]:
        return [TopicPartition(t, p, offset) for (t, p), (offset, _) in sent.items()]

    def _confirmed(self, done: Mapping[TP, int], sent: Mapping[TP, tuple[int, int | None]]) -> None:
        """Positions the broker took; those of partitions revoked (or re-assigned) since the commit was sent are
        no longer ours to note."""
        done = {tp: offset for tp, offset in done.items()
                if tp in sent and sent[tp][1] is not None and self.ownership.owns(tp, sent[tp][1])}
        self.positions.mark_committed(done)
        COMMITS.inc()
        self.commits += 1
        if done:
            self.waiting_since = None  # progress: a stall is measured from here again

    def _failed(self, error: str) -> None:
        self.failed_commits += 1
        COMMIT_FAILURES.inc()
        self._retry_at = time.monotonic() + COMMIT_RETRY_S
        log.warning("offset commit failed; will retry with the positions that came since", extra={"error": error})
