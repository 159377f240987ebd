"""Kafka and Elasticsearch clients configured from settings: the one place that turns settings into clients.

The client libraries are imported when a client is made, so importing this module (the trainer does, for
Elasticsearch) loads neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config.kafka_events import client_callbacks
from config.settings import ElasticsearchSettings, Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from elasticsearch import Elasticsearch


def _base_config(settings: Settings, *, stats: bool = False) -> dict[str, Any]:
    """Where the brokers are; the client's log lines and errors go to corestream's log, throttled
    (:mod:`config.kafka_events`)."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **client_callbacks(stats=stats)}


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Consumer settings for at-least-once processing: offsets are stored and committed by the processor only."""
    kafka = settings.kafka
    config = {
        **_base_config(settings, stats=True),
        "group.id": kafka.group_id,
        "session.timeout.ms": kafka.session_timeout_ms,
        "partition.assignment.strategy": kafka.partition_assignment_strategy,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "auto.offset.reset": kafka.auto_offset_reset,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **kafka.client_options(),
    }
    config.update(overrides)
    return config


def max_message_bytes(settings: Settings) -> int:
    """Largest message a producer sends and a created topic accepts: a dead letter keeps up to
    ``records.max_message_bytes`` of the original value, plus room for its headers."""
    return max(settings.records.max_message_bytes + 65_536, 1_000_000)


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Producer settings: every write acknowledged by all replicas, no duplicates from internal retries."""
    config = {
        **_base_config(settings),
        "acks": "all",
        # Accepted by both test brokers (Tansu and noida-db) and by Kafka itself.
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": max_message_bytes(settings),
        **settings.kafka.client_options(),
    }
    config.update(overrides)
    return config


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {**_base_config(settings), **settings.kafka.client_options(), **overrides}


def make_consumer(settings: Settings, **overrides: Any) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(consumer_config(settings, **overrides))


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    from confluent_kafka import Producer

    return Producer(producer_config(settings, **overrides))


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    return AdminClient(admin_config(settings, **overrides))


def es_client(settings: Settings | ElasticsearchSettings) -> Elasticsearch:
    """A client from settings (URL, basic auth or API key, TLS); retries are the caller's job, not the client's.

    Request and response bodies go through orjson (the client's ``OrjsonSerializer``): the bulk helper serialises
    every action line with it, about 7x faster than the standard library (docs/processor.md)."""
    from elasticsearch import Elasticsearch
    from elasticsearch.serializer import OrjsonSerializer

    es = settings.elasticsearch if isinstance(settings, Settings) else settings
    if not es.url:
        raise ValueError("Elasticsearch is not configured (set elasticsearch.url / CORESTREAM_ELASTICSEARCH__URL)")
    auth: dict[str, Any] = {}
    if es.api_key is not None:
        auth["api_key"] = es.api_key.get_secret_value()
    elif es.username:
        auth["basic_auth"] = (es.username, es.password.get_secret_value() if es.password else "")
    tls: dict[str, Any] = {}
    if es.url.startswith("https"):
        tls = {"verify_certs": es.verify_certs, "ca_certs": es.ca_certs}
    return Elasticsearch(es.url, request_timeout=es.request_timeout_s, max_retries=0, serializer=OrjsonSerializer(),
                         **auth, **tls)
