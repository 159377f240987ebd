"""The Faust worker: end to end against the test brokers (and a real Kafka when KAFKA_URL is set), and its
batch handler directly (validation, sinks, dead letters, a sink outage)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from config.clients import make_producer
from config.settings import Settings
from models.inference.source import ModelSource
from models.records.schema import ClassificationResult
from streaming.apps.faust_worker import EXIT_SINK_STOPPED, BatchHandler, create_app, faust_config
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.sinks import JsonlSink, SinkFailure, SinkUnavailable
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    record_messages,
    sample_records,
    settings_env,
    stream_settings,
    wait_for,
)
from tests.servers import free_port
from tests.test_fuzz_input import MALFORMED, MAX_MESSAGE_BYTES, MAX_TEXT_CHARS, odd_valid_records

ROOT = Path(__file__).resolve().parents[1]
BAD_MESSAGES = {
    b"bad-json": b"{not json",
    b"bad-empty": b"",
    b"bad-utf8": b"\xff\xfe\x00title",
    b"bad-no-text": json.dumps({"id": "no-text"}).encode(),
    b"bad-array": b"[1, 2]",
}
BAD_REASONS = {b"bad-json": "invalid_json", b"bad-empty": "empty_message", b"bad-utf8": "not_utf8",
               b"bad-no-text": "invalid_record", b"bad-array": "invalid_record"}


def jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(params=["tansu", "noida", "kafka"])
def broker(request: pytest.FixtureRequest) -> str:
    """Each test broker, plus a real Kafka when KAFKA_URL is set."""
    if request.param == "kafka":
        if not os.environ.get("KAFKA_URL"):
            pytest.skip("KAFKA_URL is not set (a real Kafka broker for this variant)")
        return os.environ["KAFKA_URL"]
    return request.getfixturevalue(request.param).bootstrap


@pytest.mark.timeout(180)
def test_faust_worker_end_to_end(broker: str, tmp_path: Path) -> None:
    """`corestream faust-worker`: every good record reaches the output topic and the JSONL sink once, every bad
    message the DLQ with its reason, offsets are committed; SIGTERM stops it cleanly."""
    jsonl = tmp_path / "results.jsonl"
    settings = stream_settings(broker, sinks={"jsonl_path": str(jsonl)}, log_format="json")
    topic = settings.kafka.input_topics[0]
    records = sample_records(40, prefix="faust")
    ends = produce(broker, topic, record_messages(records[:20]) + list(BAD_MESSAGES.items()) +
                   record_messages(records[20:]))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streaming.cli", "faust-worker"], cwd=ROOT,
                                  env={**os.environ, **settings_env(settings)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(jsonl_ids(jsonl)) >= len(records) or worker.poll() is not None, 120,
                 "the faust worker to classify every record")
        assert worker.poll() is None, log.read_text()[-3000:]
        assert sorted(jsonl_ids(jsonl)) == sorted(r["id"] for r in records)
        output = read_topic(broker, settings.kafka.output_topic)
        assert sorted(m.key.decode() for m in output) == sorted(r["id"] for r in records)
        result = ClassificationResult.model_validate_json(output[0].value)
        assert result.model.name == "tiny-bag" and result.model.version == "t1"
        dead = read_topic(broker, settings.kafka.dlq_topic(topic))
        assert {m.key: m.headers["reason"] for m in dead} == BAD_REASONS
        values = {m.key: m.value for m in dead}
        assert values.pop(b"bad-empty") in (b"", None)  # an empty value may come back as None
        assert values == {k: v for k, v in BAD_MESSAGES.items() if k != b"bad-empty"}
        assert all(m.headers["source_topic"] == topic for m in dead)
        wait_for(lambda: committed_offsets(broker, settings.kafka.group_id, topic) == ends, 30,
                 f"offsets {ends} to be committed")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    assert code == 0, log.read_text()[-3000:]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "faust pipeline ready" and line["version"] == "t1" for line in lines)


class FlakySink(JsonlSink):
    """The real JSONL sink behind an outage of ``outages`` failed writes."""

    def __init__(self, path: Path, outages: int) -> None:
        super().__init__(path)
        self.name = "flaky-jsonl"
        self.outages = outages

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        if self.outages:
            self.outages -= 1
            raise SinkUnavailable("simulated outage")
        return super().write(results)


@pytest.mark.timeout(120)
def test_batch_handler_runs_the_pipeline_core(noida, tmp_path: Path) -> None:
    """decode -> infer -> sinks -> DLQ on one batch, retrying through a sink outage, skipping listed sources."""
    settings = stream_settings(noida.bootstrap, skip_sources=["spam"])
    topic = settings.kafka.input_topics[0]
    producer = make_producer(settings)
    sink = FlakySink(tmp_path / "out.jsonl", outages=2)
    handler = BatchHandler(settings, ModelSource(settings), [sink], DeadLetterWriter(producer, settings))
    records = sample_records(6, prefix="h")
    values = [json.dumps(r).encode() for r in records] + [b"{", json.dumps({**records[0], "id": "s1",
                                                                             "source": "spam"}).encode()]
    envelopes = [handler.envelope(topic=topic, partition=0, offset=i, key=None, value=v, timestamp_s=None)
                 for i, v in enumerate(values)]
    assert [env.to_classify for env in envelopes] == [True] * 6 + [False, False]
    assert envelopes[6].rejection.reason == "invalid_json" and envelopes[7].skipped_source == "spam"
    assert handler.handle(envelopes) is True
    assert sink.outages == 0 and handler.outage is False
    assert jsonl_ids(tmp_path / "out.jsonl") == [r["id"] for r in records]
    assert handler.classified == 6 and handler.dead_lettered == 1
    (dead,) = read_topic(noida.bootstrap, settings.kafka.dlq_topic(topic))
    assert dead.value == b"{" and dead.headers["reason"] == "invalid_json" and dead.headers["source_offset"] == "6"



@pytest.mark.timeout(120)
def test_batch_handler_applies_the_processors_input_rules(noida, tmp_path: Path) -> None:
    """The Faust worker validates with the processor's rules: one message of each malformed kind of the fuzz test
    is dead-lettered with its reason, the odd but valid records are classified."""
    settings = stream_settings(noida.bootstrap, records={"max_message_bytes": MAX_MESSAGE_BYTES,
                                                         "max_text_chars": MAX_TEXT_CHARS})
    topic = settings.kafka.input_topics[0]
    sink = JsonlSink(tmp_path / "out.jsonl")
    handler = BatchHandler(settings, ModelSource(settings), [sink],
                           DeadLetterWriter(make_producer(settings), settings))
    rng = random.Random(1)
    bad = [(kind, reason, make(rng)) for kind, (reason, make) in sorted(MALFORMED.items())]
    good = odd_valid_records(12)
    values = [value for _, _, value in bad] + [value for _, value in good]
    envelopes = [handler.envelope(topic=topic, partition=0, offset=i, key=None, value=value, timestamp_s=None)
                 for i, value in enumerate(values)]
    rejected = [(kind, env.rejection and env.rejection.reason) for (kind, _, _), env in zip(bad, envelopes[:len(bad)],
                                                                                             strict=True)]
    assert rejected == [(kind, reason) for kind, reason, _ in bad]
    assert handler.handle(envelopes) is True
    assert jsonl_ids(tmp_path / "out.jsonl") == [rid for rid, _ in good]
    dead = read_topic(noida.bootstrap, settings.kafka.dlq_topic(topic))
    assert sorted((int(m.headers["source_offset"]), m.headers["reason"]) for m in dead) == [
        (i, reason) for i, (_, reason, _) in enumerate(bad)]

def test_faust_app_is_configured_from_settings() -> None:
    settings = Settings(kafka={"bootstrap_servers": "k1:9092,k2:9092", "group_id": "g", "session_timeout_ms": 9000,
                               "input_topics": ["a", "b"]})
    config = faust_config(settings)
    assert config["broker"] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert config["broker_session_timeout"] == 9 and config["producer_acks"] == -1
    app = create_app(settings)
    assert app.conf.id == "g" and app.conf.topic_disable_leader is True
    (agent,) = app.agents.values()
    assert set(agent.channel.topics) == {"a", "b"}


def test_faust_cli_finds_the_app() -> None:
    """`faust -A streaming.apps.faust_worker` loads the module-level app built from CORESTREAM_* settings."""
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "streaming.apps.faust_worker", "agents"], cwd=ROOT,
                            env={**os.environ, "CORESTREAM_KAFKA__GROUP_ID": "from-env"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classify" in result.stdout


@pytest.mark.timeout(180)
def test_unwritten_batch_is_never_committed_on_stop(tansu, noida, tmp_path: Path) -> None:
    """Elasticsearch down, SIGTERM: the worker stops without committing; restarted with ES up, it writes all.

    On Tansu: noida-db's group coordinator never completes a rejoin after a member died without leaving."""
    dead_es = f"http://127.0.0.1:{free_port()}"
    settings = stream_settings(tansu.bootstrap, dead_es, sinks={"output_topic_enabled": False},
                               batch={"shutdown_timeout_s": 2.0}, log_format="json")
    topic = settings.kafka.input_topics[0]
    records = sample_records(10, prefix="alo")
    produce(tansu.bootstrap, topic, record_messages(records))
    log = tmp_path / "worker.log"

    def start(env: dict[str, str]) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "streaming.cli", "faust-worker"], cwd=ROOT,
                                    env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)

    worker = start(settings_env(settings))
    try:
        wait_for(lambda: "retrying the batch" in log.read_text(), 90, "the sink outage to be retried")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    assert code == 0 and "not committed, it will be consumed again" in log.read_text(), log.read_text()[-3000:]
    assert set(committed_offsets(tansu.bootstrap, settings.kafka.group_id, topic).values()) == {-1001}

    time.sleep(settings.kafka.session_timeout_ms / 1000 + 2)  # the killed member's session expires
    worker = start({**settings_env(settings), "CORESTREAM_ELASTICSEARCH__URL": noida.es_url})
    try:
        wait_for(lambda: len(es_docs(noida.es_url, settings.elasticsearch.index)) == len(records), 90,
                 "every record in Elasticsearch after the restart")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    docs = es_docs(noida.es_url, settings.elasticsearch.index)
    assert sorted(docs) == sorted(r["id"] for r in records)
    assert all(doc["classification"]["model"]["version"] == "t1" for doc in docs.values())


