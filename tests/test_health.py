"""Health that tells the truth: /healthz fails when work waits with no commit, /readyz answers within its probe
timeout even when a sink never answers, and idle connections do not keep server threads for ever."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from config.settings import load_settings
from streaming.observability.health import HealthServer
from streaming.observability.metrics import REGISTRY
from streaming.sinks import ElasticsearchSink
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import produce, record_messages, running, sample_records, stream_settings, wait_for
from tests.servers import black_hole


def _get(url: str, timeout: float = 20) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_answers_within_the_probe_timeout_when_elasticsearch_never_answers() -> None:
    with black_hole() as (port, _):
        url = f"http://127.0.0.1:{port}"
        sink = ElasticsearchSink(load_settings(elasticsearch={"url": url, "request_timeout_s": 30}),
                                 probe_timeout_s=0.5)
        started = time.monotonic()
        assert sink.check() is False
        assert time.monotonic() - started < 5

        def hanging_ready() -> tuple[bool, dict]:  # a check with no timeout of its own
            time.sleep(30)
            return True, {}

        with HealthServer("127.0.0.1", 0, ready=hanging_ready, probe_timeout_s=0.5) as health:
            for _ in range(3):  # later probes wait on the same check, they do not start more threads
                started = time.monotonic()
                status, body = _get(f"http://127.0.0.1:{health.port}/readyz")
                assert status == 503 and "did not answer within 0.5s" in body["error"]
                assert time.monotonic() - started < 5
            assert sum(t.name == "health-probe" for t in threading.enumerate()) == 1


def test_idle_connections_are_closed() -> None:
    with HealthServer("127.0.0.1", 0, idle_timeout_s=0.5, max_connections=4) as health:
        idle = [socket.create_connection(("127.0.0.1", health.port)) for _ in range(6)]
        for conn in idle:
            conn.settimeout(5)
        started = time.monotonic()
        assert all(conn.recv(1) == b"" for conn in idle)  # closed by the server: too many, or idle
        assert time.monotonic() - started < 5
        for conn in idle:
            conn.close()
        assert _get(f"http://127.0.0.1:{health.port}/healthz")[0] == 200


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_healthz_fails_when_work_waits_without_a_commit_then_recovers(noida, es_url: str) -> None:
    with EsFaultProxy(es_url) as proxy:
        settings = stream_settings(noida.bootstrap, proxy.url, batch={"stalled_after_s": 3})
        topic = settings.kafka.input_topics[0]
        with running(settings) as proc, HealthServer("127.0.0.1", 0, health=proc.processor.health) as health:
            url = f"http://127.0.0.1:{health.port}/healthz"
            wait_for(lambda: proc.processor.ownership.partitions(), 30, "partitions assigned")
            assert _get(url)[0] == 200  # idle: nothing waits, however long ago the last commit was
            proxy.fail_all(503)
            produce(noida.bootstrap, topic, record_messages(sample_records(20, prefix="h")))
            wait_for(lambda: _get(url)[0] == 503, 30, "/healthz to report the stall")
            status, body = _get(url)
            assert body["uncommitted_for_s"] >= 3 and body["crashed"] is None
            since = REGISTRY.get_sample_value("corestream_stalled_since_seconds")
            assert since and time.time() - since >= 3
            proxy.heal()
            wait_for(lambda: _get(url)[0] == 200, 60, "/healthz to recover after the commit")
            assert proc.error is None
