"""The stream processor: Kafka -> decode/validate -> micro-batches -> classify -> sinks -> commit.

Only the main thread touches the consumer: it polls, decodes, batches, hands batches to the inference
thread, and commits the batches that the sink thread reports done, in order. Offsets of a batch are
committed only after every sink acknowledged it and its dead letters were confirmed (at-least-once):
:class:`~streaming.pipeline.commits.Committer`. Pausing and resuming the partitions:
:class:`~streaming.pipeline.backpressure.Backpressure`. See docs/processor.md.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from config.clients import make_consumer
from config.kafka_events import KAFKA_EVENTS
from config.settings import Settings
from streaming.observability.metrics import (
    BATCH_RECORDS,
    BATCH_TOKENS,
    CONSUMER_LAG,
    IN_FLIGHT_BATCHES,
    RECORDS_CONSUMED,
)
from streaming.pipeline import heap
from streaming.pipeline.backpressure import Backpressure
from streaming.pipeline.batcher import MicroBatcher
from streaming.pipeline.commits import Committer
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.pipeline.envelope import Batch, Envelope, decode
from streaming.pipeline.offsets import Ownership
from streaming.pipeline.offsets import TopicPartition as TP
from streaming.pipeline.stages import InferenceStage, SinkStage, SinkStopped
from streaming.sinks.base import Sink

if TYPE_CHECKING:
    from models.inference.source import ModelSource

log = logging.getLogger(__name__)

STUCK_AFTER_S = 60.0  # /healthz fails when the loop has not turned for this long
CLOSE_RESERVE_S = 5.0  # of batch.shutdown_timeout_s, kept for closing the consumer and the clients
STAGE_JOIN_S = 10.0
LAG_INTERVAL_S = 2.0


class PipelineError(RuntimeError):
    """A pipeline thread crashed (a bug, not bad input) or a sink failed for good (:class:`SinkStopped`); the
    processor stopped without committing further."""


@dataclass
class ProcessorStats:
    consumed: int = 0
    classified: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    failed_commits: int = 0
    abandoned_batches: int = 0


class StreamProcessor:
    """One consumer-group member; scale out by running more of them with the same ``kafka.group_id``."""

    def __init__(self, settings: Settings, model_source: ModelSource, sinks: Sequence[Sink],
                 dead_letters: DeadLetterWriter) -> None:
        self.settings = settings
        self.model_source = model_source
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        batch = settings.batch
        self.batcher: MicroBatcher[Envelope] = MicroBatcher(batch.max_batch_records, batch.max_batch_tokens,
                                                            batch.max_wait_ms)
        self.ownership = Ownership()
        self.stats = ProcessorStats()
        self._skip_sources = frozenset(settings.skip_sources)
        self._consumer: Consumer | None = None
        self._infer_q: queue.Queue[Batch | None] = queue.Queue(batch.queue_depth)
        self._sink_q: queue.Queue[Batch | None] = queue.Queue(batch.queue_depth)
        self._done_q: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()  # unbounded; C, no Python-level lock
        self.committer = Committer(self.ownership, self._done_q)
        self.backpressure = Backpressure(batch.queue_depth, settings.kafka.max_poll_interval_ms)
        self._ready: deque[Batch] = deque()  # closed batches waiting for room in the inference queue
        self._in_flight = 0
        self._seq = 0
        self._stopping = False
        self._closing = False
        self._crash: BaseException | None = None
        self._abort = threading.Event()
        self._progress = threading.Event()  # set by the stages when they take or finish a batch
        self._at_eof: set[TP] = set()
        self._heartbeat = time.monotonic()
        self._lag_at = 0.0
        self._inference: InferenceStage | None = None
        self._stop_by: float | None = None  # time.monotonic() by which a stop must be complete
        self._sink_stage: SinkStage | None = None
        self._heap_held = False

    # ------------------------------------------------------------------ public

    def run(self, stop: threading.Event | None = None, until_drained: bool = False) -> ProcessorStats:
        """Consume until ``stop`` is set (then finish, commit and close) or, with ``until_drained``, until
        every assigned partition is read to its end and all of it is committed."""
        stop = stop or threading.Event()
        self.model_source.current()  # load the model before joining the group
        self._start_stages()
        KAFKA_EVENTS.forget()  # readiness reflects this processor's clients, not an earlier one's in this process
        self._consumer = make_consumer(self.settings, **{"enable.partition.eof": True,
                                                         "on_commit": self.committer.on_commit})
        self._consumer.subscribe(list(self.settings.kafka.input_topics), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("processor started", extra={"topics": self.settings.kafka.input_topics,
                                             "group": self.settings.kafka.group_id})
        try:
            heap.hold()  # after the model loaded: see streaming/pipeline/heap.py
            self._heap_held = True
            self._loop(stop, until_drained)
            self._finish()
        finally:
            self._close()
        if self._crash is not None:
            crash = self._crash
            what = str(crash) if isinstance(crash, SinkStopped) else f"a pipeline thread crashed: {crash!r}"
            raise PipelineError(what) from crash
        return self._snapshot()

    def abort(self) -> None:
        """Stop at once, abandoning in-flight batches uncommitted (a second SIGTERM)."""
        self._abort.set()

    def health(self) -> tuple[bool, dict]:
        """Liveness: no crashed thread, the loop turned recently, and work that waits has not waited longer than
        ``batch.stalled_after_s`` without a commit."""
        age = time.monotonic() - self._heartbeat
        stalled_s = self.committer.stalled_for()
        ok = self._crash is None and age < STUCK_AFTER_S and stalled_s < self.settings.batch.stalled_after_s
        return ok, {"loop_age_s": round(age, 3), "crashed": repr(self._crash) if self._crash else None,
                    "uncommitted_for_s": round(stalled_s, 3), "stalled_after_s": self.settings.batch.stalled_after_s,
                    "exit_after_stalled_s": self.settings.batch.exit_after_stalled_s}

    def stalled_for(self) -> float:
        """Seconds for which consumed work has waited with no commit, or the loop has not turned (the larger)."""
        return max(self.committer.stalled_for(), time.monotonic() - self._heartbeat)

    def ready(self) -> tuple[bool, dict]:
        """Readiness: partitions assigned, model loaded, every sink reachable, not every Kafka broker down."""
        assigned = sorted(f"{t}[{p}]" for t, p in self.ownership.partitions())
        try:
            info = self.model_source.current().info
            model = f"{info.name}@{info.version}"
        except Exception as exc:  # noqa: BLE001 - not loaded is "not ready"
            model = None
            log.debug("model not ready", extra={"error": str(exc)})
        kafka = KAFKA_EVENTS.status()  # every broker down: the sinks are not checked (a topic check would hang)
        sinks = {} if kafka["all_down"] else {sink.name: bool(sink.check()) for sink in self.sinks}
        ok = bool(assigned) and model is not None and all(sinks.values()) and not kafka["all_down"]
        return ok, {"assigned": assigned, "model": model, "sinks": sinks, "paused": self.backpressure.paused,
                    "kafka": kafka}

    # ------------------------------------------------------------------ main loop

    def _loop(self, stop: threading.Event, until_drained: bool) -> None:
        while not stop.is_set() and not self._abort.is_set():
            self._heartbeat = time.monotonic()
            if self._crash is not None:
                return
            self._commit_completed()
            self._track_waiting()
            self._dispatch_ready()
            self._apply_backpressure()
            if until_drained and self._drained():
                log.info("input drained", extra={"consumed": self.stats.consumed})
                return
            paused = self.backpressure.paused
            if paused or self.backpressure.full(len(self._ready)):
                if paused:
                    self._poll(0)  # keeps the membership and serves callbacks
                self._progress.wait(0.05)  # until a stage takes or finishes a batch
                self._progress.clear()
            else:
                self._poll(self._poll_timeout())
            if self.batcher.due():
                self._close_batch()
            self._update_lag()

    def _poll(self, timeout: float) -> None:
        """Consume and accept messages: every message returned is processed, never skipped (even one fetched
        just before a pause took effect), or a later commit would cover it."""
        consumed: Counter[str] = Counter()
        for message in self._consumer.consume(self.settings.batch.max_batch_records, timeout):
            if self._accept(message):
                consumed[message.topic()] += 1
        for topic, count in consumed.items():  # one metric update per topic and poll (labels() costs ~4 us)
            RECORDS_CONSUMED.labels(topic=topic).inc(count)

    def _poll_timeout(self) -> float:
        """Short while batches wait for the inference queue or a batch is filling, so the loop stays responsive."""
        if self._ready:
            return 0.005
        if len(self.batcher):
            return max(0.005, min(0.05, self.batcher.max_wait_s))
        return 0.05 if self._in_flight else 0.1

    def _accept(self, message: Message) -> bool:
        """Process one consumed message; True if it was taken (a record of an owned partition)."""
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._at_eof.add((message.topic(), message.partition()))
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("consumer error", extra={"error": error.str()})
            return False
        tp = (message.topic(), message.partition())
        epoch = self.ownership.epoch(tp)
        if epoch is None or self._stopping:  # not ours (any more), or shutting down: not processed, not committed
            return False
        self._at_eof.discard(tp)
        self.stats.consumed += 1
        ts_type, ts_ms = message.timestamp()
        env = Envelope(topic=tp[0], partition=tp[1], offset=message.offset(), epoch=epoch, key=message.key(),
                       value=message.value(), timestamp_s=ts_ms / 1000.0 if ts_type and ts_ms > 0 else None)
        self._decode(env)
        closed = self.batcher.add(env, env.tokens)
        if closed:
            self._ready.append(self._new_batch(closed))
        return True

    def _decode(self, env: Envelope) -> None:
        """Validate the message; mark it rejected (dead letter) or skipped, or estimate its tokens."""
        decode(env, self.settings.records, self._skip_sources, self.model_source)
        if env.skipped_source:
            self.stats.skipped += 1

    def _new_batch(self, items: list[Envelope]) -> Batch:
        self._seq += 1
        batch = Batch(self._seq, items)
        BATCH_RECORDS.observe(len(items))
        BATCH_TOKENS.observe(batch.tokens)
        return batch

    def _close_batch(self) -> None:
        if len(self.batcher):
            self._ready.append(self._new_batch(self.batcher.take()))

    def _dispatch_ready(self) -> None:
        while self._ready:
            try:
                self._infer_q.put_nowait(self._ready[0])
            except queue.Full:
                break
            self._ready.popleft()
            self._in_flight += 1
            self.stats.batches += 1
        IN_FLIGHT_BATCHES.set(self._in_flight + len(self._ready))

    def _apply_backpressure(self) -> None:
        self.backpressure.apply(self._consumer, self.ownership.partitions(), waiting=len(self._ready),
                                stopping=self._stopping)

    def _commit_completed(self, final: bool = False) -> None:
        """Collect the done batches and commit their positions: asynchronously while running, synchronously
        (``final``) on shutdown and revocation."""
        self._in_flight -= self.committer.collect()
        if final:
            self.committer.commit_now(self._consumer)
        else:
            self.committer.commit(self._consumer)
        committer = self.committer
        self.stats.commits, self.stats.failed_commits = committer.commits, committer.failed_commits
        self.stats.abandoned_batches = committer.abandoned_batches

    def _track_waiting(self) -> None:
        """``corestream_stalled_since_seconds``: since when consumed work has waited with no commit."""
        self.committer.track_waiting(bool(self._in_flight or self._ready or len(self.batcher)
                                          or self.committer.pending()))

    def _drained(self) -> bool:
        assigned = self.ownership.partitions()
        return (bool(assigned) and assigned <= self._at_eof and not len(self.batcher) and not self._ready
                and not self._in_flight and not self.committer.pending())

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now < self._lag_at:
            return
        self._lag_at = now + LAG_INTERVAL_S
        for topic, partition in self.ownership.partitions():
            tp = TopicPartition(topic, partition)
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                base = self.committer.positions.committed.get((topic, partition))
                if base is None:
                    base = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if high >= 0 and base >= 0:
                CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(max(0, high - base))

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.ownership.assign(tps)
        self._at_eof.difference_update(tps)
        if "cooperative" in self.settings.kafka.partition_assignment_strategy:
            consumer.incremental_assign(partitions)
            self.backpressure.assigned_incrementally()  # the loop pauses them too, outside the callback
        else:
            consumer.assign(partitions)
            self.backpressure.assigned_anew(consumer, partitions)  # librdkafka's pause flag survives a rebalance
        log.info("partitions assigned", extra={"partitions": [f"{t}[{p}]" for t, p in tps]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish in-flight work if quick (committing it while we still own the partitions), else abandon it."""
        revoked = {(p.topic, p.partition) for p in partitions}
        if not self._closing and self._crash is None:
            self._close_batch()
            deadline = time.monotonic() + self.settings.batch.revoke_wait_s
            while (self._ready or self._in_flight) and time.monotonic() < deadline and self._crash is None:
                self._commit_completed()
                self._dispatch_ready()
                time.sleep(0.02)
            self._commit_completed(final=True)  # the answer is known before the partitions go
        self._release(revoked, why="revoked")
        if not self._closing and self._sink_stage is not None:
            self._sink_stage.wait_writes(revoked, self.settings.batch.revoke_wait_s)  # none lands after the new owner's

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release({(p.topic, p.partition) for p in partitions}, why="lost")

    def _release(self, partitions: set[TP], why: str) -> None:
        self.ownership.revoke(partitions)
        self.committer.positions.forget(partitions)
        self._at_eof.difference_update(partitions)
        dropped = self.batcher.discard(lambda env: env.tp in partitions)
        for batch in self._ready:
            batch.items = [env for env in batch.items if env.tp not in partitions]
        self._ready = deque(batch for batch in self._ready if batch.items)
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(topic, str(partition))
        log.info(f"partitions {why}", extra={"partitions": sorted(f"{t}[{p}]" for t, p in partitions),
                                             "in_flight_abandoned": self._in_flight, "dropped_pending": dropped})

    # ------------------------------------------------------------------ start / stop

    def _start_stages(self) -> None:
        common = {"abort": self._abort, "on_crash": self._on_crash, "on_progress": self._progress.set}
        self._inference = InferenceStage(self.model_source, self.ownership, inbox=self._infer_q,
                                         outbox=self._sink_q, **common)
        self._sink_stage = SinkStage.from_settings(self.settings, self.sinks, self.dead_letters, self.ownership,
                                                   on_outage=self.backpressure.on_outage, inbox=self._sink_q,
                                                   outbox=self._done_q, **common)
        self._inference.start()
        self._sink_stage.start()

    def _on_crash(self, exc: BaseException) -> None:
        self._crash = exc

    def _finish(self) -> None:
        """Graceful stop: no new input; finish, write and commit what is in flight within the shutdown timeout, less
        what closing needs (the whole stop takes at most ``batch.shutdown_timeout_s``)."""
        timeout = self.settings.batch.shutdown_timeout_s
        self._stop_by = time.monotonic() + timeout
        if self._abort.is_set() or self._crash is not None:
            return
        self._stopping = True
        self._close_batch()
        self._apply_backpressure()
        deadline = self._stop_by - min(CLOSE_RESERVE_S, timeout / 4)
        while (self._ready or self._in_flight) and self._crash is None and not self._abort.is_set():
            if time.monotonic() > deadline:
                log.warning("shutdown timeout: abandoning in-flight batches uncommitted",
                            extra={"batches": self._in_flight + len(self._ready)})
                break
            self._heartbeat = time.monotonic()
            self._commit_completed()
            self._dispatch_ready()
            # Keeps the membership; paused. A message still returned is not processed and, as every batch
            # in flight precedes it, no commit covers it: it is read again after the restart.
            self._consumer.consume(1, 0.05)
        self._commit_completed(final=True)

    def _close(self) -> None:
        self._closing = True
        self._abort.set()
        stop_by = self._stop_by or time.monotonic() + self.settings.batch.shutdown_timeout_s
        for stage in (self._inference, self._sink_stage):  # a stage blocked in a sink call is left behind
            if stage is not None:
                stage.join(max(0.1, min(STAGE_JOIN_S, stop_by - 1.0 - time.monotonic())))
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer failed", extra={"error": str(exc)})
        IN_FLIGHT_BATCHES.set(0)
        self.backpressure.reset()
        self.committer.track_waiting(False)
        if self._heap_held:
            self._heap_held = False
            heap.release()
        stats = self._snapshot()
        log.info("processor stopped", extra=vars(stats))

    def _snapshot(self) -> ProcessorStats:
        if self._sink_stage is not None:
            self.stats.classified = self._sink_stage.classified
            self.stats.dead_lettered = self._sink_stage.dead_lettered
        return ProcessorStats(**vars(self.stats))
