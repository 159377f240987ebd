"""Hot reload: a version promoted mid-stream takes over between batches; a bad one is refused and the old kept."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import boto3
import pytest

from config.settings import Settings
from models.inference.source import ModelSource
from models.registry.store import ModelRegistry
from streaming.observability.metrics import MODEL_METRICS, REGISTRY
from tests import test_registry
from tests.helpers_stream import (
    es_count,
    es_docs,
    produce,
    read_topic,
    record_messages,
    running,
    sample_records,
    stream_settings,
    wait_for,
)
from tests.servers import MotoServer, NoidaServer

checkpoints = test_registry.checkpoints
registry_env = test_registry.registry_env
_restore_logging = test_registry._restore_logging


def metric(metric_name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric_name, labels) or 0.0


def serving(version: str) -> bool:
    return metric("corestream_model_info", name="demo", version=version, arch="bag", device="cpu") == 1.0


def tamper(settings: Settings, registry: ModelRegistry, version: str) -> None:
    s3 = boto3.client("s3", endpoint_url=settings.registry.endpoint_url, region_name="us-east-1")
    key = registry.key("demo", version, "model.safetensors")
    s3.put_object(Bucket=registry.bucket, Key=key, Body=b"not the weights the manifest describes")


def test_model_source_polls_swaps_and_survives_a_bad_version(registry_env: Settings,
                                                             checkpoints: dict[str, Path]) -> None:
    registry = ModelRegistry(registry_env.registry)
    for name in ("a", "b", "a"):
        registry.push(checkpoints[name], "demo")
    registry.promote("demo", "v1", "prod")
    source = ModelSource(registry_env.model_copy(update={"model": registry_env.model.model_copy(
        update={"model": "registry://demo@prod", "reload_interval_s": 0.2})}), hooks=MODEL_METRICS)
    assert source.current().info.version == "v1"
    try:
        registry.promote("demo", "v2", "prod")
        assert source.check_for_update()  # what the reload thread does each interval: v2 loaded, ready to swap
        assert serving("v1")  # nothing changes until the processor asks for the next batch's model
        assert source.current().info.version == "v2" and serving("v2")
        source.start_reloading()  # from here on the reload thread polls the alias

        tamper(registry_env, registry, "v3")
        failures = metric("corestream_model_reloads_total", outcome="failure")
        registry.promote("demo", "v3", "prod")
        wait_for(lambda: metric("corestream_model_reload_failed") == 1.0, 20, "the failed reload to be reported")
        assert metric("corestream_model_reloads_total", outcome="failure") == failures + 1
        assert source.current().info.version == "v2"

        registry.demote("demo", "prod")  # back to v2: nothing to do, and the failure flag stays until a success
        registry.demote("demo", "prod")  # back to v1, reused from the verified cache
        wait_for(lambda: source.current().info.version == "v1", 20, "v1 reloaded and swapped in")
        assert metric("corestream_model_reload_failed") == 0.0
    finally:
        source.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_promotion_mid_stream(noida: NoidaServer, moto_server: MotoServer, checkpoints: dict[str, Path],
                              tmp_path: Path) -> None:
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = stream_settings(
        noida.bootstrap, noida.es_url, model_dir=checkpoints["a"],
        model={"model": "registry://demo@prod", "reload_interval_s": 0.3, "cache_dir": str(tmp_path / "cache")},
        registry={"endpoint_url": moto_server.endpoint_url, "bucket": bucket},
    )
    registry = ModelRegistry(settings.registry)
    for name in ("a", "b", "a"):
        registry.push(checkpoints[name], "demo")
    registry.promote("demo", "v1", "prod")
    topic, index = settings.kafka.input_topics[0], settings.elasticsearch.index
    phases = {name: sample_records(n, prefix=name, seed=i) for i, (name, n) in
              enumerate([("before", 300), ("during", 400), ("after", 200), ("refused", 200)])}
    produced = 0

    def feed(name: str, chunks: int = 1) -> None:
        """Produce a phase's records, in ``chunks`` spread over time (so a swap can land among them)."""
        nonlocal produced
        records = phases[name]
        for i in range(chunks):
            produce(noida.bootstrap, topic, record_messages(records[i::chunks]))
            time.sleep(0.2 if chunks > 1 else 0)
        produced += len(records)

    with running(settings) as proc:
        proc.model_source.start_reloading()
        try:
            feed("before")
            wait_for(lambda: es_count(noida.es_url, index) == produced, 60, "the first records in ES")
            registry.promote("demo", "v2", "prod")
            feed("during", chunks=8)  # the swap happens somewhere in here, between two batches
            wait_for(lambda: proc.model_source.current().info.version == "v2", 30, "v2 loaded")
            feed("after")
            wait_for(lambda: es_count(noida.es_url, index) == produced, 60, "every record in ES")
            tamper(settings, registry, "v3")
            registry.promote("demo", "v3", "prod")
            wait_for(lambda: metric("corestream_model_reload_failed") == 1.0, 30, "the refused reload")
            feed("refused")
            wait_for(lambda: es_count(noida.es_url, index) == produced, 60, "the last records in ES")
            stats = proc.stop()
        finally:
            proc.model_source.stop()

    docs = {doc_id: doc["classification"] for doc_id, doc in es_docs(noida.es_url, index).items()}
    expected = {r["id"] for records in phases.values() for r in records}
    assert set(docs) == expected and stats.dead_lettered == 0  # nothing lost
    version = {doc_id: c["model"]["version"] for doc_id, c in docs.items()}
    assert {version[r["id"]] for r in phases["before"]} == {"v1"}
    assert {version[r["id"]] for r in phases["after"] + phases["refused"]} == {"v2"}
    # One clean cut: every v1 result was produced before every v2 result (no batch mixed two models).
    times = {v: sorted(c["classified_at"] for c in docs.values() if c["model"]["version"] == v) for v in ("v1", "v2")}
    assert times["v1"][-1] <= times["v2"][0]

    output = [json.loads(m.value) for m in read_topic(noida.bootstrap, settings.kafka.output_topic)]
    assert sorted(r["id"] for r in output) == sorted(expected)  # each record classified exactly once
    assert all(r["model"]["version"] == version[r["id"]] for r in output)
