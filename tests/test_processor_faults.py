"""The processor under bad input, crashes, an Elasticsearch outage and a rebalance: nothing lost, nothing dropped
silently, and offsets committed only for what was durably written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from streaming.observability.health import HealthServer
from streaming.pipeline.offsets import CommitPositions, Ownership
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import (
    committed_offsets,
    es_count,
    es_docs,
    produce,
    read_topic,
    record_messages,
    running,
    sample_records,
    stream_settings,
    subprocess_env,
    wait_for,
)


def test_positions_of_revoked_or_reassigned_partitions_are_never_committed() -> None:
    ownership = Ownership()
    ownership.assign([("in", 0), ("in", 1)])
    positions = CommitPositions(ownership)
    old0, old1 = ownership.epoch(("in", 0)), ownership.epoch(("in", 1))
    positions.add({("in", 0): (10, old0), ("in", 1): (5, old1)})
    positions.add({("in", 0): (7, old0)})  # never backwards
    assert positions.to_commit() == {("in", 0): 10, ("in", 1): 5}
    ownership.revoke([("in", 0)])
    ownership.assign([("in", 0)])  # re-assigned: a new epoch
    assert positions.to_commit() == {("in", 1): 5}  # the old epoch's position is stale
    positions.add({("in", 0): (20, old0)})  # a batch that outlived the revoke
    assert positions.to_commit() == {("in", 1): 5}
    positions.add({("in", 0): (12, ownership.epoch(("in", 0)))})
    positions.mark_committed({("in", 0): 12, ("in", 1): 5})
    assert positions.to_commit() == {} and positions.committed == {("in", 0): 12, ("in", 1): 5}


def _ends_committed(bootstrap: str, settings, ends: dict[int, int]):
    topic = settings.kafka.input_topics[0]
    return lambda: committed_offsets(bootstrap, settings.kafka.group_id, topic) == {
        p: ends.get(p, -1001) for p in range(3)}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_input_goes_to_the_dead_letter_topic_with_reasons(tansu, es_url: str) -> None:
    # Tansu: noida-db refuses messages above 1 MB, and the 5 MB abstract must reach the processor.
    bootstrap = tansu.bootstrap
    settings = stream_settings(bootstrap, es_url, skip_sources=["legacy"])
    topic = settings.kafka.input_topics[0]
    bad: dict[str, tuple[bytes, str]] = {
        "invalid-json": (b'{"id": "x", "title": ', "invalid_json"),
        "missing-id": (json.dumps({"title": "A title", "abstract": "An abstract"}).encode(), "invalid_record"),
        "missing-text": (json.dumps({"id": "no-text"}).encode(), "invalid_record"),
        "wrong-types": (json.dumps({"id": "w", "title": 5, "abstract": ["x"]}).encode(), "invalid_record"),
        "not-an-object": (b"[1, 2, 3]", "invalid_record"),
        "huge": (json.dumps({"id": "huge", "title": "t", "abstract": "word " * 1_000_000}).encode(), "oversize"),
        "not-utf8": (b'{"id": "u", "title": "\xff\xfe\xfa"}', "not_utf8"),
        "empty": (b"", "empty_message"),
    }
    good = sample_records(60, prefix="good")
    legacy = [{**r, "source": "legacy"} for r in sample_records(5, prefix="legacy", seed=9)]
    messages: list[tuple[bytes, bytes]] = record_messages(legacy)
    for i, (key, (value, _)) in enumerate(bad.items()):  # bad ones in between good ones
        messages += record_messages(good[i * 6:(i + 1) * 6])
        messages.append((key.encode(), value))
    messages += record_messages(good[len(bad) * 6:])
    ends = produce(bootstrap, topic, messages)

    with running(settings, until_drained=True) as proc:
        stats = proc.join(90)

    assert stats.dead_lettered == len(bad) and stats.classified == len(good) and stats.skipped == len(legacy)
    assert set(es_docs(es_url, settings.elasticsearch.index)) == {r["id"] for r in good}  # skipped: not written
    letters = {m.key.decode(): m for m in read_topic(bootstrap, settings.kafka.dlq_topic(topic))}
    assert set(letters) == set(bad)
    for key, (value, reason) in bad.items():
        letter = letters[key]
        assert letter.headers["reason"] == reason, (key, letter.headers)
        assert letter.headers["error"] and letter.headers["source_topic"] == topic
        assert int(letter.headers["source_offset"]) >= 0
        if len(value) <= settings.records.max_message_bytes:
            assert (letter.value or b"") == value  # the original bytes
        else:
            assert value.startswith(letter.value) and "truncated" in letter.headers["error"]
    assert _ends_committed(bootstrap, settings, ends)()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_stream_three_times_loses_nothing(tansu, es_url: str, tmp_path) -> None:
    # Tansu: noida-db never expires a killed member, so its group would not rebalance after a SIGKILL.
    bootstrap = tansu.bootstrap
    settings = stream_settings(bootstrap, es_url, batch={"max_batch_records": 16, "max_wait_ms": 20},
                               kafka={"max_poll_interval_ms": 10_000})
    topic, index = settings.kafka.input_topics[0], settings.elasticsearch.index
    records = sample_records(2_000, prefix="crash")
    ends = produce(bootstrap, topic, record_messages(records))
    env = subprocess_env(settings)
    command = [sys.executable, "-m", "streaming.cli", "run"]
    written_not_committed = []
    for kill_after in (300, 800, 1_300):
        log_path = tmp_path / f"run-{kill_after}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda n=kill_after: es_count(es_url, index) >= n, 90,
                     f"{kill_after} ES documents (log: {log_path})", interval=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        committed = committed_offsets(bootstrap, settings.kafka.group_id, topic)
        written_not_committed.append(es_count(es_url, index) - sum(max(0, o) for o in committed.values()))
    # At least one kill hit documents written to Elasticsearch whose offsets were not committed yet.
    assert max(written_not_committed) > 0, written_not_committed

    # The last run is stopped by SIGTERM once everything is committed: it finishes, commits and exits cleanly.
    with (tmp_path / "run-final.log").open("w") as log:
        final = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        wait_for(_ends_committed(bootstrap, settings, ends), 90, "all offsets committed after the restarts")
    finally:
        final.send_signal(signal.SIGTERM)
        out, _ = final.communicate(timeout=60)
    assert final.returncode == 0, (tmp_path / "run-final.log").read_text()[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["event"] == "processor_stopped"
    docs = es_docs(es_url, index)
    assert len(docs) == len(records) and set(docs) == {r["id"] for r in records}  # one document per record
    assert all("classification" in doc for doc in docs.values())
    assert _ends_committed(bootstrap, settings, ends)()
    assert {m.key.decode() for m in read_topic(bootstrap, settings.kafka.output_topic)} == {r["id"] for r in records}


def _describe(bootstrap: str, settings, ends: dict[int, int], *procs) -> str:
    """What the members and the group look like (for timeout messages)."""
    members = [{"owned": sorted(p.processor.ownership.partitions()), "paused": p.processor.backpressure.paused,
                "in_flight": p.processor._in_flight, "ready": len(p.processor._ready),
                "stats": p.processor.stats} for p in procs]
    committed = committed_offsets(bootstrap, settings.kafka.group_id, settings.kafka.input_topics[0])
    return f"members {members}; committed {committed}; ends {ends}"


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_elasticsearch_outage_pauses_without_commits_abandons_on_revoke_then_recovers(noida, es_url: str) -> None:
    bootstrap = noida.bootstrap
    with EsFaultProxy(es_url) as proxy:
        # A 10 s poll interval: the 30 s stall must not cost the group membership (no rebalance).
        settings = stream_settings(bootstrap, proxy.url, kafka={"max_poll_interval_ms": 10_000})
        topic, index = settings.kafka.input_topics[0], settings.elasticsearch.index
        first, second = sample_records(300, prefix="before"), sample_records(700, prefix="during", seed=8)
        with running(settings) as proc, HealthServer("127.0.0.1", 0, health=proc.processor.health,
                                                     ready=proc.processor.ready) as health:
            base = f"http://127.0.0.1:{health.port}"
            ends = produce(bootstrap, topic, record_messages(first))
            wait_for(_ends_committed(bootstrap, settings, ends), 60, "the first records committed")
            assert _http_status(base + "/readyz") == 200

            epochs = {tp: proc.processor.ownership.epoch(tp) for tp in proc.processor.ownership.partitions()}
            proxy.fail_all(503)
            ends = produce(bootstrap, topic, record_messages(second))
            before = committed_offsets(bootstrap, settings.kafka.group_id, topic)
            outage_end = time.monotonic() + 30
            refused = False
            while time.monotonic() < outage_end:  # 15 s of 503s, then 15 s of refused connections
                if not refused and time.monotonic() > outage_end - 15:
                    proxy.refuse()
                    refused = True
                assert committed_offsets(bootstrap, settings.kafka.group_id, topic) == before
                assert proc.thread.is_alive() and proc.error is None
                time.sleep(2)
            assert proc.processor.backpressure.paused
            assert _http_status(base + "/healthz") == 200 and _http_status(base + "/readyz") == 503
            assert es_count(es_url, index) == len(first)
            assert {tp: proc.processor.ownership.epoch(tp) for tp in epochs} == epochs  # still the same assignment

            # Still down: a second member joins; the first cannot finish its in-flight batches within
            # revoke_wait_s, so it abandons them uncommitted.
            with running(settings) as other:
                wait_for(lambda: proc.processor.ownership.partitions() and other.processor.ownership.partitions(),
                         60, "the rebalance during the outage")
                wait_for(lambda: proc.processor.stats.abandoned_batches > 0, 30, "the revoked batches abandoned")
                assert committed_offsets(bootstrap, settings.kafka.group_id, topic) == before

                proxy.heal()
                wait_for(_ends_committed(bootstrap, settings, ends), 90, "all records committed after the outage",
                         detail=lambda: _describe(bootstrap, settings, ends, proc, other))
                assert _http_status(base + "/readyz") == 200
                with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                    metrics = response.read().decode()
                assert "corestream_records_classified_total" in metrics and "corestream_consumer_lag" in metrics
            other_stats = other.stats
        stats = proc.stats
    assert stats is not None and other_stats is not None
    assert stats.dead_lettered == 0 and other_stats.dead_lettered == 0
    assert set(es_docs(es_url, index)) == {r["id"] for r in first + second}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_processors_split_partitions_and_hand_over_on_stop(noida, es_url: str) -> None:
    bootstrap = noida.bootstrap
    settings = stream_settings(bootstrap, es_url)
    topic, index = settings.kafka.input_topics[0], settings.elasticsearch.index
    records = sample_records(2_000, prefix="pair")

    def state() -> str:
        owned = [sorted(proc.processor.ownership.partitions()) for proc in (first, second) if proc is not None]
        return f"owned {owned}, committed {committed_offsets(bootstrap, settings.kafka.group_id, topic)}, ends {ends}"

    second = None
    with running(settings) as first:
        ends: dict[int, int] = {}
        wait_for(lambda: len(first.processor.ownership.partitions()) == 3, 30, "the first member to own all")
        ends = produce(bootstrap, topic, record_messages(records[:1_000]))
        with running(settings) as second:
            wait_for(lambda: first.processor.ownership.partitions() and second.processor.ownership.partitions(),
                     60, "both members to own partitions", detail=state)
            split = (first.processor.ownership.partitions(), second.processor.ownership.partitions())
            assert not split[0] & split[1] and len(split[0] | split[1]) == 3
            ends = produce(bootstrap, topic, record_messages(records[1_000:]))
            wait_for(lambda: es_count(es_url, index) >= 1_500, 60, "progress with two members", detail=state)
            first_stats = first.stop()
            wait_for(lambda: len(second.processor.ownership.partitions()) == 3, 60, "the hand-over", detail=state)
            wait_for(_ends_committed(bootstrap, settings, ends), 90, "all records committed", detail=state)
        second_stats = second.stats
    assert first_stats.classified > 0 and second_stats is not None and second_stats.classified > 0
    assert set(es_docs(es_url, index)) == {r["id"] for r in records}
    assert first_stats.classified + second_stats.classified >= len(records)

