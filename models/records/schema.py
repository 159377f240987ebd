"""Record and result schemas.

Two input shapes are accepted and normalised to one :class:`Record`:

* INSPIRE-style literature records: ``control_number``, ``titles[].title``, ``abstracts[].value``,
  ``arxiv_eprints[].categories``, ``acquisition_source.source``, ``core`` (all but a title or
  abstract optional);
* flat records: ``id``, ``title``, ``abstract``, optional ``categories``, ``source``, ``coreness``;

either may carry its own version (``updated``/``_updated``, an arXiv ``version``/``versions``:
:mod:`models.records.version`), which keeps a replayed older version from overwriting a newer one.

Bad input raises :class:`RecordError`, whose ``reason`` is a short machine-readable code (used for the
dead-letter topic and metrics) and whose message says precisely what is wrong. Error messages never quote
input verbatim where it could hold characters that cannot be encoded (lone surrogates): they quote with
``repr``-style escapes or not at all.

Input rules (docs/sinks-and-ops.md, "Input rules"): JSON as orjson reads it (RFC 8259; nesting at most 1024
deep; numbers within double range; no NaN/Infinity; no byte order mark), ids checked by :func:`_record_id`,
lone surrogates replaced by U+FFFD in every text field but the id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from models.records.version import record_version

CORENESS_LABELS: tuple[str, ...] = ("core", "non_core", "rejected")
CorenessLabel = Literal["core", "non_core", "rejected"]
DEFAULT_MAX_TEXT_CHARS = 100_000

# Reason codes for rejected input (dead-letter header ``reason`` and metric label).
REASON_EMPTY = "empty_message"
REASON_NOT_UTF8 = "not_utf8"
REASON_INVALID_JSON = "invalid_json"
REASON_INVALID_RECORD = "invalid_record"
REASON_OVERSIZE = "oversize"
REASON_INVALID_ID = "invalid_id"
# A finer code within a reason (RecordError.detail), for readers that tell these cases apart.
DETAIL_NO_TEXT = "no_text"  # invalid_record: neither title nor abstract

MAX_ID_BYTES = 512  # Elasticsearch's limit for a document _id
# Refused in ids: C0 and C1 control characters, DEL, the line and paragraph separators, lone surrogates.
_ID_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_OTHER_ASCII_WHITESPACE = bytes(c for c in range(128) if chr(c).isspace() and c != 32)  # \t\n\v\f\r, \x1c-\x1f


class RecordError(ValueError):
    """Input that cannot become a :class:`Record`."""

    def __init__(self, reason: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Record(BaseModel):
    """One paper, normalised: what the models read."""

    id: str
    title: str
    abstract: str
    categories: list[str] = Field(default_factory=list)
    source: str | None = None
    coreness: CorenessLabel | None = None  # a known label (training data), if any
    version: int | None = None  # the record's own version, if it carries one (models/records/version.py)

    @property
    def text(self) -> str:
        """The model input: title and abstract."""
        return f"{self.title}. {self.abstract}" if self.title and self.abstract else self.title or self.abstract


class CorenessScores(BaseModel):
    core: float
    non_core: float
    rejected: float


class CorenessResult(BaseModel):
    label: CorenessLabel
    scores: CorenessScores


class CategoryScore(BaseModel):
    label: str
    score: float


class ModelInfo(BaseModel):
    name: str
    version: str
    arch: str


class ClassificationResult(BaseModel):
    """What the classifier says about one record."""

    id: str
    coreness: CorenessResult
    categories: list[CategoryScore]  # above their thresholds, highest score first
    model: ModelInfo
    classified_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    record_version: int | None = None  # the classified record's own version (Record.version), if any

    @cached_property
    def json_bytes(self) -> bytes:
        """The result as UTF-8 JSON, serialised once for every sink (setting a field serialises it anew);
        ``ValueError`` when it cannot be (e.g. a lone surrogate in the id)."""
        return self.model_dump_json().encode("utf-8")

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.pop("json_bytes", None)
        super().__setattr__(name, value)


# --------------------------------------------------------------------------- parsing


def decode_message(value: bytes | None, max_bytes: int | None = None) -> Any:
    """Bytes from Kafka -> JSON value, or :class:`RecordError`."""
    if not value or value.isspace():
        raise RecordError(REASON_EMPTY, "message is empty")
    if max_bytes is not None and len(value) > max_bytes:
        raise RecordError(REASON_OVERSIZE, f"message is {len(value)} bytes, above the limit of {max_bytes}")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        error = exc
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(REASON_NOT_UTF8, f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if "surrogate" in error.msg:
        return _loads_with_lone_surrogates(text, error)
    raise RecordError(REASON_INVALID_JSON, f"message is not JSON: {error}") from None


def _loads_with_lone_surrogates(text: str, error: orjson.JSONDecodeError) -> Any:
    """JSON whose strings hold an escaped lone surrogate (``"\\ud800"``): grammatical JSON, but not Unicode, so
    orjson refuses it. The standard library reads it (the record rules then refuse such an id and replace the
    surrogate elsewhere) under the fast path's limits: depth, finite numbers, integers as orjson reads them."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int_as_orjson)
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg}: line {exc.lineno} column {exc.colno} (char {exc.pos})"
    except RecursionError:
        problem = "depth limit exceeded"
    except ValueError as exc:
        problem = str(exc)
    raise RecordError(REASON_INVALID_JSON, f"message is not JSON: {problem}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number is infinity when parsed as double")
    return value


