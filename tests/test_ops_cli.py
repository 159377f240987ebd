"""Operator commands through the real CLI entry point, against real brokers."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from config.clients import make_admin
from config.settings import load_settings
from models.records.schema import ClassificationResult
from streaming.cli import main


def consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "partition.assignment.strategy": "range"})
    consumer.subscribe([topic])
    got = []
    for _ in range(120):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append((msg.key(), msg.value()))
        if len(got) >= expected:
            break
    consumer.close()
    return got


@pytest.fixture
def kafka_env(monkeypatch: pytest.MonkeyPatch, noida) -> str:
    topic = f"ops-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CORESTREAM_KAFKA__BOOTSTRAP_SERVERS", noida.bootstrap)
    monkeypatch.setenv("CORESTREAM_KAFKA__INPUT_TOPICS", json.dumps([topic]))
    monkeypatch.setenv("CORESTREAM_KAFKA__OUTPUT_TOPIC", f"{topic}.out")
    monkeypatch.setenv("CORESTREAM_KAFKA__PARTITIONS", "2")
    return topic


def test_topics_create_is_idempotent(kafka_env: str, noida, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "create"]) == 0
    first = capsys.readouterr().out
    assert f"{kafka_env}: created" in first and f"{kafka_env}.dlq: created" in first
    assert main(["topics", "create"]) == 0
    assert capsys.readouterr().out.count(": exists") == 3
    topics = make_admin(load_settings(kafka={"bootstrap_servers": noida.bootstrap})).list_topics(timeout=10).topics
    assert {name: len(topics[name].partitions) for name in (kafka_env, f"{kafka_env}.out", f"{kafka_env}.dlq")} == {
        kafka_env: 2, f"{kafka_env}.out": 2, f"{kafka_env}.dlq": 2}


def test_produce_jsonl_sends_lines_as_is_keyed_by_id(kafka_env: str, noida, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        json.dumps({"id": "a1", "title": "T", "abstract": "A"}),
        json.dumps({"control_number": 42, "titles": [{"title": "Inspire"}]}),
        "{not json",  # sent anyway: the processor dead-letters it
        json.dumps({"title": "no id"}),
    ]
    path = tmp_path / "records.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    assert main(["produce", str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"produced 4 records to {kafka_env}"
    got = consume_all(noida.bootstrap, kafka_env, 4)
    assert sorted(got, key=lambda kv: kv[1]) == sorted(
        [(b"a1", lines[0].encode()), (b"42", lines[1].encode()), (None, b"{not json"), (None, lines[3].encode())],
        key=lambda kv: kv[1])


def test_produce_json_array_and_inspire_search_result(kafka_env: str, noida, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"id": "x1", "title": "a", "abstract": "b"}, {"id": "x2", "title": "c"}], indent=2))
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"hits": {"total": 2, "hits": [
        {"id": "7", "metadata": {"control_number": 7, "titles": [{"title": "seven"}]}},
        {"id": "8", "metadata": {"control_number": 8, "titles": [{"title": "eight"}]}},
    ]}}))
    topic = f"{kafka_env}-other"
    assert main(["produce", str(array), "--no-progress", "--topic", topic]) == 0
    assert main(["produce", str(search), "--no-progress", "--topic", topic, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert f"produced 2 records to {topic}" in out and f"produced 1 records to {topic}" in out
    got = consume_all(noida.bootstrap, topic, 3)
    assert sorted(key for key, _ in got) == [b"7", b"x1", b"x2"]
    assert {json.loads(value)["titles"][0]["title"] for key, value in got if key == b"7"} == {"seven"}


def test_produce_reports_missing_file_and_unreachable_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    assert main(["produce", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    path = tmp_path / "one.jsonl"
    path.write_text('{"id": "1", "title": "t"}\n')
    monkeypatch.setenv("CORESTREAM_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CORESTREAM_SINKS__DELIVERY_TIMEOUT_S", "2")
    assert main(["produce", str(path), "--no-progress"]) == 2
    assert "1 of 1 records were not delivered" in capsys.readouterr().err


def test_classify_prints_result_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.training.train import train_model

    checkpoint = train_model(None, arch="bag", output_dir=tmp_path / "model", sample_count=300, epochs=1,
                             progress=False, name="cli-test", version="1")
    title, abstract = "Black hole entropy in string theory", "We count microstates of extremal black holes."
    assert main(["classify", title, abstract, "--model", str(checkpoint), "--id", "q1"]) == 0
    result = ClassificationResult.model_validate_json(capsys.readouterr().out)
    assert result.id == "q1"
    assert (result.model.name, result.model.version, result.model.arch) == ("cli-test", "1", "bag")
    assert result.coreness.label in ("core", "non_core", "rejected")

    assert main(["classify", title, abstract, "--model", str(tmp_path / "missing")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["classify", "", "", "--model", str(checkpoint)]) == 2
    assert "missing title and abstract" in capsys.readouterr().err


def test_client_configs_come_from_settings() -> None:
    from config.clients import consumer_config, producer_config

    settings = load_settings(kafka={"bootstrap_servers": "k:9092", "group_id": "g1", "session_timeout_ms": 7000,
                                    "max_poll_interval_ms": 60_000, "extra": {"security.protocol": "SSL"}})
    consumer = consumer_config(settings, **{"enable.partition.eof": True})
    assert {k: consumer[k] for k in ("bootstrap.servers", "group.id", "session.timeout.ms", "max.poll.interval.ms",
                                     "partition.assignment.strategy", "auto.offset.reset", "enable.auto.commit",
                                     "enable.auto.offset.store", "security.protocol", "enable.partition.eof")} == {
        "bootstrap.servers": "k:9092", "group.id": "g1", "session.timeout.ms": 7000, "max.poll.interval.ms": 60_000,
        "partition.assignment.strategy": "range", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "security.protocol": "SSL", "enable.partition.eof": True}
    producer = producer_config(settings)
    assert (producer["acks"], producer["enable.idempotence"], producer["security.protocol"]) == ("all", True, "SSL")
    assert producer["message.max.bytes"] > settings.records.max_message_bytes
