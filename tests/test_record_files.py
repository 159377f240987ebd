"""models.records.files: gzip by suffix or magic, numbered lines, bounded lines, skip counts by reason code."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from models.records.files import GZIP_ERRORS, SkipCounts, count_lines, numbered_lines, open_text
from models.records.schema import DETAIL_NO_TEXT, REASON_INVALID_RECORD, RecordError, parse_record


def test_gzip_is_read_by_suffix_or_magic(tmp_path: Path) -> None:
    data = b'{"id": "1"}\n\n{"id": "2"}'
    named = tmp_path / "a.jsonl.gz"
    named.write_bytes(gzip.compress(data))
    unnamed = tmp_path / "b.jsonl"  # gzip content without the suffix
    unnamed.write_bytes(gzip.compress(data))
    plain = tmp_path / "c.jsonl"
    plain.write_bytes(data)
    expected = [(1, b'{"id": "1"}\n'), (2, b"\n"), (3, b'{"id": "2"}')]
    for path in (named, unnamed, plain):
        assert list(numbered_lines(path)) == expected
        assert count_lines(path) == 3
        with open_text(path) as handle:
            assert handle.read() == data.decode()


def test_bounded_lines_report_long_lines_as_their_length(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"short\n" + b"x" * 100 + b"\nend")
    assert list(numbered_lines(path, max_bytes=10)) == [(1, b"short"), (2, 100), (3, b"end")]


def test_truncated_gzip_raises_a_gzip_error(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": "1"}\n' * 1000)[:-20])
    with pytest.raises(GZIP_ERRORS):
        list(numbered_lines(path))


def test_written_gz_file_is_compressed(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.gz"
    with open_text(path, "w") as sink:
        sink.write("{}\n")
    assert gzip.decompress(path.read_bytes()) == b"{}\n"


def test_skip_counts_keep_reasons_and_first_examples() -> None:
    skipped = SkipCounts()
    for number in range(1, 8):
        skipped.skip("invalid_json" if number % 2 else "not_utf8", f"line {number}", "bad")
    assert skipped == {"invalid_json": 4, "not_utf8": 3}
    assert skipped.examples == [f"line {n}: bad" for n in range(1, 6)]
    assert skipped.summary() == "invalid_json: 4, not_utf8: 3"
    assert SkipCounts().summary() == "none"


def test_missing_text_has_its_own_detail_code() -> None:
    with pytest.raises(RecordError) as caught:
        parse_record({"id": "1", "title": "", "abstract": ""})
    assert caught.value.reason == REASON_INVALID_RECORD and caught.value.detail == DETAIL_NO_TEXT
    with pytest.raises(RecordError) as caught:
        parse_record({"id": "1", "title": 5})
    assert caught.value.detail is None