def _int_as_orjson(text: str) -> int | float:
    """Integers beyond 64 bits become doubles, as orjson reads them."""
    if len(text) > 21:  # not below -2**63 nor above 2**64: don't convert thousands of digits
        return _finite_float(text)
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def parse_record(
    data: bytes | str | Mapping[str, Any],
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_bytes: int | None = None,
) -> Record:
    """Validate and normalise one record of either shape."""
    if type(data) is bytes:  # the hot path (Kafka values, backfill lines): no conversion
        data = decode_message(data, max_bytes)
    elif isinstance(data, bytes | bytearray):
        data = decode_message(bytes(data), max_bytes)
    elif isinstance(data, str):
        data = decode_message(data.encode("utf-8", "surrogatepass"), max_bytes)  # a lone surrogate: not_utf8
    if type(data) is not dict and not isinstance(data, Mapping):
        raise RecordError(REASON_INVALID_RECORD, f"record must be a JSON object, got {_json_type(data)}")
    record = _from_inspire(data) if _is_inspire(data) else _from_flat(data)
    size = len(record.title) + len(record.abstract)
    if size > max_text_chars:
        raise RecordError(
            REASON_OVERSIZE,
            f"record {record.id}: title + abstract is {size} characters, above the limit of {max_text_chars}",
        )
    return record


def _is_inspire(data: Mapping[str, Any]) -> bool:
    return "control_number" in data or "titles" in data or "abstracts" in data or "arxiv_eprints" in data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _invalid(message: str, detail: str | None = None) -> RecordError:
    return RecordError(REASON_INVALID_RECORD, message, detail)


def _invalid_id(message: str) -> RecordError:
    return RecordError(REASON_INVALID_ID, message)


