"""The record schema (models/records/schema.py): both input shapes, normalisation, and a precise error for each bad
input."""

from __future__ import annotations

import json

import pytest

from models.records.schema import (
    REASON_EMPTY,
    REASON_INVALID_ID,
    REASON_INVALID_JSON,
    REASON_INVALID_RECORD,
    REASON_NOT_UTF8,
    REASON_OVERSIZE,
    ClassificationResult,
    CorenessResult,
    CorenessScores,
    ModelInfo,
    Record,
    RecordError,
    decode_message,
    parse_record,
)

INSPIRE = {
    "control_number": 1234567,
    "titles": [{"source": "arXiv"}, {"title": "  Search for\n dark   matter ", "source": "publisher"}],
    "abstracts": [{"value": "We  search\tfor it.", "source": "arXiv"}],
    "arxiv_eprints": [{"value": "2101.00001", "categories": ["hep-ex", "hep-ph"]},
                      {"value": "2101.00002", "categories": ["hep-ph", "astro-ph.CO"]}],
    "acquisition_source": {"source": "arXiv", "method": "hepcrawl"},
    "core": True,
    "authors": [{"full_name": "Doe, J."}],
}
FLAT = {"id": "2101.00001", "title": "Search for dark matter", "abstract": "We search for it.",
        "categories": "hep-ex  hep-ph", "source": " arXiv ", "coreness": "non-core"}


def test_inspire_shape() -> None:
    record = parse_record(INSPIRE)
    assert record == Record(id="1234567", title="Search for dark matter", abstract="We search for it.",
                            categories=["hep-ex", "hep-ph", "astro-ph.CO"], source="arXiv", coreness="core")
    assert record.text == "Search for dark matter. We search for it."
    assert parse_record({**INSPIRE, "core": False}).coreness == "non_core"
    assert parse_record({**INSPIRE, "coreness": "rejected"}).coreness == "rejected"
    minimal = parse_record({"control_number": 7, "titles": [{"title": "Only a title"}]})
    assert (minimal.abstract, minimal.categories, minimal.source, minimal.coreness) == ("", [], None, None)
    assert minimal.text == "Only a title"


def test_flat_shape() -> None:
    record = parse_record(FLAT)
    assert record == Record(id="2101.00001", title="Search for dark matter", abstract="We search for it.",
                            categories=["hep-ex", "hep-ph"], source="arXiv", coreness="non_core")
    assert parse_record({"id": 5, "abstract": "No title."}).text == "No title."
    assert parse_record({**FLAT, "categories": [" hep-th ", ""], "source": "  ", "coreness": None}).model_dump() == {
        **record.model_dump(), "categories": ["hep-th"], "source": None, "coreness": None}
    assert parse_record({**FLAT, "coreness": "Non Core"}).coreness == "non_core"
    without_label = {key: value for key, value in FLAT.items() if key != "coreness"}
    assert parse_record(without_label | {"core": True}).coreness == "core"


