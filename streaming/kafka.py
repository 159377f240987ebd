"""Kafka helpers of the stream processor: topic names, idempotent topic creation, produce with delivery reports.

Clients are made from settings by :mod:`config.clients`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewTopic

from config.clients import make_admin, max_message_bytes
from config.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    """Every topic the processor uses: the inputs, the output and one dead-letter topic per input."""
    kafka = settings.kafka
    names = [*kafka.input_topics, kafka.output_topic, *(kafka.dlq_topic(t) for t in kafka.input_topics)]
    return list(dict.fromkeys(names))


def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the processor's topics with partitions from settings; topics that already exist are left as they are.

    Returns the names of the topics that were newly created.
    """
    kafka = settings.kafka
    config = {"max.message.bytes": str(max_message_bytes(settings))}  # Kafka's default is about 1 MB
    new = [NewTopic(name, num_partitions=kafka.partitions, replication_factor=kafka.replication_factor, config=config)
           for name in topic_names(settings)]
    admin = make_admin(settings)  # keep a reference: the futures fail if the client is destroyed
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    created: list[str] = []
    deadline = time.monotonic() + timeout
    for name, future in futures.items():
        while not future.done() and time.monotonic() < deadline:
            admin.poll(0.1)  # serves the client's log lines and errors (an unreachable broker: one line)
        try:
            future.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise TimeoutError(f"no answer from Kafka at {kafka.bootstrap_servers} within {timeout:.0f}s "
                               f"while creating topic {name}; is the broker running?") from None
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                log.debug("topic already exists", extra={"topic": name})
                continue
            raise
        log.info("created topic", extra={"topic": name, "partitions": kafka.partitions})
        created.append(name)
    return created


def produce(producer: Producer, topic: str, *, value: bytes | None, key: bytes | str | None = None,
            headers: dict[str, str] | dict[str, bytes] | None = None, on_delivery: Any = None,
            deadline: float | None = None) -> None:
    """``producer.produce``, serving delivery reports while the local queue is full.

    Raises ``BufferError`` if the queue is still full at ``deadline`` (a ``time.monotonic()`` value; None waits).
    """
    extra: dict[str, Any] = {"headers": headers} if headers else {}
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
            return
        except BufferError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            producer.poll(0.1)


def is_fatal(error: KafkaError) -> bool:
    """A fatal librdkafka error: the client can never produce again (e.g. an idempotence sequence error); only a
    new client helps."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL
