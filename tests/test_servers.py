"""The test servers themselves start, answer and stop."""

from __future__ import annotations

import boto3
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from elasticsearch import Elasticsearch


def _roundtrip(bootstrap: str, topic: str) -> list[bytes]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce(topic, f"m{i}".encode())
    assert producer.flush(15) == 0
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000, "partition.assignment.strategy": "range",
    })
    consumer.subscribe([topic])
    got: list[bytes] = []
    for _ in range(100):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg.value())
        if len(got) == 3:
            break
    consumer.close()
    return got


def test_both_brokers_roundtrip(kafka_bootstrap: str) -> None:
    assert _roundtrip(kafka_bootstrap, "servers-roundtrip") == [b"m0", b"m1", b"m2"]


def test_noida_elasticsearch(es_url: str) -> None:
    es = Elasticsearch(es_url)
    es.index(index="servers-test", id="1", document={"a": 1}, refresh=True)
    assert es.get(index="servers-test", id="1")["_source"] == {"a": 1}


def test_moto_s3(moto_server) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url)
    s3.create_bucket(Bucket="servers-test")
    s3.put_object(Bucket="servers-test", Key="k", Body=b"v")
    assert s3.get_object(Bucket="servers-test", Key="k")["Body"].read() == b"v"
