"""Result sinks, built from settings: Elasticsearch, the output topic and a JSONL file."""

from __future__ import annotations

from confluent_kafka import Producer

from config.clients import make_producer
from config.settings import Settings
from streaming.sinks.base import Sink, SinkFailure, SinkFatal, SinkUnavailable
from streaming.sinks.elasticsearch import ElasticsearchSink
from streaming.sinks.jsonl import JsonlSink
from streaming.sinks.kafka_output import OutputTopicSink

__all__ = ["ElasticsearchSink", "JsonlSink", "OutputTopicSink", "Sink", "SinkFailure", "SinkFatal", "SinkUnavailable",
           "build_sinks"]


def build_sinks(settings: Settings, producer: Producer) -> list[Sink]:
    """The sinks that settings turn on: Elasticsearch (``elasticsearch.url``), the output topic
    (``sinks.output_topic_enabled``) and a JSONL file (``sinks.jsonl_path``)."""
    sinks: list[Sink] = []
    probe_timeout_s = settings.metrics.probe_timeout_s
    if settings.elasticsearch.url:
        sinks.append(ElasticsearchSink(settings, probe_timeout_s=probe_timeout_s))
    if settings.sinks.output_topic_enabled:
        sinks.append(OutputTopicSink(producer, settings.kafka.output_topic, settings.sinks.delivery_timeout_s,
                                     producer_factory=lambda: make_producer(settings),
                                     probe_timeout_s=probe_timeout_s))
    if settings.sinks.jsonl_path:
        sinks.append(JsonlSink(settings.sinks.jsonl_path))
    if not sinks:
        raise ValueError("no sink is configured: set elasticsearch.url, sinks.output_topic_enabled or "
                         "sinks.jsonl_path")
    return sinks
