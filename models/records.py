"""Record and result schemas.

Two input shapes are accepted and normalised to one :class:`Record`:

* INSPIRE-style literature records: ``control_number``, ``titles[].title``, ``abstracts[].value``,
  ``arxiv_eprints[].categories``, ``acquisition_source.source``, ``core`` (all but a title or
  abstract optional);
* flat records: ``id``, ``title``, ``abstract``, optional ``categories``, ``source``, ``coreness``.

Bad input raises :class:`RecordError`, whose ``reason`` is a short machine-readable code (used for the
dead-letter topic and metrics) and whose message says precisely what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

CORENESS_LABELS: tuple[str, ...] = ("core", "non_core", "rejected")
CorenessLabel = Literal["core", "non_core", "rejected"]
DEFAULT_MAX_TEXT_CHARS = 100_000

# Reason codes for rejected input (dead-letter header ``reason`` and metric label).
REASON_EMPTY = "empty_message"
REASON_NOT_UTF8 = "not_utf8"
REASON_INVALID_JSON = "invalid_json"
REASON_INVALID_RECORD = "invalid_record"
REASON_OVERSIZE = "oversize"


class RecordError(ValueError):
    """Input that cannot become a :class:`Record`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

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


# --------------------------------------------------------------------------- parsing


def decode_message(value: bytes | None, max_bytes: int | None = None) -> Any:
    """Bytes from Kafka -> JSON value, or :class:`RecordError`."""
    if value is None or len(value) == 0 or not value.strip():
        raise RecordError(REASON_EMPTY, "message is empty")
    if max_bytes is not None and len(value) > max_bytes:
        raise RecordError(REASON_OVERSIZE, f"message is {len(value)} bytes, above the limit of {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(REASON_NOT_UTF8, f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise RecordError(REASON_INVALID_JSON, f"message is not JSON: {exc.msg} at {where}") from None


def parse_record(
    data: bytes | str | Mapping[str, Any],
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_bytes: int | None = None,
) -> Record:
    """Validate and normalise one record of either shape."""
    if isinstance(data, bytes | bytearray):
        data = decode_message(bytes(data), max_bytes)
    elif isinstance(data, str):
        data = decode_message(data.encode("utf-8"), max_bytes)
    if not isinstance(data, Mapping):
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
    return any(key in data for key in ("control_number", "titles", "abstracts", "arxiv_eprints"))


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _invalid(message: str) -> RecordError:
    return RecordError(REASON_INVALID_RECORD, message)


def _record_id(value: Any, field: str) -> str:
    if value is None:
        raise _invalid(f"missing required field '{field}'")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _invalid(f"field '{field}' must be a string or integer, got {_json_type(value)}")
    text = str(value).strip()
    if not text:
        raise _invalid(f"field '{field}' is empty")
    return text


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"field '{field}' must be a string, got {_json_type(value)}")
    if "\x00" in value:
        raise _invalid(f"field '{field}' contains NUL characters (binary data, not text)")
    return " ".join(value.split())


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # arXiv snapshot style: "hep-th gr-qc"
        return value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"field '{field}' must be a list of strings or a space-separated string")
    return [v.strip() for v in value if v.strip()]


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"field '{field}' must be a string, got {_json_type(value)}")
    return value.strip() or None


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
    raise _invalid(f"field '{field}' must be true/false or one of core, non-core, rejected; got {value!r}")


def _require_text(record_id: str, title: str, abstract: str) -> None:
    if not title and not abstract:
        raise _invalid(f"record {record_id}: missing title and abstract (at least one is required)")


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
    return Record(id=record_id, title=title, abstract=abstract, categories=categories, source=source, coreness=coreness)


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
    )