def test_faust_worker_with_a_missing_model_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "CORESTREAM_MODEL__MODEL": str(tmp_path / "none"), "CORESTREAM_METRICS__ENABLED": "false"}
    result = subprocess.run([sys.executable, "-m", "streaming.cli", "faust-worker"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot start the Faust worker: model checkpoint directory not found" in result.stderr


@pytest.mark.timeout(150)
def test_faust_worker_stops_with_a_non_zero_exit_when_a_sink_fails_permanently(noida, es_url: str,
                                                                                tmp_path: Path) -> None:
    """A whole-request 4xx from Elasticsearch, also after recreating the client, is permanent for the sink
    (SinkStopped): the worker exits with EXIT_SINK_STOPPED instead of retrying for ever, and commits nothing."""
    with EsFaultProxy(es_url) as proxy:
        settings = stream_settings(noida.bootstrap, proxy.url, log_format="json")
        topic = settings.kafka.input_topics[0]
        produce(noida.bootstrap, topic, record_messages(sample_records(20, prefix="stop")))
        proxy.fail_all(400)
        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "streaming.cli", "faust-worker"], cwd=ROOT,
                                      env={**os.environ, **settings_env(settings)}, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            code = worker.wait(120)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert code == EXIT_SINK_STOPPED, log.read_text()[-3000:]
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert any(line.get("status") == EXIT_SINK_STOPPED
                   and "elasticsearch failed permanently after recreating" in line.get("why", "") for line in lines)
        assert proxy.count("_bulk", 400) <= 4  # tried, recreated, tried again: no endless retry
    assert set(committed_offsets(noida.bootstrap, settings.kafka.group_id, topic).values()) == {-1001}
