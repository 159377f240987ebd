"""The two worker stages of the processor pipeline (the work items are in :mod:`streaming.pipeline.envelope`).

``main thread (poll, decode, batch) -> [infer queue] -> InferenceStage -> [sink queue] -> SinkStage
-> [done queue] -> main thread (commit)``. Each stage is one thread, so batches stay in consumption
order end to end; the queues are bounded, so a slow stage backs the pipeline up to the consumer, which
then pauses its partitions.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, NamedTuple

from config.settings import Settings
from models.records.schema import ClassificationResult, RecordError
from streaming.observability.metrics import (
    END_TO_END_SECONDS,
    INFERENCE_SECONDS,
    PREDICTIONS_CATEGORY,
    PREDICTIONS_CORENESS,
    RECORDS_CLASSIFIED,
    RECORDS_DEAD_LETTERED,
    SINK_ERRORS,
    count_by_label,
    observe_many,
)
from streaming.pipeline import heap
from streaming.pipeline.dead_letters import DeadLetterError, DeadLetterWriter
from streaming.pipeline.envelope import Batch, Envelope
from streaming.pipeline.offsets import Ownership, TopicPartition
from streaming.sinks.base import Sink, SinkFailure, SinkFatal, SinkUnavailable, backoff_delays, result_bytes

if TYPE_CHECKING:
    from models.inference.source import ModelSource

log = logging.getLogger(__name__)

REASON_SINK_FAILED = "sink_failed"
REASON_INFERENCE_FAILED = "inference_failed"
UNEXPECTED = "unexpected error:"
_WAKE = object()  # put in the sink stage's inbox when a write finishes, instead of polling for it


class StageStopped(Exception):
    """The pipeline is aborting: a blocked put or retry gives up."""


class Stage(threading.Thread):
    """A pipeline thread: takes items from ``inbox`` until ``None``, hands results to ``outbox``."""

    def __init__(self, name: str, inbox: queue.Queue, outbox: queue.Queue | queue.SimpleQueue, abort: threading.Event,
                 on_crash: Callable[[BaseException], None], on_progress: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox, self.outbox, self.abort = inbox, outbox, abort
        self.on_crash, self.on_progress = on_crash, on_progress

    def run(self) -> None:
        try:
            self.serve()
        except StageStopped:
            log.info("pipeline stage stopped before finishing", extra={"stage": self.name})
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which stops the processor
            log.exception("pipeline stage crashed", extra={"stage": self.name})
            self.on_crash(exc)

    def serve(self) -> None:
        """One batch at a time: handle it, pass it on."""
        while (batch := self._get()) is not None:
            self.on_progress()  # room in the inbox
            self.handle(batch)
            self.put(self.outbox, batch)
            self.on_progress()
        self.put(self.outbox, None)

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

    def put(self, target: queue.Queue | queue.SimpleQueue, item: object) -> None:
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
        self._predictor: object = None

    def handle(self, batch: Batch) -> None:
        gone = batch.ended(self.ownership)
        if gone:
            batch.items = [env for env in batch.items if (env.tp, env.epoch) not in gone]
        todo = [env for env in batch.items if env.to_classify]
        if not todo:
            return
        predictor = self.model_source.current()
        if predictor is not self._predictor:
            swapped, self._predictor = self._predictor is not None, predictor
            if swapped:
                heap.refreeze()  # the old model collected, the new one frozen like the first
        started = time.perf_counter()
        results = self._predict(predictor, todo)
        INFERENCE_SECONDS.observe(time.perf_counter() - started)
        coreness: Counter[str] = Counter()
        categories: Counter[str] = Counter()
        for env, result in zip(todo, results, strict=True):
            if isinstance(result, ClassificationResult):
                if env.record.version is not None:
                    result.record_version = env.record.version  # the sinks' guard against stale versions
                env.result = result
                coreness[result.coreness.label] += 1
                for category in result.categories:
                    categories[category.label] += 1
            else:
                env.rejection = result
        count_by_label(PREDICTIONS_CORENESS, coreness)  # one metric update per label and batch, not per record
        count_by_label(PREDICTIONS_CATEGORY, categories)

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


class InFlight(NamedTuple):
    """A sink write in progress: the batches it gathered, their merged batch, its future and its record ids."""

    group: list[Batch]
    merged: Batch
    future: Future
    ids: frozenset[str]


class SinkStopped(RuntimeError):
    """A sink or the dead-letter producer failed for good, also after recreating its client: the processor stops
    (non-zero exit) rather than retry for ever while looking healthy."""


class SinkStage(Stage):
    """Writes results to every sink, dead-letters rejects and sink failures, confirms the dead letters.

    Failure rules (docs/processor.md): a sink that raises :class:`SinkUnavailable` is retried with growing waits
    (only the results it has not taken yet) until it recovers, and the batch is abandoned only on abort or when
    all its partitions are gone; a record a sink refuses (:class:`SinkFailure`) is dead-lettered and written to
    no later sink; :class:`SinkFatal` recreates the sink's client once, and a second one stops the processor
    (:class:`SinkStopped`); any other exception splits the batch until the record that causes it is isolated
    and dead-lettered. The stores (sinks with ``stores = True``: Elasticsearch, JSONL) are written first and
    concurrently; the other sinks (the output topic) after them, with only the results every store took, so a
    record refused by a store is dead-lettered and never published as classified.

    Newest version wins (docs/processor.md): a write waits for the earlier writes in flight that hold one of its
    ids, writes only the last result per id, and never starts an attempt for partitions no longer owned.
    """

    def __init__(self, sinks: Sequence[Sink], dead_letters: DeadLetterWriter, ownership: Ownership, *,
                 backoff_s: float, max_backoff_s: float, dlq_timeout_s: float, max_dead_letter_bytes: int,
                 on_outage: Callable[[bool], None], group_records: int = 1, group_bytes: int = 1 << 62,
                 group_wait_ms: float = 0, max_in_flight: int = 1, **kw) -> None:
        super().__init__("sinks", **kw)
        self.sinks = list(sinks)
        self.stores = [sink for sink in self.sinks if getattr(sink, "stores", False)]
        self.others = [sink for sink in self.sinks if not getattr(sink, "stores", False)]
        self.dead_letters = dead_letters
        self.ownership = ownership
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.dlq_timeout_s = dlq_timeout_s
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self.on_outage = on_outage
        self.group_records, self.group_bytes = group_records, group_bytes
        self.group_wait_s, self.max_in_flight = group_wait_ms / 1000, max_in_flight
        self.classified = 0
        self.dead_lettered = 0
        self._dlq_lock = threading.Lock()  # one group's dead letters are sent and confirmed at a time
        self._store_pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[InFlight] = deque()

    @classmethod
    def from_settings(cls, settings: Settings, sinks: Sequence[Sink], dead_letters: DeadLetterWriter,
                      ownership: Ownership, *, on_outage: Callable[[bool], None], **kw) -> SinkStage:
        """The stage as ``settings`` configure it (retry backoff, dead-letter limits, sink batching); ``kw`` are
        the :class:`Stage` arguments (queues and callbacks). The processor and the Faust worker both build it
        here."""
        batch, sink = settings.batch, settings.sinks
        return cls(sinks, dead_letters, ownership, backoff_s=batch.retry_backoff_s,
                   max_backoff_s=batch.max_retry_backoff_s, dlq_timeout_s=sink.delivery_timeout_s,
                   max_dead_letter_bytes=settings.records.max_message_bytes, on_outage=on_outage,
                   group_records=sink.batch_records, group_bytes=sink.batch_bytes, group_wait_ms=sink.batch_wait_ms,
                   max_in_flight=sink.max_in_flight, **kw)

    # ------------------------------------------------------------------ grouping (sink batching)

    def serve(self) -> None:
        """Gathers consecutive batches into one sink write (up to ``group_records`` results, ``group_bytes``
        estimated bytes, or ``group_wait_ms`` while the input keeps coming) and keeps up to ``max_in_flight``
        writes going at once; batches are passed on strictly in order, each once its write is complete. A write
        that shares an id with an earlier write in flight waits for it (writes of disjoint ids run concurrently)."""
        pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="sink-write")
        in_flight = self._in_flight
        group: list[Batch] = []
        records = size = 0
        opened = 0.0
        ended = False
        try:
            while True:
                if self.abort.is_set():
                    raise StageStopped
                self._complete(in_flight)
                full = records >= self.group_records or size >= self.group_bytes
                if group and len(in_flight) < self.max_in_flight and (
                        full or ended or self.inbox.empty() or time.monotonic() - opened >= self.group_wait_s):
                    merged = group[0] if len(group) == 1 else Batch(group[0].seq, [e for b in group for e in b.items])
                    ids = frozenset(env.result.id for env in merged.items if env.result is not None)
                    after = [w.future for w in in_flight if not w.future.done() and not w.ids.isdisjoint(ids)]
                    future = pool.submit(self._write, merged, after)
                    future.add_done_callback(self._wake)
                    in_flight.append(InFlight(group, merged, future, ids))
                    group, records, size = [], 0, 0
                    continue
                if ended and not group and not in_flight:
                    break
                if ended or full:
                    wait([in_flight[0].future], timeout=0.1)
                    continue
                try:
                    batch = self.inbox.get(timeout=0.1)  # a batch, or woken by a finished write
                except queue.Empty:
                    continue
                if batch is _WAKE:
                    continue
                self.on_progress()  # room in the inbox
                if batch is None:
                    ended = True
                    continue
                if not group:
                    opened = time.monotonic()
                group.append(batch)
                done = [env.result for env in batch.items if env.result is not None]
                records += len(done)
                size += sum(result_bytes(result) for result in done)
            self.put(self.outbox, None)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if self._store_pool is not None:
                self._store_pool.shutdown(wait=False)

    def _wake(self, _future: Future) -> None:
        """A write finished: wake :meth:`serve` if it waits for a batch (a full inbox needs no wake-up)."""
        with contextlib.suppress(queue.Full):
            self.inbox.put_nowait(_WAKE)

    def _complete(self, in_flight: deque[InFlight]) -> None:
        """Pass on the batches of finished writes, oldest first; a write that raised stops the stage."""
        while in_flight and in_flight[0].future.done():
            write = in_flight.popleft()
            self._count(write.future.result())
            for batch in write.group:
                batch.abandoned = batch.abandoned or write.merged.abandoned
                self.put(self.outbox, batch)
            self.on_progress()

    def writing(self, partitions: Collection[TopicPartition]) -> bool:
        """Whether a write that holds records of ``partitions`` is still running (any thread may ask)."""
        return any(not write.future.done() and not write.merged.positions.keys().isdisjoint(partitions)
                   for write in list(self._in_flight))

    def wait_writes(self, revoked: Collection[TopicPartition], timeout_s: float) -> bool:
        """After a revoke (ownership already ended): wait up to ``timeout_s`` for the writes still running with
        records of ``revoked`` (no new attempt starts for them) so that none lands after the new owner's; False,
        with a warning, if one still runs."""
        deadline = time.monotonic() + timeout_s
        while self.writing(revoked):
            if time.monotonic() >= deadline:
                log.warning("a sink write for revoked partitions is still running; it may land after the new "
                            "owner's (versioned records are guarded in Elasticsearch)",
                            extra={"partitions": sorted(f"{t}[{p}]" for t, p in revoked)})
                return False
            time.sleep(0.02)
        return True

    def _count(self, counts: tuple[int, int] | None) -> None:
        if counts is not None:
            self.classified += counts[0]
            self.dead_lettered += counts[1]

    # ------------------------------------------------------------------ one write

    def handle(self, batch: Batch) -> None:
        """Write one batch (the Faust worker's way in)."""
        self._count(self._write(batch))

    def _write(self, batch: Batch, after: Sequence[Future] = ()) -> tuple[int, int] | None:
        """Once the earlier writes ``after`` (that share ids with this one) are done: results to every sink, then
        dead letters; (classified, dead-lettered), or None if abandoned. Of several results for one id only the
        last (the newest version) is written; the others count as classified with it."""
        while after and wait(after, timeout=0.1).not_done:
            if self.abort.is_set():
                raise StageStopped
        results = list({env.result.id: env.result for env in batch.items if env.result is not None}.values())
        failures: dict[str, str] = {}
        lost: set[str] = set()  # ids of partitions revoked meanwhile: not written, not counted
        if results and not self._write_stores(batch, results, failures, lost):
            return None
        for sink in self.others:
            todo = [result for result in results if result.id not in failures]  # one outcome per record
            if todo and not self._write_sink(batch, sink, todo, failures, lost):
                return None
        dead_lettered = self._dead_letter(batch, failures)
        if dead_lettered is None:
            return None
        written = [env for env in batch.items
                   if env.result is not None and env.result.id not in failures and env.result.id not in lost]
        RECORDS_CLASSIFIED.inc(len(written))
        now = time.time()
        observe_many(END_TO_END_SECONDS, [max(0.0, now - env.timestamp_s) for env in written
                                          if env.timestamp_s is not None])
        return len(written), dead_lettered

    def _write_stores(self, batch: Batch, results: list[ClassificationResult], failures: dict[str, str],
                      lost: set[str]) -> bool:
        """The stores (Elasticsearch, JSONL) take the results concurrently."""
        if len(self.stores) <= 1:
            return all(self._write_sink(batch, sink, results, failures, lost) for sink in self.stores)
        if self._store_pool is None:
            self._store_pool = ThreadPoolExecutor(len(self.stores), thread_name_prefix="sink-store")
        each = [{} for _ in self.stores]
        futures = [self._store_pool.submit(self._write_sink, batch, sink, results, found, lost)
                   for sink, found in zip(self.stores, each, strict=True)]
        done = [future.result() for future in futures]
        for found in each:
            for record_id, reason in found.items():
                failures.setdefault(record_id, reason)
        return all(done)

    def _write_sink(self, batch: Batch, sink: Sink, todo: list[ClassificationResult],
                    failures: dict[str, str], lost: set[str]) -> bool:
        """Write ``todo`` to one sink, noting refused records in ``failures``; False if the batch was abandoned."""
        attempt = 0
        recreated = False
        while todo:
            todo = self._owned(batch, todo, lost)
            if not todo:
                if not any(self.ownership.owns(tp, epoch) for tp, (_, epoch) in batch.positions.items()):
                    batch.abandoned = True  # every partition of it was revoked
                    return False
                break
            try:
                for failure in self._isolate(sink, todo):
                    failures.setdefault(failure.record_id, f"{sink.name}: {failure.reason}")
                break
            except SinkUnavailable as exc:
                for failure in exc.failures:
                    failures.setdefault(failure.record_id, f"{sink.name}: {failure.reason}")
                done = exc.written | {failure.record_id for failure in exc.failures}
                todo = [result for result in todo if result.id not in done]  # never re-send what got through
                attempt += 1
                if not self._wait_to_retry(batch, f"sink {sink.name} unavailable", exc, attempt):
                    return False
            except SinkFatal as exc:
                recreated = self._recreate(f"sink {sink.name}", getattr(sink, "reset", None), exc, recreated)
        if attempt:
            self.on_outage(False)
        return True

    def _owned(self, batch: Batch, todo: list[ClassificationResult], lost: set[str]) -> list[ClassificationResult]:
        """``todo`` less the results read under an assignment that has ended (revoked, or revoked and assigned
        again since), noted in ``lost``: no attempt starts for them, so a revoked member's late write cannot land
        after the new owner's."""
        gone = batch.ended(self.ownership)
        if not gone:
            return todo
        latest = {env.result.id: env for env in batch.items if env.result is not None}  # whose result is written
        dropped = {record_id for record_id, env in latest.items() if (env.tp, env.epoch) in gone}
        lost.update(dropped)
        return [result for result in todo if result.id not in dropped]

    def _isolate(self, sink: Sink, results: list[ClassificationResult]) -> list[SinkFailure]:
        """``sink.write``; an unexpected exception splits the batch in halves until the record causing it is
        found (-> :class:`SinkFailure`). If every record fails on its own, the sink is broken: :class:`SinkFatal`."""
        try:
            return list(sink.write(results))
        except (SinkUnavailable, SinkFatal):
            raise
        except Exception as exc:  # noqa: BLE001 - unknown: isolate the record instead of retrying for ever
            error = f"{type(exc).__name__}: {exc}"
            if len(results) == 1:
                SINK_ERRORS.labels(sink=sink.name, kind="unexpected").inc()
                log.warning("sink failed on one record", extra={"sink": sink.name, "record": results[0].id,
                                                                "error": error})
                return [SinkFailure(results[0].id, f"{UNEXPECTED} {error}")]
            log.warning("sink failed on a batch; splitting it to find the record",
                        extra={"sink": sink.name, "records": len(results), "error": error})
            half = len(results) // 2
            failures = self._isolate(sink, results[:half]) + self._isolate(sink, results[half:])
            if len(failures) == len(results) and all(f.reason.startswith(UNEXPECTED) for f in failures):
                raise SinkFatal(f"sink {sink.name} failed on every record of a batch: {error}") from exc
            return failures

    def _recreate(self, what: str, reset: Callable[[], None] | None, exc: BaseException, recreated: bool) -> bool:
        """Recreate a client after a permanent error, once; a second permanent error stops the processor."""
        if recreated or reset is None:
            raise SinkStopped(f"{what} failed permanently{' after recreating its client' if recreated else ''}: "
                              f"{exc}") from exc
        log.error(f"{what} failed permanently; recreating its client", extra={"error": str(exc)})
        SINK_ERRORS.labels(sink=what.removeprefix("sink "), kind="recreated").inc()
        try:
            reset()
        except Exception as reset_error:  # noqa: BLE001 - cannot recreate: stop
            raise SinkStopped(f"{what}: recreating the client failed: {reset_error}") from exc
        return True

    def _dead_letter(self, batch: Batch, sink_failures: dict[str, str]) -> int | None:
        """Send and confirm the batch's dead letters: how many, or None if the batch was abandoned meanwhile."""
        letters = [(env, env.rejection.reason, env.rejection.message) for env in batch.items if env.rejection]
        letters += [(env, REASON_SINK_FAILED, sink_failures[env.result.id]) for env in batch.items
                    if env.result is not None and env.result.id in sink_failures]
        if not letters:
            return 0
        attempt = 0
        recreated = False
        while True:
            try:
                with self._dlq_lock:
                    self._send_letters(letters)
                break
            except Exception as exc:  # noqa: BLE001 - not confirmed: send again, never commit past them
                if isinstance(exc, DeadLetterError) and exc.fatal:
                    recreated = self._recreate("dead-letter producer", self.dead_letters.reset, exc, recreated)
                    continue
                attempt += 1
                if not self._wait_to_retry(batch, "dead-letter topic unavailable", exc, attempt):
                    return None
        if attempt:
            self.on_outage(False)
        for _, reason, _ in letters:
            RECORDS_DEAD_LETTERED.labels(reason=reason).inc()
        return len(letters)

    def _send_letters(self, letters: list[tuple[Envelope, str, str]]) -> None:
        for env, reason, error in letters:
            self.dead_letters.send(topic=env.topic, partition=env.partition, offset=env.offset, key=env.key,
                                   value=env.value, reason=reason, error=error,
                                   max_value_bytes=self.max_dead_letter_bytes)
        self.dead_letters.flush(self.dlq_timeout_s)

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

