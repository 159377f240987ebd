"""The output-topic sink: one JSON message per result, keyed by record id, acknowledged before commit."""

from __future__ import annotations

import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from models.records import ClassificationResult
from streaming.kafka_clients import produce
from streaming.metrics import SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkUnavailable


class OutputTopicSink:
    """Produces ``result.model_dump_json()`` with headers ``model_name``/``model_version`` and waits for delivery."""

    name = "output_topic"

    def __init__(self, producer: Producer, topic: str, delivery_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        errors: list[KafkaError] = []
        delivered = 0

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            nonlocal delivered
            if error is None:
                delivered += 1
            else:
                errors.append(error)

        deadline = time.monotonic() + self.delivery_timeout_s
        for result in results:
            self._produce(result, on_delivery, deadline)
        remaining = self.producer.flush(max(deadline - time.monotonic(), 0.0))
        if errors or remaining or delivered < len(results):
            kind = "delivery" if errors else "timeout"
            SINK_ERRORS.labels(sink=self.name, kind=kind).inc()
            detail = f"first error: {errors[0].str()}" if errors else f"{remaining} message(s) still queued"
            raise SinkUnavailable(
                f"output topic {self.topic}: {delivered}/{len(results)} results delivered "
                f"within {self.delivery_timeout_s}s; {detail}"
            )
        return []

    def _produce(self, result: ClassificationResult, on_delivery, deadline: float) -> None:
        headers = {"model_name": result.model.name, "model_version": result.model.version}
        try:
            produce(self.producer, self.topic, value=result.model_dump_json().encode("utf-8"),
                    key=result.id.encode("utf-8"), headers=headers, on_delivery=on_delivery, deadline=deadline)
        except BufferError:
            SINK_ERRORS.labels(sink=self.name, kind="queue_full").inc()
            raise SinkUnavailable(f"output topic {self.topic}: producer queue stayed full") from None
        except KafkaException as exc:
            SINK_ERRORS.labels(sink=self.name, kind="produce").inc()
            raise SinkUnavailable(f"output topic {self.topic}: {exc}") from exc

    def check(self) -> bool:
        try:
            metadata = self.producer.list_topics(self.topic, timeout=min(5.0, self.delivery_timeout_s))
        except KafkaException:
            return False
        topic = metadata.topics.get(self.topic)
        return topic is not None and topic.error is None

    def close(self) -> None:
        self.producer.flush(self.delivery_timeout_s)
