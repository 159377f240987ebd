"""A record's own version, where it carries one, as one integer: a later version of an id gets a larger number.

Read from the first of these fields that is present (docs/processor.md, "Newest version wins"):

* ``updated`` or ``_updated`` (INSPIRE): an ISO 8601 date-time -> microseconds since 1970-01-01 UTC (a time
  without a zone is UTC);
* ``version`` (arXiv): ``"v3"``, ``"3"`` or ``3`` -> 3;
* ``versions`` (arXiv OAI metadata): a list of ``{"version": "v1", ...}`` objects or ``"v1"`` strings -> the
  highest.

A field that is present but cannot be read raises ``ValueError`` (the record rules make it ``invalid_record``): it
is bad input, not a record without a version, which would silently turn off the guard against stale writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_ARXIV_VERSION = re.compile(r"[vV]?(\d{1,9})")


def record_version(data: Mapping[str, Any]) -> int | None:
    """The version ``data`` carries, or None."""
    for field in ("updated", "_updated"):
        if (value := data.get(field)) is not None:
            return _microseconds(value, field)
    if (value := data.get("version")) is not None:
        return _arxiv_version(value, "version")
    if (value := data.get("versions")) is not None:
        return _latest_version(value)
    return None


def _invalid(message: str) -> ValueError:
    return ValueError(message)


def _microseconds(value: Any, field: str) -> int:
    if not isinstance(value, str):
        raise _invalid(f"field '{field}' must be an ISO 8601 date-time string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _invalid(f"field '{field}' is not an ISO 8601 date-time: {ascii(value[:40])}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def _arxiv_version(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    match = _ARXIV_VERSION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        got = ascii(value[:40]) if isinstance(value, str) else type(value).__name__
        raise _invalid(f"field '{field}' must be an arXiv version like \"v3\" or a number, got {got}")
    return int(match.group(1))


def _latest_version(value: Any) -> int:
    if not isinstance(value, list) or not value:
        raise _invalid("field 'versions' must be a non-empty list of arXiv versions")
    return max(_arxiv_version(item.get("version") if isinstance(item, Mapping) else item, f"versions[{i}].version")
               for i, item in enumerate(value))
