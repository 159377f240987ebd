"""The two worker stages of the processor pipeline and the work items that flow through it.

``main thread (poll, decode, batch) -> [infer queue] -> InferenceStage -> [sink queue] -> SinkStage
-> [done queue] -> main thread (commit)``. Each stage is one thread, so batches stay in consumption
order end to end; the queues are bounded, so a slow stage backs the pipeline up to the consumer, which
then pauses its partitions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from config.settings import RecordSettings
from models.records import ClassificationResult, Record, RecordError
from streaming.dead_letter import DeadLetterWriter
from streaming.intake import estimate_tokens, parse_input, skipped_source
from streaming.metrics import (
    END_TO_END_SECONDS,
    INFERENCE_SECONDS,
    PREDICTIONS_CATEGORY,
    PREDICTIONS_CORENESS,
    RECORDS_CLASSIFIED,
    RECORDS_DEAD_LETTERED,
    RECORDS_SKIPPED,
)
from streaming.model_source import ModelSource
from streaming.offsets import Ownership, TopicPartition
from streaming.sinks.base import Sink, backoff_delays

log = logging.getLogger(__name__)

REASON_SINK_FAILED = "sink_failed"
REASON_INFERENCE_FAILED = "inference_failed"


@dataclass(slots=True)
class Envelope:
    """One consumed message and what became of it."""

    topic: str
    partition: int
    offset: int
    epoch: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float | None  # the message timestamp (producer or broker time), for end-to-end latency
    tokens: int = 0  # the model's token estimate (0 for records that are not classified)
    record: Record | None = None
    rejection: RecordError | None = None  # -> dead letter
    skipped_source: str | None = None  # passed through unclassified
    result: ClassificationResult | None = None

    @property
    def tp(self) -> TopicPartition:
        return self.topic, self.partition

    @property
    def to_classify(self) -> bool:
        return self.record is not None and self.rejection is None and self.skipped_source is None


def decode(env: Envelope, records: RecordSettings, skip_sources: Collection[str], model_source: ModelSource) -> None:
    """Validate ``env.value`` (:mod:`streaming.intake`): set ``record`` and its token estimate, or a ``rejection``
    (-> dead letter), or ``skipped_source`` for records this model must not run on (counted in
    ``RECORDS_SKIPPED``)."""
    try:
        env.record = parse_input(env.value or b"", records)
    except RecordError as exc:
        env.rejection = exc
        return
    env.skipped_source = skipped_source(env.record, skip_sources, model_source)
    if env.skipped_source is not None:
        RECORDS_SKIPPED.labels(source=env.skipped_source).inc()
        return
    env.tokens = estimate_tokens(env.record, model_source)


@dataclass
class Batch:
    """A micro-batch; ``positions`` is what committing it means: ``{tp: (next_offset, epoch)}``."""

    seq: int
    items: list[Envelope]
    tokens: int = field(init=False)
    positions: dict[TopicPartition, tuple[int, int]] = field(init=False)
    abandoned: bool = False

    def __post_init__(self) -> None:
        self.tokens = sum(env.tokens for env in self.items)
        self.positions = {}
        for env in self.items:
            self.positions[env.tp] = (max(env.offset + 1, self.positions.get(env.tp, (0, 0))[0]), env.epoch)


class StageStopped(Exception):
    """The pipeline is aborting: a blocked put or retry gives up."""


class Stage(threading.Thread):
    """A pipeline thread: takes items from ``inbox`` until ``None``, hands results to ``outbox``."""

    def __init__(self, name: str, inbox: queue.Queue, outbox: queue.Queue, abort: threading.Event,
                 on_crash: Callable[[BaseException], None], on_progress: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox, self.outbox, self.abort = inbox, outbox, abort
        self.on_crash, self.on_progress = on_crash, on_progress

    def run(self) -> None:
        try:
            while (batch := self._get()) is not None:
                self.on_progress()  # room in the inbox
                self.handle(batch)
                self.put(self.outbox, batch)
                self.on_progress()
            self.put(self.outbox, None)
        except StageStopped:
            log.info("pipeline stage stopped before finishing", extra={"stage": self.name})
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which stops the processor
            log.exception("pipeline stage crashed", extra={"stage": self.name})
            self.on_crash(exc)

    def handle(self, batch: Batch) -> None:
        raise NotImplementedError

    def _get(self) -> Batch | None:
        while True:
            if self.abort.is_set():
                raise StageStopped
            try:
                return self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue

    def put(self, target: queue.Queue, item: object) -> None:
        """Blocking put that still notices an abort."""
        while True:
            if self.abort.is_set():
                raise StageStopped
            try:
                target.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


class InferenceStage(Stage):
    """Classifies the batch's valid records with the live model (one ``current()`` per batch)."""

    def __init__(self, model_source: ModelSource, ownership: Ownership, **kw) -> None:
        super().__init__("inference", **kw)
        self.model_source = model_source
        self.ownership = ownership

    def handle(self, batch: Batch) -> None:
        batch.items = [env for env in batch.items if self.ownership.owns(env.tp, env.epoch)]
        todo = [env for env in batch.items if env.to_classify]
        if not todo:
            return
        predictor = self.model_source.current()
        started = time.perf_counter()
        results = self._predict(predictor, todo)
        INFERENCE_SECONDS.observe(time.perf_counter() - started)
        for env, result in zip(todo, results, strict=True):
            if isinstance(result, ClassificationResult):
                env.result = result
                PREDICTIONS_CORENESS.labels(label=result.coreness.label).inc()
                for category in result.categories:
                    PREDICTIONS_CATEGORY.labels(category=category.label).inc()
            else:
                env.rejection = result

    @staticmethod
    def _predict(predictor, todo: Sequence[Envelope]) -> list[ClassificationResult | RecordError]:
        """The whole batch at once; if the model fails on it, record by record so one bad record is isolated."""
        records = [env.record for env in todo]
        try:
            return list(predictor.predict_batch(records))
        except Exception:  # noqa: BLE001 - a model error on some input must not stop the stream
            log.exception("inference failed on a batch; retrying record by record", extra={"records": len(todo)})
        out: list[ClassificationResult | RecordError] = []
        for record in records:
            try:
                out.append(predictor.predict_batch([record])[0])
            except Exception as exc:  # noqa: BLE001 - dead-lettered with the error
                out.append(RecordError(REASON_INFERENCE_FAILED, f"record {record.id}: {type(exc).__name__}: {exc}"))
        return out


