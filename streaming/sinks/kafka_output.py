"""The output-topic sink: one JSON message per result, keyed by record id, acknowledged before commit.

Failures are told apart by librdkafka's error: a result that cannot be serialised, or a message the broker
refuses as too large or invalid, is a :class:`SinkFailure` for that record (the rest is delivered); a fatal
producer error (e.g. an idempotence sequence error) or a refused authorisation is :class:`SinkFatal` (the
processor recreates the producer once); anything else (no broker, timeouts) is :class:`SinkUnavailable`,
naming the results that were delivered so that a retry does not send them again.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer

from models.records.schema import ClassificationResult
from streaming.kafka import is_fatal, produce
from streaming.observability.metrics import SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkFatal, SinkUnavailable, encoded_id

# The broker or client refuses this one message; sending it again cannot succeed.
RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
                           KafkaError._INVALID_ARG})
# The producer can never write to this topic as configured.
SINK_ERRORS_FATAL = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                               KafkaError._FATAL})


class OutputTopicSink:
    """Produces ``result.json_bytes`` with headers ``model_name``/``model_version`` and waits for delivery.

    ``producer_factory`` builds a replacement producer for :meth:`reset` (after a fatal producer error).
    """

    name = "output_topic"

    def __init__(self, producer: Producer, topic: str, delivery_timeout_s: float = 30.0, *,
                 producer_factory: Callable[[], Producer] | None = None, probe_timeout_s: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s
        self.producer_factory = producer_factory
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        with self._lock:  # one write at a time: its flush waits for its own delivery reports
            return self._write(results)

    def _write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        outcome: dict[int, KafkaError | None] = {}  # index in results -> delivery error (None: delivered)
        failures: list[SinkFailure] = []
        deadline = time.monotonic() + self.delivery_timeout_s
        queued = 0
        stop: SinkUnavailable | None = None
        for i, result in enumerate(results):
            try:
                key, value, headers = _message(result)
            except ValueError as exc:  # UnicodeEncodeError, PydanticSerializationError, too long an id
                SINK_ERRORS.labels(sink=self.name, kind="serialise").inc()
                failures.append(SinkFailure(result.id, f"cannot serialise the result: {type(exc).__name__}: {exc}"))
                continue
            try:
                produce(self.producer, self.topic, value=value, key=key, headers=headers, deadline=deadline,
                        on_delivery=lambda err, _msg, i=i: outcome.__setitem__(i, err))
                queued += 1
            except BufferError:
                SINK_ERRORS.labels(sink=self.name, kind="queue_full").inc()
                stop = SinkUnavailable(f"output topic {self.topic}: producer queue stayed full")
                break
            except KafkaException as exc:
                error = exc.args[0]
                if _classify(error) == "record":
                    SINK_ERRORS.labels(sink=self.name, kind="item").inc()
                    failures.append(SinkFailure(result.id, f"output topic refused the message: {error.str()}"))
                    continue
                self._raise_if_fatal(error)
                SINK_ERRORS.labels(sink=self.name, kind="produce").inc()
                stop = SinkUnavailable(f"output topic {self.topic}: {error.str()}")
                break
        remaining = self.producer.flush(max(deadline - time.monotonic(), 0.0)) if queued else 0
        while not remaining and len(outcome) < queued and time.monotonic() < deadline:
            self.producer.poll(0.01)  # a report being served by another thread polling the shared producer
        transient: list[KafkaError] = []
        for i, error in sorted(outcome.items()):
            if error is None:
                continue
            kind = _classify(error)
            if kind == "record":
                SINK_ERRORS.labels(sink=self.name, kind="item").inc()
                failures.append(SinkFailure(results[i].id, f"output topic refused the message: {error.str()}"))
            elif kind == "fatal":
                self._raise_if_fatal(error)
            else:
                transient.append(error)
        delivered = {results[i].id for i, error in outcome.items() if error is None}
        if stop is None and (transient or remaining or len(outcome) < queued):
            kind = "delivery" if transient else "timeout"
            SINK_ERRORS.labels(sink=self.name, kind=kind).inc()
            detail = f"first error: {transient[0].str()}" if transient else f"{remaining} message(s) still queued"
            stop = SinkUnavailable(f"output topic {self.topic}: {len(delivered)}/{len(results)} results delivered "
                                   f"within {self.delivery_timeout_s}s; {detail}")
        if stop is not None:
            raise SinkUnavailable(str(stop), written=delivered, failures=failures)
        return failures

    def _raise_if_fatal(self, error: KafkaError) -> None:
        if _classify(error) == "fatal":
            SINK_ERRORS.labels(sink=self.name, kind="fatal").inc()
            raise SinkFatal(f"output topic {self.topic}: producer error {error.name()}: {error.str()}")

    def check(self) -> bool:
        try:
            metadata = self.producer.list_topics(self.topic, timeout=min(self.probe_timeout_s,
                                                                         self.delivery_timeout_s))
        except KafkaException:
            return False
        topic = metadata.topics.get(self.topic)
        return topic is not None and topic.error is None

    def reset(self) -> None:
        """Replace the producer (after a fatal error every later produce fails on the old one)."""
        if self.producer_factory is None:
            raise SinkFatal(f"output topic {self.topic}: no way to recreate the producer")
        self.producer = self.producer_factory()

    def close(self) -> None:
        self.producer.flush(self.delivery_timeout_s)


def _message(result: ClassificationResult) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return encoded_id(result), result.json_bytes, _headers(result.model.name, result.model.version)


@functools.lru_cache(maxsize=16)
def _headers(name: str, version: str) -> list[tuple[str, bytes]]:
    """The model headers, encoded once per model (``ValueError`` for text UTF-8 cannot hold: not cached)."""
    return [("model_name", name.encode("utf-8")), ("model_version", version.encode("utf-8"))]


def _classify(error: KafkaError) -> str:
    """``record`` (this message can never be written), ``fatal`` (this producer never will) or ``transient``."""
    if is_fatal(error) or error.code() in SINK_ERRORS_FATAL:
        return "fatal"
    if error.code() in RECORD_ERRORS:
        return "record"
    return "transient"
