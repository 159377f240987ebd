"""Dead letters reach ``<input>.dlq`` on both brokers with the original bytes and the source in headers."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer

from config.clients import make_producer
from config.settings import load_settings
from models.records.schema import (
    REASON_EMPTY,
    REASON_INVALID_JSON,
    REASON_INVALID_RECORD,
    REASON_NOT_UTF8,
    REASON_OVERSIZE,
    RecordError,
    parse_record,
)
from streaming.kafka import create_topics
from streaming.pipeline.dead_letters import DeadLetterError, DeadLetterWriter
from tests.servers import free_port

BAD_MESSAGES: list[bytes | None] = [
    None,  # empty message (tombstone)
    b"\xff\xfe not utf-8",
    b'{"id": "x1", "title": "unterminated',
    b'{"id": "x2", "title": 42, "abstract": "wrong type"}',
    b'{"id": "x3", "title": "t", "abstract": "' + b"a" * 3_000 + b'"}',
    b'{"id": "x4", "title": "t", "abstract": "' + b"b" * 1_500_000 + b'"}',  # above Kafka's 1 MB default
]


def test_every_reason_arrives_with_original_bytes_and_headers(kafka_bootstrap: str) -> None:
    topic = f"dlq-in-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [topic], "partitions": 1},
                             records={"max_text_chars": 1_000})
    create_topics(settings)
    writer = DeadLetterWriter(make_producer(settings), settings)
    sent = {}
    for offset, value in enumerate(BAD_MESSAGES):
        with pytest.raises(RecordError) as caught:
            parse_record(value or b"", max_text_chars=settings.records.max_text_chars)
        writer.send(topic=topic, partition=0, offset=offset, key=f"k{offset}".encode(), value=value,
                    reason=caught.value.reason, error=caught.value.message)
        sent[str(offset)] = (value, caught.value.reason)
    writer.flush(15)
    assert sorted(reason for _, reason in sent.values()) == sorted(
        [REASON_EMPTY, REASON_NOT_UTF8, REASON_INVALID_JSON, REASON_INVALID_RECORD, REASON_OVERSIZE, REASON_OVERSIZE])

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "partition.assignment.strategy": "range"})
    consumer.subscribe([settings.kafka.dlq_topic(topic)])
    got = []
    for _ in range(120):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg)
        if len(got) == len(BAD_MESSAGES):
            break
    consumer.close()
    assert len(got) == len(BAD_MESSAGES)
    for msg in got:
        headers = {k: v.decode() for k, v in msg.headers()}
        value, reason = sent[headers["source_offset"]]
        assert msg.value() == value  # the original bytes, untouched
        assert msg.key() == f"k{headers['source_offset']}".encode()
        assert headers["reason"] == reason
        assert headers["error"]
        assert headers["source_topic"] == topic
        assert headers["source_partition"] == "0"


def test_flush_raises_when_dead_letters_are_not_acknowledged() -> None:
    settings = load_settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    writer = DeadLetterWriter(make_producer(settings, **{"message.timeout.ms": 1000}), settings)
    writer.send(topic="in", partition=0, offset=7, key=None, value=b"{", reason=REASON_INVALID_JSON, error="bad")
    with pytest.raises(DeadLetterError, match="1 dead letter"):
        writer.flush(3)
