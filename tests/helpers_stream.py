"""Shared helpers for stream tests: settings per test, a tiny trained model, producing records, reading
Elasticsearch documents, the output and dead-letter topics, and committed offsets; a processor in a thread."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from elasticsearch import Elasticsearch, NotFoundError, helpers

from config.settings import Settings, load_settings
from streaming.kafka import create_topics
from streaming.kafka import produce as kafka_produce
from streaming.pipeline.processor import ProcessorStats
from streaming.runtime import Runtime

PARTITIONS = 3


@functools.lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    """A small bag-of-words model trained once per test process on the generated sample."""
    from trainer.datasets.sample import generate_sample
    from trainer.training.train import train_model

    out = Path(tempfile.mkdtemp(prefix="corestream-tiny-model-")) / "model"
    return Path(train_model(generate_sample(600, seed=1), arch="bag", output_dir=out, epochs=2, progress=False,
                            seed=1, name="tiny-bag", version="t1"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stream_settings(bootstrap: str, es_url: str | None = None, *, model_dir: Path | None = None,
                    **overrides: Any) -> Settings:
    """Settings for one test: fresh topics, group and index; 3 partitions; small batches and waits."""
    name = unique("t")
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [f"{name}.in"], "output_topic": f"{name}.out",
                  "group_id": f"{name}-group", "partitions": PARTITIONS, "session_timeout_ms": 6000},
        "elasticsearch": {"url": es_url, "index": f"{name}-idx", "max_retries": 2, "retry_backoff_s": 0.2,
                          "max_backoff_s": 1.0, "request_timeout_s": 10},
        "batch": {"max_batch_records": 64, "max_wait_ms": 50, "retry_backoff_s": 0.5, "max_retry_backoff_s": 2.0,
                  "revoke_wait_s": 3.0, "shutdown_timeout_s": 20.0},
        "model": {"model": str(model_dir or tiny_model_dir()), "device": "cpu", "reload_interval_s": 0},
        "metrics": {"enabled": False, "port": 0},
        "log_format": "text",
    }
    settings = load_settings(**_merge(base, overrides))
    create_topics(settings)
    return settings


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as ``CORESTREAM_*`` environment variables (for ``corestream run`` subprocesses)."""
    env: dict[str, str] = {}
    for section, values in settings.model_dump(mode="json").items():
        if isinstance(values, dict):
            for key, value in values.items():
                if value is not None:
                    env[f"CORESTREAM_{section.upper()}__{key.upper()}"] = (
                        json.dumps(value) if isinstance(value, list | dict) else str(value))
        elif values is not None:
            env[f"CORESTREAM_{section.upper()}"] = json.dumps(values) if isinstance(values, list) else str(values)
    for secret in ("PASSWORD", "API_KEY", "SECRET_ACCESS_KEY"):
        for key in [k for k in env if k.endswith(secret) and env[k] == "**********"]:
            del env[key]
    return env


# ----------------------------------------------------------------------------- producing


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
            **config: Any) -> dict[int, int]:
    """Produce ``(key, value)`` pairs; return the end offset (last + 1) of each partition written to."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "message.max.bytes": 8_000_000,
                         **config})
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err.str())
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, value in messages:
        kafka_produce(producer, topic, key=key, value=value, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert not errors, f"delivery failed: {errors[:3]}"
    return ends


def record_messages(records: Iterable[dict]) -> list[tuple[bytes, bytes]]:
    return [(str(r["id"]).encode(), json.dumps(r).encode()) for r in records]


def sample_records(n: int, prefix: str = "rec", seed: int = 7) -> list[dict]:
    """``n`` generated records with unique ids ``{prefix}-{i}``."""
    from trainer.datasets.sample import generate_sample

    return [{**record, "id": f"{prefix}-{i}"} for i, record in enumerate(generate_sample(n, seed=seed))]


# ----------------------------------------------------------------------------- reading back


def es_docs(es_url: str, index: str) -> dict[str, dict]:
    """Every document of ``index`` by id (after a refresh); empty if the index does not exist."""
    client = Elasticsearch(es_url, request_timeout=30)
    try:
        client.indices.refresh(index=index)
        return {hit["_id"]: hit["_source"] for hit in helpers.scan(client, index=index, query={"query": {
            "match_all": {}}})}
    except NotFoundError:
        return {}
    finally:
        client.close()


def es_count(es_url: str, index: str) -> int:
    client = Elasticsearch(es_url, request_timeout=10)
    try:
        client.indices.refresh(index=index)
        return int(client.count(index=index)["count"])
    except NotFoundError:
        return 0
    finally:
        client.close()


@dataclass
class TopicMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[TopicMessage]:
    """Every message of ``topic`` from the beginning, read until the end of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "fetch.message.max.bytes": 8_000_000})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[TopicMessage] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            headers = {k: (v.decode() if v is not None else "") for k, v in (msg.headers() or [])}
            out.append(TopicMessage(msg.partition(), msg.offset(), msg.key(), msg.value(), headers))
        assert len(at_end) == len(partitions), f"{topic}: not all partitions read to the end in {timeout}s"
        return out
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    """The group's committed offset per partition (-1001 = none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        answer = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {tp.partition: tp.offset for tp in answer}
    finally:
        consumer.close()


def wait_for(condition, timeout: float, what: str, interval: float = 0.3, detail=None):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` (and ``detail()``, if given)
    after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f"; {detail()}" if detail is not None else ""))
        time.sleep(interval)


# ----------------------------------------------------------------------------- processor in a thread


class ProcessorThread:
    """A :class:`StreamProcessor` with real sinks running in a thread; ``stop()`` returns its stats."""

    def __init__(self, settings: Settings, until_drained: bool = False) -> None:
        self.settings = settings
        self.runtime = Runtime(settings).open(load_model=False)
        self.model_source = self.runtime.model_source
        self.producer = self.runtime.producer
        self.sinks = self.runtime.sinks
        self.processor = self.runtime.processor()
        self.stop_event = threading.Event()
        self.stats: ProcessorStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(until_drained,), name="processor", daemon=True)

    def _run(self, until_drained: bool) -> None:
        try:
            self.stats = self.processor.run(self.stop_event, until_drained=until_drained)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.error = exc

    def start(self) -> ProcessorThread:
        self.thread.start()
        return self

    def join(self, timeout: float) -> ProcessorStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"processor still running after {timeout}s"
        self.runtime.close()
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats

    def stop(self, timeout: float = 60.0) -> ProcessorStats:
        self.stop_event.set()
        return self.join(timeout)

    def __enter__(self) -> ProcessorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


@contextmanager
def running(settings: Settings, until_drained: bool = False) -> Iterator[ProcessorThread]:
    with ProcessorThread(settings, until_drained) as proc:
        yield proc


def subprocess_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORESTREAM_")}
    env.update(settings_env(settings))
    return env