def test_bytes_str_and_mapping_agree() -> None:
    as_json = json.dumps(INSPIRE)
    assert parse_record(as_json.encode()) == parse_record(as_json) == parse_record(INSPIRE)
    assert parse_record(json.dumps(FLAT, ensure_ascii=False).encode("utf-8")) == parse_record(FLAT)
    assert parse_record(json.dumps({"id": "u", "title": "Élan vital ∂"}).encode()).title == "Élan vital ∂"


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        ({"id": "x", "title": " ", "abstract": None}, REASON_INVALID_RECORD,
         "record x: missing title and abstract (at least one is required)"),
        ({"control_number": 9, "titles": [], "abstracts": [{"value": "\n"}]}, REASON_INVALID_RECORD,
         "record 9: missing title and abstract"),
        ({"title": "T"}, REASON_INVALID_RECORD, "missing required field 'id'"),
        ({"id": "", "title": "T"}, REASON_INVALID_ID, "field 'id' is empty"),
        ({"id": "  ", "title": "T"}, REASON_INVALID_ID, "field 'id' has leading or trailing whitespace ('  ')"),
        ({"id": True, "title": "T"}, REASON_INVALID_ID, "field 'id' must be a string or integer, got boolean"),
        ({"id": "x", "title": ["T"]}, REASON_INVALID_RECORD, "field 'title' must be a string, got array"),
        ({"id": "x", "title": "T", "abstract": 3}, REASON_INVALID_RECORD,
         "field 'abstract' must be a string, got number"),
        ({"id": "x", "title": "T", "categories": [1, 2]}, REASON_INVALID_RECORD,
         "field 'categories' must be a list of strings or a space-separated string"),
        ({"id": "x", "title": "T", "source": {"a": 1}}, REASON_INVALID_RECORD,
         "field 'source' must be a string, got object"),
        ({"id": "x", "title": "T", "coreness": "maybe"}, REASON_INVALID_RECORD,
         "field 'coreness' must be true/false or one of core, non-core, rejected; got 'maybe'"),
        ({"control_number": 1, "titles": {"title": "T"}}, REASON_INVALID_RECORD,
         "field 'titles' must be a list of objects, got object"),
        ({"control_number": 1, "titles": ["T"]}, REASON_INVALID_RECORD,
         "field 'titles[0]' must be an object, got string"),
        ({"control_number": 1, "titles": [{"title": "T"}], "arxiv_eprints": [{"categories": 5}]}, REASON_INVALID_RECORD,
         "field 'arxiv_eprints[0].categories' must be a list of strings"),
        ({"control_number": 1, "titles": [{"title": "T"}], "acquisition_source": "arXiv"}, REASON_INVALID_RECORD,
         "field 'acquisition_source' must be an object, got string"),
        ({"id": "x", "title": "bin\x00ary"}, REASON_INVALID_RECORD,
         "field 'title' contains NUL characters (binary data, not text)"),
        ({"control_number": 1, "titles": [{"title": "T"}], "abstracts": [{"value": "a\x00b"}]}, REASON_INVALID_RECORD,
         "field 'abstracts[].value' contains NUL characters"),
        (["not", "an", "object"], REASON_INVALID_RECORD, "record must be a JSON object, got array"),
        (b'"just a string"', REASON_INVALID_RECORD, "record must be a JSON object, got string"),
        (b"null", REASON_INVALID_RECORD, "record must be a JSON object, got null"),
        (b'{"id": "x", "title": ', REASON_INVALID_JSON,
         "message is not JSON: unexpected end of data: line 1 column 22"),
        ("{'id': 1}", REASON_INVALID_JSON,
         "message is not JSON: unexpected character, expected a string key: line 1 column 2"),
        (b'{"id": "x", "title": "caf\xe9"}', REASON_NOT_UTF8, "message is not valid UTF-8 (invalid continuation byte"),
        (b"\xff\xfe{}", REASON_NOT_UTF8, "message is not valid UTF-8 (invalid start byte at byte 0)"),
        (b"", REASON_EMPTY, "message is empty"),
        (b" \n\t ", REASON_EMPTY, "message is empty"),
        (None, REASON_EMPTY, "message is empty"),
    ],
)
def test_bad_input_reason_and_message(data: object, reason: str, message: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_record(data) if data is not None else parse_record_from_kafka(None)
    assert caught.value.reason == reason
    assert caught.value.message.startswith(message), caught.value.message
    assert str(caught.value) == f"{reason}: {caught.value.message}"


def parse_record_from_kafka(value: bytes | None) -> Record:
    """A tombstone (no value) from Kafka goes through decode_message like any message."""
    return parse_record(decode_message(value))


def test_oversize() -> None:
    text = "x" * 600
    with pytest.raises(RecordError) as caught:
        parse_record({"id": "big", "title": text, "abstract": text}, max_text_chars=1000)
    assert caught.value.reason == REASON_OVERSIZE
    assert caught.value.message == "record big: title + abstract is 1200 characters, above the limit of 1000"
    assert parse_record({"id": "ok", "title": text, "abstract": "y" * 400}, max_text_chars=1000).id == "ok"

    message = json.dumps({"id": "big", "title": "t" * 500}).encode()
    with pytest.raises(RecordError) as caught:
        parse_record(message, max_bytes=100)
    assert caught.value.reason == REASON_OVERSIZE
    assert caught.value.message == f"message is {len(message)} bytes, above the limit of 100"
    assert parse_record(message, max_bytes=len(message)).id == "big"


def test_result_serialises() -> None:
    result = ClassificationResult(
        id="1", coreness=CorenessResult(label="core", scores=CorenessScores(core=0.8, non_core=0.15, rejected=0.05)),
        categories=[{"label": "hep-th", "score": 0.9}], model=ModelInfo(name="m", version="v1", arch="bag"),
    )
    data = json.loads(result.model_dump_json())
    assert data["coreness"] == {"label": "core", "scores": {"core": 0.8, "non_core": 0.15, "rejected": 0.05}}
    assert data["categories"] == [{"label": "hep-th", "score": 0.9}]
    assert data["classified_at"].endswith("Z") or "+00:00" in data["classified_at"]
    assert ClassificationResult.model_validate_json(result.model_dump_json()) == result


# ----------------------------------------------------------------------------- input rules at the edge

DEEP = b'{"id": "deep", "title": "T", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
HUGE = b'{"id": "huge", "title": "T", "x": ' + b"7" * 5_000 + b"}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "depth limit exceeded"),
        (DEEP, "depth limit exceeded"),
        (b'{"id": "d", "title": "T", "x": ' + b'{"a": ' * 2_000 + b"1" + b"}" * 2_001, "depth limit exceeded"),
        (HUGE, "number is infinity when parsed as double"),
        (b"-" + b"9" * 5_000, "number is infinity when parsed as double"),
        (b'{"id": "f", "title": "T", "x": 1e999}', "number is infinity when parsed as double"),
        (b'{"id": "n", "title": "T", "x": NaN}', "unexpected character"),
        (b'{"id": "i", "title": "T", "x": -Infinity}', "no digit after sign"),
        (b'\xef\xbb\xbf{"id": "bom", "title": "T"}', "UTF-8 byte order mark (BOM) is not supported"),
        (b'{"id": "t", "title": "T"} trailing', "unexpected content after document"),
        # with a lone surrogate too: the slower reader that accepts those keeps the same limits
        (b'{"id": "s\\ud800", "title": "T", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "depth limit exceeded"),
        (b'{"id": "s\\ud800", "title": "T", "x": ' + b"7" * 5_000 + b"}", "number is infinity when parsed as double"),
        (b'{"id": "s\\ud800", "title": "T", "x": 1e400}', "number is infinity when parsed as double"),
        (b'{"id": "s\\ud800", "title": "T", "x": NaN}', "NaN is not a JSON value"),
        (b'{"id": "s\\ud800", "title": ', "Expecting value"),
    ],
)
def test_json_limits_are_invalid_json(value: bytes, message: str) -> None:
    """Deep nesting, numbers beyond a double, NaN/Infinity, a BOM: ``invalid_json`` with the parser's words (never
    a Python error text)."""
    with pytest.raises(RecordError) as caught:
        parse_record(value)
    assert caught.value.reason == REASON_INVALID_JSON
    assert caught.value.message.startswith("message is not JSON: ") and message in caught.value.message
    assert "Error" not in caught.value.message and "Traceback" not in caught.value.message


