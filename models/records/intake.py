"""The input rules shared by every way in: the stream processor, the Faust worker, the HTTP API and backfill.

* :func:`parse_input`: bytes or a parsed object -> :class:`Record`, or :class:`RecordError` with a reason code;
  never another exception (an unexpected one becomes ``invalid_record`` with an encodable message).
* :func:`skipped_source`: the one skip rule, ``skip_sources`` (settings) and the live model's ``dont_run_on``.
* :func:`estimate_tokens`: the model's token count for batching, with one fallback when the model cannot say.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from config.settings import RecordSettings
from models.records.schema import REASON_INVALID_RECORD, Record, RecordError, parse_record

if TYPE_CHECKING:
    from models.inference.source import ModelSource

CHARS_PER_TOKEN = 4  # the fallback estimate: about four characters per token


def parse_input(data: bytes | str | Mapping[str, Any], records: RecordSettings) -> Record:
    """Validate one input (a Kafka message value, a backfill line, an API record) under ``records`` limits."""
    try:
        return parse_record(data, records.max_text_chars, records.max_message_bytes)
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug on odd input must become a dead letter, not a crash
        text = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
        raise RecordError(REASON_INVALID_RECORD, text[:1000]) from None


def skipped_source(record: Record, skip_sources: Collection[str], model_source: ModelSource) -> str | None:
    """The record's source if this model must not classify it (listed in ``skip_sources`` or in the live
    model's ``dont_run_on``), else None."""
    source = record.source
    if source and (source in skip_sources or source in model_source.dont_run_on()):
        return source
    return None


def estimate_tokens(record: Record, model_source: ModelSource) -> int:
    """The live model's token count for ``record`` (for token-bounded batches); a length-based estimate if the
    model cannot say (e.g. it is not loaded yet: the batch's inference reports the real error)."""
    try:
        return model_source.current().count_tokens(record)
    except Exception:  # noqa: BLE001 - only an estimate for batching
        return len(record.text) // CHARS_PER_TOKEN + 1
