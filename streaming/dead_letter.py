"""Dead letters: a message that cannot be classified goes, as its original bytes, to ``<input topic>.dlq``."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, Message, Producer

from config.settings import Settings
from streaming.kafka_clients import produce

log = logging.getLogger(__name__)


class DeadLetterError(RuntimeError):
    """Dead letters were not all acknowledged: the source offsets must not be committed."""


class DeadLetterWriter:
    """Sends rejected messages with headers ``reason``, ``error``, ``source_topic/partition/offset``."""

    def __init__(self, producer: Producer, settings: Settings) -> None:
        self.producer = producer
        self.kafka = settings.kafka
        self._lock = threading.Lock()  # delivery reports arrive on whichever thread polls the shared producer
        self._errors: list[str] = []
        self._pending = 0

    def send(self, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             reason: str, error: str) -> None:
        """Queue one dead letter; call :meth:`flush` before committing ``offset``."""
        headers = {
            "reason": reason,
            "error": error[:4000],
            "source_topic": topic,
            "source_partition": str(partition),
            "source_offset": str(offset),
        }
        dlq_topic = self.kafka.dlq_topic(topic)
        with self._lock:
            self._pending += 1
        produce(self.producer, dlq_topic, value=value, key=key, headers=headers, on_delivery=self._delivered)
        fields = {"reason": reason, "source_topic": topic, "source_partition": partition, "source_offset": offset}
        log.warning("dead-lettered %s[%d]@%d (%s): %s", topic, partition, offset, reason, error[:200], extra=fields)

    def _delivered(self, err: KafkaError | None, message: Message) -> None:
        with self._lock:
            self._pending -= 1
            if err is not None:
                self._errors.append(f"{message.topic()}: {err.str()}")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued dead letter; raise :class:`DeadLetterError` if any failed or timed out."""
        self.producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
            pending = self._pending
        if errors or pending:
            raise DeadLetterError(
                f"{len(errors)} dead letter(s) failed and {pending} not acknowledged within {timeout}s"
                + (f"; first error: {errors[0]}" if errors else "")
            )