def test_numbers_within_limits_are_read() -> None:
    assert decode_message(b'{"x": 12345678901234567890123}') == {"x": 1.2345678901234568e22}
    nested = decode_message(b'{"x": ' + b"[" * 1_000 + b"]" * 1_000 + b"}")["x"]  # 1,000 deep is fine
    for _ in range(999):
        (nested,) = nested
    assert nested == []
    assert parse_record(b'{"id": 18446744073709551615, "title": "T"}').id == "18446744073709551615"
    assert parse_record(b'{"id": -9223372036854775808, "title": "T"}').id == "-9223372036854775808"


@pytest.mark.parametrize(
    ("record_id", "message"),
    [
        (" 5", "has leading or trailing whitespace (' 5')"),
        ("5 ", "has leading or trailing whitespace"),
        ("5\n", "contains '\\n' at character 1"),
        ("\u00a05", "has leading or trailing whitespace"),
        ("a\tb", "contains '\\t' at character 1"),
        ("a\x00b", "contains '\\x00' at character 1"),
        ("a\x7fb", "contains '\\x7f'"),
        ("a\x85b", "contains '\\x85'"),
        ("a\u2028b", "contains '\\u2028'"),
        ("\ud800-0", "contains '\\ud800' at character 0"),
        ("x\udfff", "contains '\\udfff' at character 1"),
        ("é" * 257, "is 514 bytes of UTF-8, above the limit of 512"),
        ("a" * 513, "is 513 bytes of UTF-8, above the limit of 512"),
        (1.5, "must be a string or integer, got a non-integer number"),
        (2**64, "must be a string or integer, got a non-integer number (or an integer beyond 64 bits)"),
        ([1], "must be a string or integer, got array"),
        ({"a": 1}, "must be a string or integer, got object"),
    ],
)
def test_bad_ids_are_refused_with_their_own_reason(record_id: object, message: str) -> None:
    """An id is refused, never repaired, so that two different ids never become one document; the error text is
    always encodable (it quotes with escapes)."""
    for value in (json.dumps({"id": record_id, "title": "T"}).encode(),
                  json.dumps({"control_number": record_id, "titles": [{"title": "T"}]}).encode()):
        with pytest.raises(RecordError) as caught:
            parse_record(value)
        assert caught.value.reason == REASON_INVALID_ID
        assert message in caught.value.message, caught.value.message
        caught.value.message.encode("utf-8")  # never a lone surrogate in the error text