class SinkStage(Stage):
    """Writes results to every sink, dead-letters rejects and sink failures, confirms the dead letters.

    A sink that raises :class:`SinkUnavailable` is retried (only the sinks not yet done) with growing
    waits until it recovers; the batch is abandoned only on abort or when all its partitions are gone.
    """

    def __init__(self, sinks: Sequence[Sink], dead_letters: DeadLetterWriter, ownership: Ownership, *,
                 backoff_s: float, max_backoff_s: float, dlq_timeout_s: float, max_dead_letter_bytes: int,
                 on_outage: Callable[[bool], None], **kw) -> None:
        super().__init__("sinks", **kw)
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.ownership = ownership
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.dlq_timeout_s = dlq_timeout_s
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self.on_outage = on_outage
        self.classified = 0
        self.dead_lettered = 0

    def handle(self, batch: Batch) -> None:
        results = [env.result for env in batch.items if env.result is not None]
        failures: dict[str, str] = {}
        pending = list(self.sinks) if results else []
        attempt = 0
        while pending:
            sink = pending[0]
            try:
                for failure in sink.write(results):
                    failures.setdefault(failure.record_id, f"{sink.name}: {failure.reason}")
                pending.pop(0)
            except Exception as exc:  # noqa: BLE001 - SinkUnavailable or a sink bug: retry the same batch later
                attempt += 1
                if not self._wait_to_retry(batch, f"sink {sink.name} unavailable", exc, attempt):
                    return
        if attempt:
            self.on_outage(False)
        self._dead_letter(batch, failures)
        written = [env for env in batch.items if env.result is not None and env.result.id not in failures]
        RECORDS_CLASSIFIED.inc(len(written))
        self.classified += len(written)
        now = time.time()
        for env in written:
            if env.timestamp_s is not None:
                END_TO_END_SECONDS.observe(max(0.0, now - env.timestamp_s))

    def _dead_letter(self, batch: Batch, sink_failures: dict[str, str]) -> None:
        letters = [(env, env.rejection.reason, env.rejection.message) for env in batch.items if env.rejection]
        letters += [(env, REASON_SINK_FAILED, sink_failures[env.result.id]) for env in batch.items
                    if env.result is not None and env.result.id in sink_failures]
        if not letters:
            return
        attempt = 0
        while True:
            try:
                for env, reason, error in letters:
                    value, error = self._fit(env.value, error)
                    self.dead_letters.send(topic=env.topic, partition=env.partition, offset=env.offset, key=env.key,
                                           value=value, reason=reason, error=error)
                self.dead_letters.flush(self.dlq_timeout_s)
                break
            except Exception as exc:  # noqa: BLE001 - not confirmed: send again, never commit past them
                attempt += 1
                if not self._wait_to_retry(batch, "dead-letter topic unavailable", exc, attempt):
                    return
        if attempt:
            self.on_outage(False)
        for _, reason, _ in letters:
            RECORDS_DEAD_LETTERED.labels(reason=reason).inc()
        self.dead_lettered += len(letters)

    def _fit(self, value: bytes | None, error: str) -> tuple[bytes | None, str]:
        """Original bytes above the producer's message limit are cut to it (the header says so); a dead
        letter that can never be produced would otherwise block its partition forever."""
        if value is None or len(value) <= self.max_dead_letter_bytes:
            return value, error
        note = f" [dead-letter value truncated from {len(value)} to {self.max_dead_letter_bytes} bytes]"
        return value[: self.max_dead_letter_bytes], error[: 4000 - len(note)] + note

    def _wait_to_retry(self, batch: Batch, what: str, exc: BaseException, attempt: int) -> bool:
        """Back off before another attempt; False (batch abandoned) if its partitions are gone."""
        self.on_outage(True)
        delay = backoff_delays(attempt, self.backoff_s, self.max_backoff_s)[-1]
        log.warning(f"{what}; retrying the batch", extra={
            "batch": batch.seq, "attempt": attempt, "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"})
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.abort.is_set():
                raise StageStopped
            if not any(self.ownership.owns(env.tp, env.epoch) for env in batch.items):
                log.warning("abandoning a batch whose partitions were revoked", extra={"batch": batch.seq})
                batch.abandoned = True
                self.on_outage(False)
                return False
            time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
        return True

