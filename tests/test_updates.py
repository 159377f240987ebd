"""Issue 21: a record re-published under the same id ends with the classification of its newest version in every
sink (Elasticsearch, the last output-topic message per key, the last JSONL line per id), with several writes in
flight, after SIGKILLs and replays, and across a rebalance between two members."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.predictor import Predictor
from models.records import parse_record
from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    running,
    sample_records,
    stream_settings,
    tiny_model_dir,
)

MIN_GAP, MAX_GAP = 64, 1_024


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