def test_good_ids() -> None:
    """Integers are their decimal text (5 and "5" are the same record); inner spaces and any other Unicode stay;
    512 bytes is allowed; nothing is normalised (Unicode forms are compared as given)."""
    assert parse_record({"id": 5, "title": "T"}).id == parse_record({"id": "5", "title": "T"}).id == "5"
    assert parse_record({"control_number": 1234567, "titles": [{"title": "T"}]}).id == "1234567"
    assert parse_record({"id": "05", "title": "T"}).id == "05"
    assert parse_record({"id": "hep th/9901001 v2", "title": "T"}).id == "hep th/9901001 v2"
    assert parse_record({"id": "é" * 256, "title": "T"}).id == "é" * 256
    assert parse_record({"id": "Cafe\u0301", "title": "T"}).id != parse_record({"id": "Café", "title": "T"}).id
    assert parse_record({"id": "😀", "title": "T"}).id == "😀"
    assert parse_record(b'{"id": "\\ud83d\\ude00", "title": "T"}').id == "😀"  # a surrogate pair is fine


def test_lone_surrogates_outside_the_id_are_replaced() -> None:
    """Title, abstract, source and categories keep the record: a lone surrogate becomes U+FFFD, so nothing
    downstream ever meets text that cannot be encoded."""
    value = (b'{"id": "s1", "title": "Dark \\ud800matter", "abstract": "x\\udfff", "source": "arXiv\\udc00",'
             b' "categories": ["hep-th\\ud800", "gr-qc"]}')
    record = parse_record(value)
    assert (record.title, record.abstract, record.source) == ("Dark \ufffdmatter", "x\ufffd", "arXiv\ufffd")
    assert record.categories == ["hep-th\ufffd", "gr-qc"]
    record.model_dump_json().encode("utf-8")
    inspire = parse_record({"control_number": 1, "titles": [{"title": "\ud800"}], "abstracts": [{"value": "b"}],
                            "arxiv_eprints": [{"categories": "hep-ex \udfff"}]})
    assert (inspire.title, inspire.categories) == ("\ufffd", ["hep-ex", "\ufffd"])
    with pytest.raises(RecordError) as caught:
        parse_record({"id": "c", "title": "T", "coreness": "\ud800" * 100})
    assert caught.value.reason == REASON_INVALID_RECORD and "'\\ud800" in caught.value.message
    assert len(caught.value.message) < 400  # a short quotation
    with pytest.raises(RecordError) as caught:  # a Python str holding one (not from JSON text): not UTF-8
        parse_record('{"id": "\ud800", "title": "T"}')
    assert caught.value.reason == REASON_NOT_UTF8
