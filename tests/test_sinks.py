"""Sinks against real servers: Elasticsearch (noida-db, behind the fault proxy), both Kafka brokers, a file."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from elasticsearch import Elasticsearch
from elasticsearch.serializer import OrjsonSerializer

from config.clients import es_client, make_producer
from config.settings import Settings, load_settings
from models.records.schema import ClassificationResult, CorenessResult, CorenessScores, ModelInfo
from streaming.kafka import create_topics
from streaming.observability.metrics import REGISTRY
from streaming.sinks import ElasticsearchSink, JsonlSink, OutputTopicSink, SinkUnavailable, build_sinks
from streaming.sinks.elasticsearch import ensure_index
from tests.es_fault_proxy import EsFaultProxy

MODEL = ModelInfo(name="demo", version="7", arch="bag")


def make_result(record_id: str, label: str = "core") -> ClassificationResult:
    scores = {"core": 0.1, "non_core": 0.1, "rejected": 0.1} | {label: 0.8}
    return ClassificationResult(
        id=record_id,
        coreness=CorenessResult(label=label, scores=CorenessScores(**scores)),
        categories=[{"label": "hep-th", "score": 0.9}, {"label": "gr-qc", "score": 0.6}],
        model=MODEL,
    )


def es_settings(url: str, index: str, **es: object) -> Settings:
    return load_settings(elasticsearch={"url": url, "index": index, "max_retries": 3, "retry_backoff_s": 0.05,
                                        "max_backoff_s": 0.2, "request_timeout_s": 5, **es})


@pytest.fixture
def index() -> str:
    return f"sink-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def proxy(es_url: str):
    with EsFaultProxy(es_url) as fault_proxy:
        yield fault_proxy


# --------------------------------------------------------------------------- Elasticsearch


def test_es_sink_creates_index_and_upserts_classification(es_url: str, index: str) -> None:
    es = Elasticsearch(es_url)
    sink = ElasticsearchSink(es_settings(es_url, index))
    assert sink.check()
    assert sink.write([make_result("r1")]) == []  # creates the index with its mapping
    es.index(index=index, id="r2", document={"title": "kept as is"}, refresh=True)

    assert sink.write([make_result("r1", "rejected"), make_result("r2", "non_core")]) == []
    es.indices.refresh(index=index)

    mapping = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]["classification"]["properties"]
    assert mapping["coreness"]["properties"]["label"]["type"] == "keyword"
    assert mapping["coreness"]["properties"]["scores"]["properties"]["core"]["type"] == "float"
    assert mapping["classified_at"]["type"] == "date"
    r1 = es.get(index=index, id="r1")["_source"]
    r2 = es.get(index=index, id="r2")["_source"]
    assert r1["classification"]["coreness"]["label"] == "rejected"  # updated in place, not duplicated
    assert r2["title"] == "kept as is"  # a partial update keeps the record's other fields
    assert r2["classification"] == make_result("r2", "non_core").model_dump(mode="json") | {
        "classified_at": r2["classification"]["classified_at"]}
    assert es.count(index=index)["count"] == 2
    assert ensure_index(es, index) is False  # idempotent
    sink.close()


def test_es_client_serialises_with_orjson_and_documents_round_trip(es_url: str, index: str) -> None:
    settings = es_settings(es_url, index)
    client = es_client(settings)
    assert isinstance(client.transport.serializers.get_serializer("application/json"), OrjsonSerializer)
    plain = Elasticsearch(es_url)  # the standard library's json
    doc = {"title": "Résumé of ∂μφ — naïve “quotes” 🚀", "abstract": 'line\nbreak "quoted" \\ tab\t',
           "n": 2**53 - 1, "x": 0.1 + 0.2, "tiny": 1e-300,
           "nested": {"list": ["ü", "a\"b", ""], "flag": True, "none": None}}
    client.index(index=index, id="doc-ü", document=doc, refresh=True)
    assert client.get(index=index, id="doc-ü")["_source"] == doc
    assert plain.get(index=index, id="doc-ü")["_source"] == doc

    sink = ElasticsearchSink(settings)  # its client comes from es_client
    results = [make_result("r-ü-1"), make_result("r-2", "rejected")]
    assert sink.write(results) == []
    plain.indices.refresh(index=index)
    for result in results:
        stored = plain.get(index=index, id=result.id)["_source"]["classification"]
        assert stored == result.model_dump(mode="json") | {"classified_at": stored["classified_at"]}
        assert client.get(index=index, id=result.id)["_source"]["classification"] == stored
    sink.close()
    client.close()
    plain.close()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_es_sink_retries_429_then_succeeds(proxy: EsFaultProxy, es_url: str, index: str) -> None:
    sink = ElasticsearchSink(es_settings(proxy.url, index))
    retried = _metric("corestream_sink_errors_total", sink="elasticsearch", kind="retried")
    bulks = _metric("corestream_es_bulk_seconds_count")
    proxy.fail_next(2, status=429)
    assert sink.write([make_result(f"t{i}") for i in range(5)]) == []
    assert proxy.count("_bulk", status=429) == 2
    assert proxy.count("_bulk", status=200) == 1
    assert _metric("corestream_sink_errors_total", sink="elasticsearch", kind="retried") == retried + 2
    assert _metric("corestream_es_bulk_seconds_count") == bulks + 3
    es = Elasticsearch(es_url)
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 5


def test_es_sink_unavailable_after_retries_then_recovers(proxy: EsFaultProxy, es_url: str, index: str) -> None:
    sink = ElasticsearchSink(es_settings(proxy.url, index, max_retries=2))
    assert sink.write([make_result("u0")]) == []
    proxy.fail_all(503)
    with pytest.raises(SinkUnavailable, match="503"):
        sink.write([make_result("u1")])
    assert proxy.count("_bulk", status=503) == 3  # first try + 2 retries
    assert not sink.check()

    proxy.refuse()
    with pytest.raises(SinkUnavailable, match="(?i)connection"):
        sink.write([make_result("u1")])
    assert not sink.check()

    proxy.heal()
    assert sink.check()
    assert sink.write([make_result("u1"), make_result("u2")]) == []
    es = Elasticsearch(es_url)
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 3


def test_es_client_sends_credentials_and_never_logs_them(proxy: EsFaultProxy, index: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    basic = ElasticsearchSink(es_settings(proxy.url, index, username="writer", password="s3cret-pw", max_retries=1))
    assert basic.check()
    assert proxy.last_headers["authorization"] == "Basic " + base64.b64encode(b"writer:s3cret-pw").decode()
    keyed = ElasticsearchSink(es_settings(proxy.url, index, api_key="a2V5LWlkOmtleS1zZWNyZXQ=", max_retries=1))
    assert keyed.check()
    assert proxy.last_headers["authorization"] == "ApiKey a2V5LWlkOmtleS1zZWNyZXQ="

    caplog.set_level(logging.DEBUG)
    proxy.fail_all(503)
    with pytest.raises(SinkUnavailable) as caught:
        basic.write([make_result("secret-test")])
    logged = caplog.text + str(caught.value) + repr(es_settings(proxy.url, index, password="s3cret-pw"))
    assert "s3cret-pw" not in logged and "a2V5LWlkOmtleS1zZWNyZXQ=" not in logged


def test_es_sink_returns_per_item_failures(es_url: str, index: str) -> None:
    es = Elasticsearch(es_url)
    # An index whose mapping conflicts with some results: classification.id must be a number here.
    numeric_id = {"properties": {"classification": {"properties": {"id": {"type": "long"}}}}}
    es.indices.create(index=index, mappings=numeric_id)
    sink = ElasticsearchSink(es_settings(es_url, index))
    failures = sink.write([make_result("1"), make_result("not-a-number"), make_result("3")])
    assert [f.record_id for f in failures] == ["not-a-number"]
    assert "classification.id" in failures[0].reason
    es.indices.refresh(index=index)
    assert sorted(hit["_id"] for hit in es.search(index=index)["hits"]["hits"]) == ["1", "3"]


# --------------------------------------------------------------------------- output topic, JSONL, build_sinks


def test_output_topic_sink_delivers_keyed_json_with_model_headers(kafka_bootstrap: str) -> None:
    topic = f"sink-out-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [f"{topic}-in"],
                                    "output_topic": topic, "partitions": 2})
    create_topics(settings)
    sink = OutputTopicSink(make_producer(settings), topic, delivery_timeout_s=15)
    results = [make_result(f"o{i}") for i in range(20)]
    assert sink.write(results) == []
    assert sink.check()

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "partition.assignment.strategy": "range"})
    consumer.subscribe([topic])
    got = {}
    for _ in range(120):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got[msg.key().decode()] = msg
        if len(got) == len(results):
            break
    consumer.close()
    assert sorted(got) == sorted(r.id for r in results)
    for result in results:
        msg = got[result.id]
        assert ClassificationResult.model_validate_json(msg.value()) == result
        assert dict(msg.headers()) == {"model_name": b"demo", "model_version": b"7"}
    sink.close()


def test_output_topic_sink_unavailable_when_broker_is_down() -> None:
    from tests.servers import free_port

    settings = load_settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    sink = OutputTopicSink(make_producer(settings, **{"message.timeout.ms": 1500}), "nowhere", delivery_timeout_s=3)
    with pytest.raises(SinkUnavailable, match="0/2 results delivered"):
        sink.write([make_result("a"), make_result("b")])
    assert not sink.check()


def test_jsonl_sink_appends_one_result_per_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlSink(path)
    assert sink.write([make_result("j1"), make_result("j2")]) == []
    sink.close()
    sink = JsonlSink(path)  # reopening appends
    assert sink.write([make_result("j3")]) == []
    assert sink.check()
    sink.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["j1", "j2", "j3"]
    assert ClassificationResult.model_validate_json(lines[0]).id == "j1"


def test_build_sinks_follows_settings(tmp_path: Path, tansu) -> None:
    settings = load_settings(kafka={"bootstrap_servers": tansu.bootstrap},
                             elasticsearch={"url": "http://127.0.0.1:9"},
                             sinks={"jsonl_path": str(tmp_path / "r.jsonl")})
    producer = make_producer(settings)
    assert [s.name for s in build_sinks(settings, producer)] == ["elasticsearch", "output_topic", "jsonl"]
    only_file = load_settings(sinks={"output_topic_enabled": False, "jsonl_path": str(tmp_path / "r.jsonl")})
    assert [s.name for s in build_sinks(only_file, producer)] == ["jsonl"]
    with pytest.raises(ValueError, match="no sink"):
        build_sinks(load_settings(sinks={"output_topic_enabled": False}), producer)
