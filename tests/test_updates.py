"""Issue 21: a record re-published under the same id ends with the classification of its newest version in every
sink (Elasticsearch, the last output-topic message per key, the last JSONL line per id), with several writes in
flight, after SIGKILLs and replays, and across a rebalance between two members."""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.clients import make_producer
from config.settings import load_settings
from models.inference.predictor import Predictor
from models.records.schema import (
    REASON_INVALID_RECORD,
    ClassificationResult,
    CorenessResult,
    CorenessScores,
    ModelInfo,
    RecordError,
    parse_record,
)
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.pipeline.envelope import Batch, Envelope
from streaming.pipeline.offsets import Ownership
from streaming.pipeline.stages import SinkStage, SinkStopped
from streaming.sinks import JsonlSink
from streaming.sinks.elasticsearch import BulkAnswerMismatch, ElasticsearchSink
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    running,
    sample_records,
    stream_settings,
    subprocess_env,
    tiny_model_dir,
    unique,
    wait_for,
)
from tests.test_sink_failures import batch_of, sink_stage

MIN_GAP, MAX_GAP = 64, 1_024
MODEL = ModelInfo(name="demo", version="7", arch="bag")


# ----------------------------------------------------------------------------- a record's own version

MARCH = (datetime(2026, 3, 1, 12, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize(("fields", "version"), [
    ({}, None),
    ({"updated": "2026-03-01T12:00:00+00:00"}, MARCH),
    ({"_updated": "2026-03-01T13:00:00.000001+01:00"}, MARCH + 1),
    ({"updated": "2026-03-01T12:00:00"}, MARCH),  # no zone: UTC
    ({"updated": "2026-03-01T12:00:00Z", "version": "v9"}, MARCH),  # the update time first
    ({"version": "v3"}, 3), ({"version": "3"}, 3), ({"version": 3}, 3),
    ({"versions": [{"version": "v1", "created": "Mon, 2 Apr 2007"}, {"version": "v2"}]}, 2),
    ({"versions": ["v4", "v1"]}, 4),
])
def test_a_record_carries_its_own_version(fields: dict, version: int | None) -> None:
    flat = {"id": "2101.00001", "title": "T", "abstract": "A"}
    inspire = {"control_number": 7, "titles": [{"title": "T"}]}
    assert parse_record({**flat, **fields}).version == version
    assert parse_record({**inspire, **fields}).version == version


@pytest.mark.parametrize("fields", [
    {"updated": "yesterday"}, {"updated": 1700000000}, {"_updated": ""}, {"version": "v"}, {"version": True},
    {"version": -1}, {"versions": []}, {"versions": [{"created": "x"}]}, {"versions": "v1"},
])
def test_an_unreadable_version_is_invalid_input(fields: dict) -> None:
    with pytest.raises(RecordError) as caught:
        parse_record({"id": "x", "title": "T", **fields})
    assert caught.value.reason == REASON_INVALID_RECORD and next(iter(fields)) in caught.value.message


# ----------------------------------------------------------------------------- the Elasticsearch guard

def result(record_id: str, label: str, version: int | None) -> ClassificationResult:
    scores = {"core": 0.1, "non_core": 0.1, "rejected": 0.1} | {label: 0.8}
    return ClassificationResult(id=record_id, model=MODEL, categories=[], record_version=version,
                                coreness=CorenessResult(label=label, scores=CorenessScores(**scores)))


def test_elasticsearch_never_overwrites_a_newer_version(es_url: str) -> None:
    settings = load_settings(elasticsearch={"url": es_url, "index": unique("guard")})
    sink = ElasticsearchSink(settings)

    def held() -> dict:
        return es_docs(es_url, settings.elasticsearch.index)["a"]["classification"]

    assert sink.write([result("a", "core", 5)]) == []
    assert sink.write([result("a", "rejected", 3)]) == []  # stale: a no-op, and a success (no dead letter)
    assert (held()["coreness"]["label"], held()["record_version"]) == ("core", 5)
    assert sink.write([result("a", "non_core", 3), result("b", "core", 1)]) == []  # in one bulk with a fresh one
    assert (held()["coreness"]["label"], held()["record_version"]) == ("core", 5)
    assert sink.write([result("a", "non_core", 5)]) == []  # the same version classified again: overwritten
    assert held()["coreness"]["label"] == "non_core"
    assert sink.write([result("a", "rejected", None)]) == []  # no version to compare: later in the stream wins
    assert (held()["coreness"]["label"], held()["record_version"]) == ("rejected", None)
    assert sink.write([result("a", "core", 2)]) == []
    assert (held()["coreness"]["label"], held()["record_version"]) == ("core", 2)
    sink.close()


# ----------------------------------------------------------------------------- a bulk answer that miscounts

@pytest.mark.parametrize("by", [-1, 1])
def test_a_bulk_answer_with_another_item_count_is_never_counted_as_written(es_url: str, by: int) -> None:
    with EsFaultProxy(es_url) as proxy:
        sink = ElasticsearchSink(load_settings(elasticsearch={"url": proxy.url, "index": unique("miscount")}))
        proxy.miscount_bulk(1, by)
        with pytest.raises(BulkAnswerMismatch, match=f"answered {8 + by} items to a bulk request of 8 actions"):
            sink.write([result(f"r{i}", "core", None) for i in range(8)])
        assert sink.write([result(f"r{i}", "core", None) for i in range(8)]) == []  # answered right: written
        sink.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_miscounted_bulk_answer_is_isolated_and_retried_by_the_unknown_error_rule(tansu, es_url: str) -> None:
    with EsFaultProxy(es_url) as proxy:
        settings = stream_settings(tansu.bootstrap, proxy.url)
        topic, index = settings.kafka.input_topics[0], settings.elasticsearch.index
        es = ElasticsearchSink(settings)
        stage = sink_stage([es], DeadLetterWriter(make_producer(settings), settings), topic=topic)
        results = [result(f"m{i}", "core", None) for i in range(16)]
        proxy.miscount_bulk(1)  # once: the halves are answered right
        stage.handle(batch_of(topic, results))
        assert (stage.classified, stage.dead_lettered) == (16, 0)
        assert proxy.count("_bulk") == 3 and set(es_docs(es_url, index)) == {r.id for r in results}

        proxy.miscount_bulk(1_000)  # always: every record fails alone, the sink is broken
        with pytest.raises(SinkStopped, match="failed on every record"):
            stage.handle(batch_of(topic, [result(f"n{i}", "core", None) for i in range(4)]))
        assert not set(es_docs(es_url, index)) - {r.id for r in results} - {f"n{i}" for i in range(4)}
        assert stage.classified == 16


# ----------------------------------------------------------------------------- ordering in the sink stage

class GatedSink:
    """Records the start and end of every write; the first write holding ``gate_id`` waits for ``release``."""

    name, stores = "gated", True

    def __init__(self, gate_id: str) -> None:
        self.gate_id, self.release, self.calls = gate_id, threading.Event(), []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def write(self, results):
        ids = [r.id for r in results]
        with self._lock:
            gated = self.gate_id in ids and not self.started.is_set()
            self.calls.append(("start", ids))
        if gated:
            self.started.set()
            assert self.release.wait(30)
        with self._lock:
            self.calls.append(("end", ids))
        return []

    def check(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_write_waits_for_earlier_writes_of_the_same_id_and_only_for_those(tansu) -> None:
    settings = load_settings(kafka={"bootstrap_servers": tansu.bootstrap})  # no dead letters here
    sink, ownership = GatedSink("a"), Ownership()
    ownership.assign([("in", 0)])
    inbox, outbox = queue.Queue(), queue.Queue()
    stage = SinkStage([sink], DeadLetterWriter(make_producer(settings), settings), ownership, backoff_s=0.1,
                      max_backoff_s=0.5, dlq_timeout_s=5, max_dead_letter_bytes=1_000_000,
                      on_outage=lambda down: None, group_records=1, max_in_flight=4, inbox=inbox, outbox=outbox,
                      abort=threading.Event(), on_crash=print, on_progress=lambda: None)
    offsets = iter(range(100))

    def batch(seq: int, *ids: str) -> Batch:
        return Batch(seq, [Envelope(topic="in", partition=0, offset=next(offsets), epoch=1, key=None, value=b"{}",
                                    timestamp_s=None, result=result(i, "core", None)) for i in ids])

    stage.start()
    inbox.put(batch(1, "a", "b"))
    assert sink.started.wait(10)
    inbox.put(batch(2, "c", "d"))  # disjoint: written while the first write hangs
    wait_for(lambda: ("end", ["c", "d"]) in sink.calls, 10, "the disjoint write")
    inbox.put(batch(3, "x", "a", "a"))  # shares "a": waits for the first write; one write of "a" in it
    wait_for(lambda: stage.writing([("in", 0)]) and len(stage._in_flight) == 3, 10, "the third write in flight")
    assert ("start", ["x", "a"]) not in sink.calls
    sink.release.set()
    inbox.put(None)
    done = [outbox.get(timeout=10) for _ in range(4)]
    stage.join(10)
    assert [b.seq for b in done[:3]] == [1, 2, 3] and done[3] is None  # passed on in order
    assert sink.calls == [("start", ["a", "b"]), ("start", ["c", "d"]), ("end", ["c", "d"]), ("end", ["a", "b"]),
                          ("start", ["x", "a"]), ("end", ["x", "a"])]
    assert stage.classified == 7 and not stage.writing([("in", 0)])


def test_no_attempt_starts_for_results_of_an_ended_assignment(tansu) -> None:
    settings = load_settings(kafka={"bootstrap_servers": tansu.bootstrap})  # no dead letters here
    sink, ownership = GatedSink("never"), Ownership()
    ownership.assign([("in", 0), ("in", 1)])
    stage = SinkStage([sink], DeadLetterWriter(make_producer(settings), settings), ownership, backoff_s=0.1,
                      max_backoff_s=0.5, dlq_timeout_s=5, max_dead_letter_bytes=1_000_000,
                      on_outage=lambda down: None, inbox=None, outbox=None, abort=threading.Event(),
                      on_crash=print, on_progress=lambda: None)

    def batch(*items: tuple[str, int, int]) -> Batch:  # (id, partition, epoch)
        return Batch(1, [Envelope(topic="in", partition=p, offset=i, epoch=e, key=None, value=b"{}",
                                  timestamp_s=None, result=result(r, "core", None)) for i, (r, p, e) in
                         enumerate(items)])

    epoch0, epoch1 = ownership.epoch(("in", 0)), ownership.epoch(("in", 1))
    ownership.revoke([("in", 0)])
    first = batch(("a", 0, epoch0), ("b", 1, epoch1))
    stage.handle(first)  # partition 0 is gone: only b is written
    assert sink.calls[-1] == ("end", ["b"]) and stage.classified == 1 and not first.abandoned
    ownership.assign([("in", 0)])  # back, under a new epoch: what was read under the old one is still stale
    stale = batch(("c", 0, epoch0), ("c", 0, ownership.epoch(("in", 0))), ("d", 0, epoch0))
    stage.handle(stale)  # c's newest result was read under the new epoch: written; d's was not
    assert sink.calls[-1] == ("end", ["c"]) and stage.classified == 3
    ownership.revoke([("in", 0), ("in", 1)])
    gone = batch(("e", 0, epoch0), ("f", 1, epoch1))
    stage.handle(gone)
    assert gone.abandoned and len(sink.calls) == 4 and stage.classified == 3


# ----------------------------------------------------------------------------- end to end


@dataclass
class Updates:
    """Ids published twice: ``messages`` in publishing order; the scores each version is expected to get."""

    messages: list[tuple[bytes, bytes]]
    gaps: list[int]
    v1: dict[str, list[float]]  # id -> coreness scores of version 1
    v2: dict[str, list[float]]


def published_twice(n: int, prefix: str, seed: int = 21) -> Updates:
    """``n`` ids, each published as v1 then as v2 (another title and abstract) 64 to 1,024 messages later; even ids
    carry their own update time (INSPIRE ``updated``), odd ids none."""
    rng = random.Random(seed)
    texts = sample_records(2 * n, prefix=prefix, seed=seed)
    first = {f"{prefix}-{i}": texts[i] for i in range(n)}
    second = {f"{prefix}-{i}": texts[n + i] for i in range(n)}

    def message(record_id: str, text: dict, version: int) -> tuple[bytes, bytes]:
        body = {"id": record_id, "title": text["title"], "abstract": text["abstract"]}
        if int(record_id.rsplit("-", 1)[1]) % 2 == 0:
            body["updated"] = f"2026-0{version}-01T12:00:00.{int(record_id.rsplit('-', 1)[1]):06d}+00:00"
        return record_id.encode(), json.dumps(body).encode()

    order: list[tuple[str, int]] = []  # (id, version)
    due: list[tuple[int, str]] = []  # (position from which v2 may come, id)
    ids = iter(first)
    position = 0
    remaining = n
    while remaining or due:
        due.sort()
        if due and (due[0][0] <= position or not remaining):
            _, record_id = due.pop(0)
            order.append((record_id, 2))
        else:
            record_id = next(ids)
            remaining -= 1
            order.append((record_id, 1))
            due.append((position + rng.randint(MIN_GAP, MAX_GAP - 100), record_id))
        position += 1
    at = {(record_id, version): i for i, (record_id, version) in enumerate(order)}
    gaps = [at[(record_id, 2)] - at[(record_id, 1)] for record_id in first]
    messages = [message(record_id, (first if version == 1 else second)[record_id], version)
                for record_id, version in order]
    predictor = Predictor.from_checkpoint(tiny_model_dir(), device="cpu")

    def scores(texts: dict[str, dict]) -> dict[str, list[float]]:
        results = predictor.predict_batch([parse_record({**v, "id": k}) for k, v in texts.items()])
        return {r.id: [r.coreness.scores.core, r.coreness.scores.non_core, r.coreness.scores.rejected]
                for r in results}

    return Updates(messages, gaps, scores(first), scores(second))


def _version(updates: Updates, record_id: str, classification: dict) -> str:
    """Which version ``classification`` is: the one whose expected scores are closest (``?`` if they tie)."""
    got = classification["coreness"]["scores"]
    got = [got["core"], got["non_core"], got["rejected"]]
    d1 = sum(abs(a - b) for a, b in zip(got, updates.v1[record_id], strict=True))
    d2 = sum(abs(a - b) for a, b in zip(got, updates.v2[record_id], strict=True))
    return "?" if abs(d1 - d2) < 1e-4 else ("v1" if d1 < d2 else "v2")


def sink_versions(updates: Updates, settings, es_url: str, jsonl: Path) -> dict[str, Counter]:
    """Per sink, how many ids end with v1 (stale), v2, an undecidable score (?) or nothing (missing)."""
    docs = es_docs(es_url, settings.elasticsearch.index)
    last_message: dict[str, dict] = {}
    for m in sorted(read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic),
                    key=lambda m: (m.partition, m.offset)):
        last_message[m.key.decode()] = json.loads(m.value)
    last_line: dict[str, dict] = {}
    for line in jsonl.read_text().splitlines():
        result = json.loads(line)
        last_line[result["id"]] = result
    found = {"elasticsearch": {k: d["classification"] for k, d in docs.items() if "classification" in d},
             "output_topic": last_message, "jsonl": last_line}
    return {sink: Counter(_version(updates, i, held[i]) if i in held else "missing" for i in updates.v1)
            for sink, held in found.items()}


def assert_newest_everywhere(counts: dict[str, Counter], n: int) -> None:
    for sink, count in counts.items():
        assert count["v2"] + count["?"] == n and count["?"] < n // 20, (sink, dict(count))


def _ends_committed(settings, ends: dict[int, int]):
    topic = settings.kafka.input_topics[0]
    return lambda: committed_offsets(settings.kafka.bootstrap_servers, settings.kafka.group_id, topic) == {
        p: ends.get(p, -1001) for p in range(3)}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("max_in_flight", [2, 4])
def test_newest_version_wins_in_every_sink(noida, es_url: str, tmp_path, max_in_flight: int) -> None:
    n = 1_500
    updates = published_twice(n, prefix=f"upd{max_in_flight}")
    assert min(updates.gaps) >= MIN_GAP and max(updates.gaps) <= MAX_GAP
    jsonl = tmp_path / "results.jsonl"
    settings = stream_settings(noida.bootstrap, es_url, sinks={"jsonl_path": str(jsonl),
                                                               "max_in_flight": max_in_flight})
    ends = produce(noida.bootstrap, settings.kafka.input_topics[0], updates.messages)
    with running(settings, until_drained=True) as proc:
        stats = proc.join(150)
    assert stats.dead_lettered == 0 and stats.classified == 2 * n
    assert _ends_committed(settings, ends)()
    counts = sink_versions(updates, settings, es_url, jsonl)
    print({sink: dict(count) for sink, count in counts.items()})
    assert_newest_everywhere(counts, n)
    docs = es_docs(es_url, settings.elasticsearch.index)
    held = {k: d["classification"]["record_version"] for k, d in docs.items()}
    assert all((held[k] is not None) == (int(k.rsplit("-", 1)[1]) % 2 == 0) for k in updates.v1)  # even: versioned


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_newest_version_wins_after_five_sigkills_and_replays(tansu, es_url: str, tmp_path) -> None:
    # Tansu: noida-db never expires a killed member, so its group would not rebalance after a SIGKILL.
    n = 1_500
    updates = published_twice(n, prefix="kill")
    jsonl = tmp_path / "results.jsonl"
    settings = stream_settings(tansu.bootstrap, es_url, batch={"max_batch_records": 16, "max_wait_ms": 20},
                               kafka={"max_poll_interval_ms": 10_000},
                               sinks={"jsonl_path": str(jsonl), "max_in_flight": 4})
    ends = produce(tansu.bootstrap, settings.kafka.input_topics[0], updates.messages)
    env = subprocess_env(settings)
    command = [sys.executable, "-m", "streaming.cli", "run"]

    def lines() -> int:
        return jsonl.read_bytes().count(b"\n") if jsonl.exists() else 0

    for kill_after in (300, 800, 1_300, 1_800, 2_300):
        log_path = tmp_path / f"run-{kill_after}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda k=kill_after: lines() >= k, 90, f"{kill_after} JSONL lines (log: {log_path})",
                     interval=0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    with (tmp_path / "run-final.log").open("w") as log:
        final = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(_ends_committed(settings, ends), 120, "all offsets committed after the restarts")
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(60)
    assert final.returncode == 0, (tmp_path / "run-final.log").read_text()[-3000:]
    # The kills hit written work whose offsets were not committed yet: it was replayed, so some version of a
    # record was written twice (not a line count: both versions of an id in one write leave one line).
    written = Counter((r["id"], r["record_version"]) for r in map(json.loads, jsonl.read_text().splitlines()))
    assert max(written.values()) > 1, f"nothing replayed in {lines()} JSONL lines"
    counts = sink_versions(updates, settings, es_url, jsonl)
    print({sink: dict(count) for sink, count in counts.items()}, "JSONL lines", lines())
    assert_newest_everywhere(counts, n)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_newest_version_wins_across_a_rebalance_between_two_members(noida, es_url: str, tmp_path) -> None:
    n = 1_500
    updates = published_twice(n, prefix="pair")
    jsonl = tmp_path / "results.jsonl"  # one file for both members: its order is the order of their writes
    settings = stream_settings(noida.bootstrap, es_url, batch={"max_batch_records": 16, "max_wait_ms": 20},
                               sinks={"jsonl_path": str(jsonl), "max_in_flight": 4})
    topic = settings.kafka.input_topics[0]
    # Published in 20 chunks, 0.2 s apart: the second member joins after chunk 5 and the first leaves after
    # chunk 12, so ids have their versions written by different members on both sides of each rebalance.
    chunks = [updates.messages[i:i + 150] for i in range(0, len(updates.messages), 150)]
    joined, leaving = threading.Event(), threading.Event()
    ends: dict[int, int] = {}
    published: list[int] = []

    def publish() -> None:
        for i, chunk in enumerate(chunks):
            if i == 5:
                assert joined.wait(60)
            if i == 12:
                assert leaving.wait(60)
            ends.update(produce(noida.bootstrap, topic, chunk))  # later chunks: later offsets
            published.append(i)
            time.sleep(0.2)

    def state() -> str:
        owned = [sorted(p.processor.ownership.partitions()) for p in (first, second)]
        return f"owned {owned}, committed {committed_offsets(noida.bootstrap, settings.kafka.group_id, topic)}"

    publisher = threading.Thread(target=publish, daemon=True)
    with running(settings) as first:
        wait_for(lambda: len(first.processor.ownership.partitions()) == 3, 30, "the first member to own all")
        publisher.start()
        wait_for(lambda: len(published) == 5, 60, "the first chunks")
        with running(settings) as second:  # joins while the first is writing: a rebalance
            wait_for(lambda: first.processor.ownership.partitions() and second.processor.ownership.partitions(),
                     60, "both members to own partitions", detail=state)
            joined.set()
            wait_for(lambda: len(published) == 12, 60, "the middle chunks")
            leaving.set()
            first_stats = first.stop()  # leaves while chunks keep coming: its partitions are handed over
            wait_for(lambda: len(second.processor.ownership.partitions()) == 3, 60, "the hand-over", detail=state)
            publisher.join(60)
            wait_for(_ends_committed(settings, ends), 90, "all records committed", detail=state)
        second_stats = second.stats
    assert len(published) == len(chunks)
    assert first_stats.classified > 0 and second_stats is not None and second_stats.classified > 0
    assert first_stats.dead_lettered == second_stats.dead_lettered == 0
    counts = sink_versions(updates, settings, es_url, jsonl)
    print({sink: dict(count) for sink, count in counts.items()})
    assert_newest_everywhere(counts, n)


def test_jsonl_sink_cuts_a_partial_last_line_left_by_a_kill(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    whole = result("a", "core", 1).model_dump_json()
    path.write_text(whole + "\n" + whole[:25])  # killed half-way through a write
    sink = JsonlSink(path)
    assert sink.write([result("b", "rejected", None)]) == []
    sink.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]
