"""Issue 10's failure rules on real brokers: a record a sink cannot take is dead-lettered and the rest goes on;
dead letters are always encodable and fit; a fatal client error recreates the client once, then stops the
processor; a whole-request Elasticsearch 4xx stops it instead of retrying for ever; one outcome per record."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from config.clients import make_producer
from config.settings import SettingsError, load_settings
from models.records.schema import ClassificationResult, CorenessResult, CorenessScores, ModelInfo
from streaming.pipeline.dead_letters import MAX_ERROR_BYTES, DeadLetterError, DeadLetterWriter, build_dead_letter
from streaming.pipeline.envelope import Batch, Envelope
from streaming.pipeline.offsets import Ownership
from streaming.pipeline.processor import PipelineError
from streaming.pipeline.stages import REASON_SINK_FAILED, SinkStage
from streaming.sinks import JsonlSink, OutputTopicSink, build_sinks
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import (
    ProcessorThread,
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    record_messages,
    sample_records,
    stream_settings,
    unique,
)

MODEL = ModelInfo(name="demo", version="7", arch="bag")


def make_result(record_id: str) -> ClassificationResult:
    return ClassificationResult(id=record_id, model=MODEL, categories=[],
                                coreness=CorenessResult(label="core", scores=CorenessScores(core=0.8, non_core=0.1,
                                                                                            rejected=0.1)))


def sink_stage(sinks, writer: DeadLetterWriter, max_dead_letter_bytes: int = 2_000_000, *,
               topic: str) -> SinkStage:
    """A sink stage driven directly (``handle``), as the Faust worker does; it owns ``topic``'s partition 0 under
    epoch 1 (:func:`batch_of`)."""
    crashes: list[BaseException] = []
    ownership = Ownership()
    ownership.assign([(topic, 0)])
    return SinkStage(sinks, writer, ownership, backoff_s=0.1, max_backoff_s=0.5, dlq_timeout_s=15,
                     max_dead_letter_bytes=max_dead_letter_bytes, on_outage=lambda down: None, inbox=None,
                     outbox=None, abort=threading.Event(), on_crash=crashes.append, on_progress=lambda: None)


def batch_of(topic: str, results: list[ClassificationResult]) -> Batch:
    items = [Envelope(topic=topic, partition=0, offset=i, epoch=1, key=r.id.encode("utf-8", "surrogatepass"),
                      value=b"{}", timestamp_s=None, result=r) for i, r in enumerate(results)]
    return Batch(1, items)


def messages_by_key(bootstrap: str, topic: str) -> Counter:
    return Counter(m.key.decode("utf-8", "backslashreplace") for m in read_topic(bootstrap, topic))


def _ends_committed(bootstrap: str, settings, ends: dict[int, int]) -> bool:
    topic = settings.kafka.input_topics[0]
    return committed_offsets(bootstrap, settings.kafka.group_id, topic) == {p: ends.get(p, -1001) for p in range(3)}


# --------------------------------------------------------------------------- (1) a result a sink cannot serialise


def test_output_sink_refuses_an_unserialisable_result_and_delivers_the_rest_once(kafka_bootstrap: str) -> None:
    settings = stream_settings(kafka_bootstrap)
    sink = OutputTopicSink(make_producer(settings), settings.kafka.output_topic, delivery_timeout_s=15)
    results = [make_result("a"), make_result("\ud800-0"), make_result("b")]
    failures = sink.write(results)
    assert [f.record_id for f in failures] == ["\ud800-0"] and "serialise" in failures[0].reason
    assert messages_by_key(kafka_bootstrap, settings.kafka.output_topic) == Counter({"a": 1, "b": 1})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_result_no_sink_can_serialise_is_dead_lettered_others_written_once(noida, es_url: str) -> None:
    settings = stream_settings(noida.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    writer = DeadLetterWriter(make_producer(settings), settings)
    stage = sink_stage(build_sinks(settings, make_producer(settings)), writer, topic=topic)
    good = [make_result(f"g{i}") for i in range(10)]
    stage.handle(batch_of(topic, [*good[:5], make_result("\ud800-0"), *good[5:]]))
    assert stage.classified == 10 and stage.dead_lettered == 1
    assert set(es_docs(es_url, settings.elasticsearch.index)) == {r.id for r in good}
    assert messages_by_key(noida.bootstrap, settings.kafka.output_topic) == Counter({r.id: 1 for r in good})
    [letter] = read_topic(noida.bootstrap, settings.kafka.dlq_topic(topic))
    assert letter.headers["reason"] == REASON_SINK_FAILED and letter.headers["source_offset"] == "5"
    assert "\\ud800" in letter.headers["error"]


class RaisesOn:
    """A JSONL sink that raises an unexpected error whenever a batch holds one given id (fault injection)."""

    def __init__(self, sink: JsonlSink, bad_id: str) -> None:
        self.sink, self.bad_id, self.name, self.calls = sink, bad_id, sink.name, 0

    def write(self, results):
        self.calls += 1
        if any(r.id == self.bad_id for r in results):
            raise TypeError(f"cannot handle {self.bad_id}")
        return self.sink.write(results)

    def check(self) -> bool:
        return self.sink.check()

    def close(self) -> None:
        self.sink.close()


def test_unknown_sink_error_splits_the_batch_and_dead_letters_only_that_record(tansu, tmp_path) -> None:
    settings = stream_settings(tansu.bootstrap)
    topic = settings.kafka.input_topics[0]
    path = tmp_path / "out.jsonl"
    sink = RaisesOn(JsonlSink(path), "r5")
    stage = sink_stage([sink], DeadLetterWriter(make_producer(settings), settings), topic=topic)
    stage.handle(batch_of(topic, [make_result(f"r{i}") for i in range(16)]))
    written = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(written) == sorted(f"r{i}" for i in range(16) if i != 5)  # each once
    assert stage.classified == 15 and stage.dead_lettered == 1 and sink.calls <= 9
    [letter] = read_topic(tansu.bootstrap, settings.kafka.dlq_topic(topic))
    assert letter.key == b"r5" and "TypeError: cannot handle r5" in letter.headers["error"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processor_drains_past_a_lone_surrogate_id(noida, es_url: str) -> None:
    """The issue's cases 1 and 2 end to end: both records are dead-lettered (at decode or by the sinks), nothing
    stalls, every other record is written once."""
    settings = stream_settings(noida.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    good = sample_records(60, prefix="s")
    bad = [(b"bad", b'{"id":"\\ud800-0","title":"t","abstract":"a"}'),  # case 1: the sinks cannot serialise it
           (b"rejected", b'{"id":"\\udfff-0","title":""}')]  # case 2: its error text may hold the surrogate
    ends = produce(noida.bootstrap, topic, record_messages(good[:30]) + bad + record_messages(good[30:]))
    proc = ProcessorThread(settings, until_drained=True).start()
    stats = proc.join(90)
    assert stats.classified == 60 and stats.dead_lettered == 2
    assert messages_by_key(noida.bootstrap, settings.kafka.output_topic) == Counter({r["id"]: 1 for r in good})
    assert set(es_docs(es_url, settings.elasticsearch.index)) == {r["id"] for r in good}
    letters = read_topic(noida.bootstrap, settings.kafka.dlq_topic(topic))
    assert sorted(m.key for m in letters) == [b"bad", b"rejected"] and all(m.headers["reason"] for m in letters)
    assert _ends_committed(noida.bootstrap, settings, ends)


# --------------------------------------------------------------------------- (2), (3) dead letters always fit


def test_dead_letter_error_with_a_lone_surrogate_is_sent_escaped(kafka_bootstrap: str) -> None:
    settings = stream_settings(kafka_bootstrap)
    topic = settings.kafka.input_topics[0]
    writer = DeadLetterWriter(make_producer(settings), settings)
    writer.send(topic=topic, partition=0, offset=3, key=b"\xed\xbf\xbf-0", value=b'{"id":"\\udfff-0","title":""}',
                reason="invalid_record", error="record \udfff-0: title is empty")
    writer.flush(15)
    writer.flush(1)  # nothing left pending: a later flush succeeds too
    [letter] = read_topic(kafka_bootstrap, settings.kafka.dlq_topic(topic))
    assert letter.headers["error"] == "record \\udfff-0: title is empty"
    assert letter.value == b'{"id":"\\udfff-0","title":""}'


def test_a_failed_send_is_not_counted_so_flush_succeeds_afterwards(tansu) -> None:
    settings = stream_settings(tansu.bootstrap)
    topic = settings.kafka.input_topics[0]
    # A producer whose own limit is below what the writer fits to: librdkafka refuses the letter in produce().
    writer = DeadLetterWriter(make_producer(settings, **{"message.max.bytes": 10_000}), settings)
    with pytest.raises(DeadLetterError, match="not queued"):
        writer.send(topic=topic, partition=0, offset=0, key=b"k", value=b"v" * 50_000, reason="oversize", error="x")
    writer.send(topic=topic, partition=0, offset=1, key=b"k", value=b"v", reason="invalid_json", error="x")
    writer.flush(15)
    assert [m.value for m in read_topic(tansu.bootstrap, settings.kafka.dlq_topic(topic))] == [b"v"]


def test_dead_letter_of_a_message_at_the_size_limit_with_a_huge_key_fits(tansu) -> None:
    settings = stream_settings(tansu.bootstrap)
    topic = settings.kafka.input_topics[0]
    writer = DeadLetterWriter(make_producer(settings), settings)
    key, error = b"k" * 65_000, "e\u00e9" * 2_000  # a 65 kB key and a ~6 kB error text
    value = b"v" * (writer.max_bytes - len(key))  # the message was at the topic's limit
    letter = build_dead_letter(dlq_topic="x", topic=topic, partition=0, offset=9, key=key, value=value,
                               reason="oversize", error=error, max_bytes=writer.max_bytes)
    assert letter.size() <= writer.max_bytes and len(letter.headers["error"]) <= MAX_ERROR_BYTES
    writer.send(topic=topic, partition=0, offset=9, key=key, value=value, reason="oversize", error=error)
    writer.flush(30)
    [got] = read_topic(tansu.bootstrap, settings.kafka.dlq_topic(topic))
    assert got.key == key[:1024] and got.value == value  # the key is cut first; here that is enough
    assert got.headers["error"].endswith("[dead letter: key truncated from 65000 to 1024 bytes]")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processor_dead_letters_a_message_at_the_limit_with_a_65kb_key(tansu, es_url: str) -> None:
    settings = stream_settings(tansu.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    key = b"k" * 65_000
    record = json.dumps({"id": "big", "title": "t", "abstract": "word " * 400_000}).encode()  # 2 MB: oversize
    good = sample_records(20, prefix="n")
    ends = produce(tansu.bootstrap, topic, [(key, record), *record_messages(good)])
    stats = ProcessorThread(settings, until_drained=True).start().join(90)
    assert stats.classified == 20 and stats.dead_lettered == 1
    [letter] = read_topic(tansu.bootstrap, settings.kafka.dlq_topic(topic))
    assert letter.headers["reason"] == "oversize" and key.startswith(letter.key)
    assert _ends_committed(tansu.bootstrap, settings, ends)


# --------------------------------------------------------------------------- (4) a fatal producer error


class FatalProducer:
    """A real producer whose ``produce`` fails as librdkafka does after a fatal idempotence error."""

    def __init__(self, producer: Producer) -> None:
        self._producer, self.calls = producer, 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise KafkaException(KafkaError(KafkaError._FATAL, "OUT_OF_ORDER_SEQUENCE_NUMBER (injected)", fatal=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def _processor_with_output_producer(settings, first: Producer, factory) -> ProcessorThread:
    proc = ProcessorThread(settings, until_drained=True)
    output = OutputTopicSink(first, settings.kafka.output_topic, 15, producer_factory=factory)
    proc.sinks[:] = proc.processor.sinks[:] = [s for s in proc.sinks if s.name != output.name] + [output]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fatal_producer_error_recreates_the_producer_once(noida, es_url: str) -> None:
    settings = stream_settings(noida.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    records = sample_records(50, prefix="f")
    ends = produce(noida.bootstrap, topic, record_messages(records))
    broken = FatalProducer(make_producer(settings))
    stats = _processor_with_output_producer(settings, broken, lambda: make_producer(settings)).start().join(90)
    assert broken.calls == 1 and stats.classified == 50
    assert messages_by_key(noida.bootstrap, settings.kafka.output_topic) == Counter({r["id"]: 1 for r in records})
    assert _ends_committed(noida.bootstrap, settings, ends)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fatal_producer_error_twice_stops_the_processor(noida, es_url: str) -> None:
    settings = stream_settings(noida.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    produce(noida.bootstrap, topic, record_messages(sample_records(30, prefix="x")))
    made: list[FatalProducer] = []

    def factory() -> FatalProducer:
        made.append(FatalProducer(make_producer(settings)))
        return made[-1]

    proc = _processor_with_output_producer(settings, FatalProducer(make_producer(settings)), factory).start()
    started = time.monotonic()
    with pytest.raises(PipelineError, match="output_topic failed permanently after recreating"):
        proc.join(60)
    assert time.monotonic() - started < 60 and len(made) == 1 and made[0].calls == 1
    assert set(committed_offsets(noida.bootstrap, settings.kafka.group_id, topic).values()) == {-1001}
    assert read_topic(noida.bootstrap, settings.kafka.output_topic) == []


# --------------------------------------------------------------------------- (5) a whole-request Elasticsearch 4xx


def test_an_invalid_index_name_is_a_settings_error() -> None:
    for bad in ("Literature", "a b", "_x", "a:b", "x" * 256):
        with pytest.raises(SettingsError, match="elasticsearch.index"):
            load_settings(elasticsearch={"index": bad})
    assert load_settings(elasticsearch={"index": "literature-2018.v1"}).elasticsearch.index == "literature-2018.v1"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_whole_request_4xx_from_elasticsearch_stops_the_processor(noida, es_url: str) -> None:
    with EsFaultProxy(es_url) as proxy:
        settings = stream_settings(noida.bootstrap, proxy.url)
        topic = settings.kafka.input_topics[0]
        produce(noida.bootstrap, topic, record_messages(sample_records(30, prefix="q")))
        proxy.fail_all(400)
        proc = ProcessorThread(settings).start()
        with pytest.raises(PipelineError, match="elasticsearch failed permanently after recreating.*400"):
            proc.join(60)
        assert proxy.count("", 400) <= 4  # tried, recreated, tried again: no endless retry
    assert set(committed_offsets(noida.bootstrap, settings.kafka.group_id, topic).values()) == {-1001}
    assert read_topic(noida.bootstrap, settings.kafka.output_topic) == []


# --------------------------------------------------------------------------- one outcome per record


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_record_elasticsearch_refuses_is_not_published_as_classified(noida, es_url: str) -> None:
    from elasticsearch import Elasticsearch

    settings = stream_settings(noida.bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    es = Elasticsearch(es_url)  # classification.id must be a number: every non-numeric id is refused per item
    es.indices.create(index=settings.elasticsearch.index,
                      mappings={"properties": {"classification": {"properties": {"id": {"type": "long"}}}}})
    records = [{**r, "id": str(1000 + i)} for i, r in enumerate(sample_records(20))]
    records[7]["id"] = unique("not-a-number")
    ends = produce(noida.bootstrap, topic, record_messages(records))
    stats = ProcessorThread(settings, until_drained=True).start().join(90)
    assert stats.classified == 19 and stats.dead_lettered == 1
    published = messages_by_key(noida.bootstrap, settings.kafka.output_topic)
    assert records[7]["id"] not in published and len(published) == 19
    [letter] = read_topic(noida.bootstrap, settings.kafka.dlq_topic(topic))
    assert letter.key.decode() == records[7]["id"] and letter.headers["reason"] == REASON_SINK_FAILED
    assert letter.headers["error"].startswith("elasticsearch: ")
    assert _ends_committed(noida.bootstrap, settings, ends)
