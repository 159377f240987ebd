"""The processor end to end against real brokers and Elasticsearch: records in, documents and messages out."""

from __future__ import annotations

import json

import pytest

from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    record_messages,
    running,
    sample_records,
    stream_settings,
)

N_RECORDS = 2_000


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_end_to_end_both_brokers(kafka_bootstrap: str, es_url: str) -> None:
    settings = stream_settings(kafka_bootstrap, es_url)
    topic = settings.kafka.input_topics[0]
    records = sample_records(N_RECORDS)
    ends = produce(kafka_bootstrap, topic, record_messages(records))
    assert sum(ends.values()) == N_RECORDS

    with running(settings, until_drained=True) as proc:
        stats = proc.join(180)

    assert stats.consumed >= N_RECORDS and stats.classified >= N_RECORDS and stats.dead_lettered == 0
    docs = es_docs(es_url, settings.elasticsearch.index)
    assert set(docs) == {r["id"] for r in records}
    for doc in docs.values():
        classification = doc["classification"]
        assert classification["coreness"]["label"] in {"core", "non_core", "rejected"}
        assert classification["model"]["name"] == "tiny-bag"
    output = read_topic(kafka_bootstrap, settings.kafka.output_topic)
    assert len(output) >= N_RECORDS
    assert {m.key.decode() for m in output} == {r["id"] for r in records}
    assert all(json.loads(m.value)["id"] == m.key.decode() for m in output)
    assert committed_offsets(kafka_bootstrap, settings.kafka.group_id, topic) == {
        p: ends.get(p, -1001) for p in range(3)}