def _record_id(value: Any, field: str) -> str:
    """The record's id: a string, or an integer meaning its decimal text (``5`` and ``"5"`` are one record).

    Refused, never repaired (two ids that differ must not silently become one document): empty ids, leading or
    trailing whitespace, control characters, line/paragraph separators, lone surrogates, more than
    :data:`MAX_ID_BYTES` bytes of UTF-8."""
    if value is None:  # a missing field, like any other: invalid_record
        raise _invalid(f"missing required field '{field}'")
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = "a non-integer number (or an integer beyond 64 bits)" if isinstance(value, float) else _json_type(value)
        raise _invalid_id(f"field '{field}' must be a string or integer, got {kind}")
    text = value if isinstance(value, str) else str(value)
    if not text:
        raise _invalid_id(f"field '{field}' is empty")
    if not text.isascii() or not text.isprintable():
        bad = _ID_FORBIDDEN.search(text)
        if bad is not None:
            raise _invalid_id(f"field '{field}' contains {ascii(bad.group())} at character {bad.start()} "
                              "(control characters, line separators and lone surrogates are not allowed in ids)")
    if text != text.strip():
        raise _invalid_id(f"field '{field}' has leading or trailing whitespace ({_preview(text)})")
    size = len(text.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise _invalid_id(f"field '{field}' is {size} bytes of UTF-8, above the limit of {MAX_ID_BYTES}")
    return text


def _preview(text: str, limit: int = 40) -> str:
    """A short, always-encodable quotation of input text."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def _valid_unicode(value: str) -> str:
    """Lone surrogates (from ``"\\ud800"`` escapes) replaced by U+FFFD: such text cannot be encoded."""
    return value if value.isascii() or _SURROGATE.search(value) is None else _SURROGATE.sub("\ufffd", value)


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"field '{field}' must be a string, got {_json_type(value)}")
    if "\x00" in value:
        raise _invalid(f"field '{field}' contains NUL characters (binary data, not text)")
    if _single_spaced(value):
        return _valid_unicode(value)
    return " ".join(_valid_unicode(value).split())


def _single_spaced(value: str) -> bool:
    """Whether ``value`` is already whitespace-normalised: no leading or trailing space, no two in a row, no other
    whitespace. Two C scans instead of splitting into words and joining them again (for an abstract ~7 against
    ~11 us, measured with ``isprintable`` on a loaded host): ASCII text is searched as bytes for the other ASCII
    whitespace, other text by ``isprintable`` (every whitespace character but the ASCII space is unprintable)."""
    if value[:1] == " " or value[-1:] == " " or "  " in value:
        return False
    if value.isascii():
        raw = value.encode("ascii")
        return len(raw.translate(None, _OTHER_ASCII_WHITESPACE)) == len(raw)
    return value.isprintable()


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # arXiv snapshot style: "hep-th gr-qc"
        return _valid_unicode(value).split()
    if isinstance(value, list):
        items = []
        for item in value:
            if type(item) is not str:
                break
            if item := item.strip():
                items.append(item if item.isascii() else _valid_unicode(item))
        else:
            return items
    raise _invalid(f"field '{field}' must be a list of strings or a space-separated string")


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"field '{field}' must be a string, got {_json_type(value)}")
    return _valid_unicode(value.strip()) or None


def _coreness(value: Any, field: str) -> CorenessLabel | None:
    """``core`` may be a bool (INSPIRE) or a label; ``non-core`` and ``non_core`` are the same label."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "core" if value else "non_core"
    if isinstance(value, str):
        label = value.strip().lower().replace("-", "_").replace(" ", "_")
        if label in CORENESS_LABELS:
            return label  # type: ignore[return-value]
    got = _preview(value) if isinstance(value, str) else _json_type(value)
    raise _invalid(f"field '{field}' must be true/false or one of core, non-core, rejected; got {got}")


def _require_text(record_id: str, title: str, abstract: str) -> None:
    if not title and not abstract:
        raise _invalid(f"record {record_id}: missing title and abstract (at least one is required)", DETAIL_NO_TEXT)


def _first(items: Any, key: str, field: str) -> Any:
    if items is None:
        return None
    if not isinstance(items, list):
        raise _invalid(f"field '{field}' must be a list of objects, got {_json_type(items)}")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _invalid(f"field '{field}[{index}]' must be an object, got {_json_type(item)}")
        if item.get(key) is not None:
            return item[key]
    return None


def _from_inspire(data: Mapping[str, Any]) -> Record:
    record_id = _record_id(data.get("control_number", data.get("id")), "control_number")
    title = _text(_first(data.get("titles"), "title", "titles"), "titles[].title")
    abstract = _text(_first(data.get("abstracts"), "value", "abstracts"), "abstracts[].value")
    _require_text(record_id, title, abstract)
    categories: list[str] = []
    eprints = data.get("arxiv_eprints")
    if eprints is not None:
        if not isinstance(eprints, list):
            raise _invalid(f"field 'arxiv_eprints' must be a list of objects, got {_json_type(eprints)}")
        for index, eprint in enumerate(eprints):
            if not isinstance(eprint, Mapping):
                raise _invalid(f"field 'arxiv_eprints[{index}]' must be an object, got {_json_type(eprint)}")
            for cat in _string_list(eprint.get("categories"), f"arxiv_eprints[{index}].categories"):
                if cat not in categories:
                    categories.append(cat)
    acquisition = data.get("acquisition_source")
    if acquisition is not None and not isinstance(acquisition, Mapping):
        raise _invalid(f"field 'acquisition_source' must be an object, got {_json_type(acquisition)}")
    source = _optional_str((acquisition or {}).get("source"), "acquisition_source.source")
    coreness = _coreness(data.get("coreness", data.get("core")), "core")
    return Record(id=record_id, title=title, abstract=abstract, categories=categories, source=source, coreness=coreness,
                  version=_version(data))


def _from_flat(data: Mapping[str, Any]) -> Record:
    record_id = _record_id(data.get("id"), "id")
    title = _text(data.get("title"), "title")
    abstract = _text(data.get("abstract"), "abstract")
    _require_text(record_id, title, abstract)
    return Record(
        id=record_id,
        title=title,
        abstract=abstract,
        categories=_string_list(data.get("categories"), "categories"),
        source=_optional_str(data.get("source"), "source"),
        coreness=_coreness(data.get("coreness", data.get("core")), "coreness"),
        version=_version(data),
    )


def _version(data: Mapping[str, Any]) -> int | None:
    try:
        return record_version(data)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
