"""Backpressure of the stream processor: pausing and resuming the assigned partitions.

See docs/processor.md, "Backpressure and faults". Only the processor's main thread calls it (it owns the
consumer); the sink stage reports outages through :meth:`Backpressure.on_outage` (a plain flag write).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from streaming.observability.metrics import PAUSED
from streaming.pipeline.offsets import TopicPartition as TP

log = logging.getLogger(__name__)

PAUSE_AFTER_S = 1.0  # a full backlog waiting longer than this pauses the partitions


class Backpressure:
    """Decides when the assigned partitions are paused: while a sink is down, while stopping, or once
    ``queue_depth`` batches have waited for room longer than ``pause_after_s``; resumed once nothing waits.

    Shorter waits are bridged by not polling (well within ``max.poll.interval.ms``): resuming a paused
    partition costs a new fetch from the broker, often far longer than a batch takes."""

    def __init__(self, queue_depth: int, max_poll_interval_ms: int) -> None:
        self.queue_depth = queue_depth
        self.pause_after_s = min(PAUSE_AFTER_S, max_poll_interval_ms / 1000 / 4)
        self.paused = False
        self.outage = False  # a sink is down (set by the sink stage)
        self._full_since: float | None = None
        self._pause_new = False  # newly (incrementally) assigned partitions must be paused like the others

    def full(self, waiting: int) -> bool:
        """``waiting`` closed batches fill the backlog: stop reading until a stage takes one."""
        return waiting >= self.queue_depth

    def on_outage(self, down: bool) -> None:
        self.outage = down

    def apply(self, consumer: Consumer, assigned: Iterable[TP], *, waiting: int, stopping: bool) -> None:
        """Pause or resume every assigned partition as the state requires (``waiting``: closed batches waiting
        for room in the inference queue)."""
        now = time.monotonic()
        if not self.full(waiting):
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        stalled = self._full_since is not None and now - self._full_since >= self.pause_after_s
        want = self.outage or stopping or stalled or (self.paused and waiting > 0)
        if want == self.paused and not self._pause_new:
            return
        self._pause_new = False
        partitions = [TopicPartition(t, p) for t, p in assigned]
        if partitions:
            (consumer.pause if want else consumer.resume)(partitions)
        if want != self.paused:
            log.info("consumption paused" if want else "consumption resumed",
                     extra={"waiting_batches": waiting, "sink_outage": self.outage})
        self._set(want)

    def assigned_incrementally(self) -> None:
        """Partitions were added (cooperative rebalance): pause them too, from the loop, if the others are."""
        self._pause_new = self.paused

    def assigned_anew(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A new (eager) assignment. librdkafka keeps a partition's pause flag across an unassign/assign, so a
        partition paused before the rebalance would stay paused for good: start the new assignment unpaused;
        the loop pauses again if still needed."""
        consumer.resume(partitions)
        self._set(False)

    def reset(self) -> None:
        """The consumer is closed."""
        PAUSED.set(0)

    def _set(self, paused: bool) -> None:
        self.paused = paused
        PAUSED.set(int(paused))
