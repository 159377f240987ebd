"""Fuzzing the processor's edge on the real brokers: a few hundred generated malformed messages of many kinds,
interleaved with valid records (some of them odd but valid). The run drains, every valid record is classified
(Elasticsearch and the output topic), every malformed message is in the dead-letter topic with its reason, the
offsets are committed to the end: nothing stalls."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable

import pytest

from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    running,
    sample_records,
    stream_settings,
)

MAX_MESSAGE_BYTES = 50_000
MAX_TEXT_CHARS = 5_000
SEED = 20261123


def _record(rng: random.Random, **fields: object) -> bytes:
    return json.dumps({"id": f"x{rng.randrange(10**6)}", "title": "A title", "abstract": "An abstract.",
                       **fields}).encode()


def _raw(rng: random.Random, id_json: str, rest: str = '"title": "T", "abstract": "A"') -> bytes:
    return f'{{"id": {id_json}, {rest}}}'.encode()


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([1_100, 5_000, 10_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"id": "d", "title": "T", "x": ' + b'{"a": ' * depth + b"1" + b"}" * (depth + 1)


def _huge_number(rng: random.Random) -> bytes:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.choice([400, 5_000]))).lstrip("0") or "1"
    number = rng.choice([digits, f"-{digits}", f"1e{digits[:6]}", f"{digits}.5"])
    return _raw(rng, rng.choice([json.dumps("ok-id"), number]), f'"title": "T", "n": {number}')


# kind -> (reason, generator). Each generator makes a different malformed message every call.
MALFORMED: dict[str, tuple[str, Callable[[random.Random], bytes | None]]] = {
    "truncated": ("invalid_json", lambda rng: _record(rng)[: rng.randrange(1, 30)]),
    "garbage": ("invalid_json", lambda rng: rng.choice([b"{not json", b"{'id': 1}", b'{"id": "a",}', b"}{", b"tru",
                                                        b'{"id": "a" "title": "b"}', b'"unterminated'])),
    "trailing": ("invalid_json", lambda rng: _record(rng) + rng.choice([b" x", b"{}", b","])),
    "deep": ("invalid_json", _deep),
    "huge_number": ("invalid_json", _huge_number),
    "nan": ("invalid_json", lambda rng: _raw(rng, '"n"', f'"title": "T", "x": {rng.choice(["NaN", "Infinity"])}')),
    "bom": ("invalid_json", lambda rng: b"\xef\xbb\xbf" + _record(rng)),
    "surrogate_and_limit": ("invalid_json", lambda rng: _raw(rng, '"s\\ud800"', '"title": "T", "x": 1e999')),
    "id_whitespace": ("invalid_id", lambda rng: _raw(rng, json.dumps(rng.choice([" a", "a ", "\ta", "b\n", " "])))),
    "id_control": ("invalid_id", lambda rng: _raw(rng, json.dumps(f"a{chr(rng.choice([0, 1, 27, 127, 133]))}b"))),
    "id_separator": ("invalid_id", lambda rng: _raw(rng, json.dumps("a\u2028b"))),
    "id_surrogate": ("invalid_id", lambda rng: _raw(rng, rng.choice(['"\\ud800-0"', '"\\udfff-0"', '"a\\udbff"']))),
    "id_too_long": ("invalid_id", lambda rng: _raw(rng, json.dumps(rng.choice(["a", "é", "😀"]) * 600))),
    "id_type": ("invalid_id", lambda rng: _raw(rng, rng.choice(["true", "1.5", "[1]", '{"a": 1}', '""',
                                                                "18446744073709551616"]))),
    "id_missing": ("invalid_record", lambda rng: b'{"title": "T", "abstract": "A"}'),
    "wrong_types": ("invalid_record", lambda rng: _record(rng, **rng.choice([
        {"title": 5}, {"abstract": ["x"]}, {"categories": {"a": 1}}, {"categories": [1]}, {"source": {"a": 1}},
        {"coreness": "maybe"}, {"coreness": "\ud800" * 50}]))),
    "no_text": ("invalid_record", lambda rng: _record(rng, title=" ", abstract=None)),
    "nul_text": ("invalid_record", lambda rng: _record(rng, title="bin\x00ary")),
    "not_object": ("invalid_record", lambda rng: rng.choice([b"[1, 2]", b'"text"', b"null", b"42", b"true"])),
    "inspire_bad": ("invalid_record", lambda rng: json.dumps(rng.choice([
        {"control_number": 1, "titles": "T"}, {"control_number": 2, "titles": ["T"]},
        {"control_number": 3, "titles": [{"title": "T"}], "acquisition_source": "x"}])).encode()),
    "oversize_message": ("oversize", lambda rng: _record(rng, title="t" * (MAX_MESSAGE_BYTES + 10))),
    "oversize_text": ("oversize", lambda rng: _record(rng, abstract="a " * MAX_TEXT_CHARS)),
    "empty": ("empty_message", lambda rng: rng.choice([b"", b"   ", b"\n\t", None])),
    "binary": ("not_utf8", lambda rng: b"\xff" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))),
    "utf8_surrogate": ("not_utf8", lambda rng: b'{"id": "\xed\xa0\x80", "title": "T"}'),
}


def odd_valid_records(n: int) -> list[tuple[str, bytes]]:
    """Valid records at the edges of the rules: ``(expected id, message value)``."""
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append((str(9_000_000 + i), json.dumps({"id": 9_000_000 + i, "title": "Integer id"}).encode()))
        elif kind == 1:
            rid = f"odd-{i}"
            out.append((rid, f'{{"id": "{rid}", "title": "Lone \\ud800 surrogate", "abstract": "x\\udfff"}}'.encode()))
        elif kind == 2:
            rid = f"odd-{i}-" + "é" * 250  # 512 bytes at most
            out.append((rid, json.dumps({"id": rid, "title": "Long id"}).encode()))
        elif kind == 3:
            rid = f"odd {i} with spaces/and:punctuation"
            out.append((rid, json.dumps({"id": rid, "title": "T", "junk": [[[[{"a": None}]]]] * 3}).encode()))
        elif kind == 4:
            number = 7_000_000 + i
            out.append((str(number), json.dumps({"control_number": number, "titles": [{"title": "INSPIRE"}]}).encode()))
        else:
            rid = f"odd-{i}-😀"
            out.append((rid, json.dumps({"id": rid, "title": "Emoji id", "n": 18446744073709551615}).encode()))
    return out


def fuzz_messages(n_bad: int, n_good: int) -> tuple[list[tuple[bytes, bytes | None]], dict[bytes, str],
                                                     dict[bytes, str]]:
    """Shuffled ``(key, value)`` messages, the expected reason of each bad key, and the expected id of each good."""
    rng = random.Random(SEED)
    kinds = sorted(MALFORMED)
    messages: list[tuple[bytes, bytes | None]] = []
    bad: dict[bytes, str] = {}
    for i in range(n_bad):
        kind = kinds[i % len(kinds)]
        reason, make = MALFORMED[kind]
        key = f"bad-{i}-{kind}".encode()
        messages.append((key, make(rng)))
        bad[key] = reason
    good: dict[bytes, str] = {}
    plain = [(r["id"], json.dumps(r).encode()) for r in sample_records(n_good - n_good // 5, prefix="fz")]
    for i, (rid, value) in enumerate(plain + odd_valid_records(n_good // 5)):
        key = f"good-{i}".encode()
        messages.append((key, value))
        good[key] = rid
    rng.shuffle(messages)
    return messages, bad, good


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzed_input_drains_with_every_message_accounted_for(kafka_bootstrap: str, es_url: str) -> None:
    messages, bad, good = fuzz_messages(n_bad=300, n_good=300)
    settings = stream_settings(kafka_bootstrap, es_url,
                               records={"max_message_bytes": MAX_MESSAGE_BYTES, "max_text_chars": MAX_TEXT_CHARS})
    topic = settings.kafka.input_topics[0]
    ends = produce(kafka_bootstrap, topic, messages)
    assert sum(ends.values()) == len(messages)

    with running(settings, until_drained=True) as proc:
        stats = proc.join(240)

    assert (stats.consumed, stats.classified, stats.dead_lettered) == (len(messages), len(good), len(bad))
    dead = read_topic(kafka_bootstrap, settings.kafka.dlq_topic(topic))
    reasons = {m.key: m.headers["reason"] for m in dead}
    wrong = {key: (reasons.get(key), want) for key, want in bad.items() if reasons.get(key) != want}
    assert not wrong, f"{len(wrong)} malformed messages with a wrong or no dead letter, e.g. {list(wrong.items())[:5]}"
    assert len(dead) == len(bad) and Counter(reasons.values()) == Counter(bad.values())
    values = dict(messages)
    for message in dead:
        original = values[message.key] or b""
        if len(original) > MAX_MESSAGE_BYTES:  # the dead letter keeps what fits the producer's limit
            original = original[:MAX_MESSAGE_BYTES]
        assert (message.value or b"") == original
        assert message.headers["error"] and message.headers["source_topic"] == topic
        assert "Traceback" not in message.headers["error"] and "Error:" not in message.headers["error"]

    want_ids = set(good.values())
    assert len(want_ids) == len(good)
    assert set(es_docs(es_url, settings.elasticsearch.index)) == want_ids
    output = read_topic(kafka_bootstrap, settings.kafka.output_topic)
    assert {m.key.decode() for m in output} == want_ids
    assert all(json.loads(m.value)["id"] == m.key.decode() for m in output)
    assert committed_offsets(kafka_bootstrap, settings.kafka.group_id, topic) == {
        p: ends.get(p, -1001) for p in range(3)}
