"""The Elasticsearch sink: a partial update per result (``doc_as_upsert``), one bulk request per write.

A result that carries its record's own version (``record_version``) is written by a guarded update instead: a
painless script leaves the document as it is when it already holds a newer version, so a replayed or late older
version never overwrites a newer one (the stale write succeeds as a no-op). A bulk answer whose item count differs
from the actions sent is an unknown error for the whole request (:class:`BulkAnswerMismatch`): nothing of it is
counted as written, and the processor isolates and retries as for any unknown error.

Retries whole-request failures (connection errors, timeouts, 429 and 5xx) and transient per-item failures
(429, 5xx, 409) with exponential backoff; other per-item errors (e.g. a mapping conflict) cannot succeed on
retry and come back at once as :class:`SinkFailure`, as does a result whose id cannot be a document id.
Still failing after ``max_retries``: the transient items become failures, or, if the cluster itself did not
answer, :class:`SinkUnavailable`. A whole request refused with another 4xx (bad index name, no permission)
cannot succeed on retry: :class:`SinkFatal`; 413 (request too large) splits the batch instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from elasticsearch import ApiError, BadRequestError, Elasticsearch, TransportError

from config.clients import es_client
from config.settings import Settings
from models.records.schema import ClassificationResult
from streaming.observability.metrics import ES_BULK_SECONDS, SINK_ERRORS
from streaming.sinks.base import SinkFailure, SinkFatal, SinkUnavailable, backoff_delays, encoded_id

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({409, 429, 500, 502, 503, 504})
REQUEST_TRANSIENT_STATUS = TRANSIENT_STATUS | {408}  # a whole request refused with these is retried
TOO_LARGE = 413

INDEX_MAPPINGS: dict[str, Any] = {
    "dynamic": True,  # the document may hold the record itself; only the classification is typed here
    "properties": {
        "classification": {
            "properties": {
                "id": {"type": "keyword"},
                "coreness": {
                    "properties": {
                        "label": {"type": "keyword"},
                        "scores": {
                            "properties": {
                                "core": {"type": "float"},
                                "non_core": {"type": "float"},
                                "rejected": {"type": "float"},
                            }
                        },
                    }
                },
                "categories": {
                    "type": "nested",
                    "properties": {"label": {"type": "keyword"}, "score": {"type": "float"}},
                },
                "model": {
                    "properties": {
                        "name": {"type": "keyword"},
                        "version": {"type": "keyword"},
                        "arch": {"type": "keyword"},
                    }
                },
                "classified_at": {"type": "date"},
                "record_version": {"type": "long"},
            }
        }
    },
}


def ensure_index(client: Elasticsearch, index: str) -> bool:
    """Create ``index`` with the classification mapping if absent; True if this call created it."""
    if client.indices.exists(index=index):
        return False
    try:
        client.indices.create(index=index, mappings=INDEX_MAPPINGS)
    except BadRequestError as exc:
        if exc.error == "resource_already_exists_exception":  # created concurrently by another process
            return False
        raise
    log.info("created Elasticsearch index", extra={"index": index})
    return True


# Of each bulk item only what the sink reads (~25 bytes instead of ~170 to send and parse); items stay in order.
BULK_RESPONSE_FIELDS = "items.*.status,items.*.error"
UpdateAction = tuple[str, bytes]  # (document id, its two NDJSON lines: bulk header and body), serialised once

# Sets ``classification`` unless the document holds a newer version of the record (then a no-op, status 200).
# Equal versions overwrite (the same version classified again, e.g. by a new model).
VERSION_GUARD = ("def held = ctx._source.classification; "
                 "if (held != null && held.record_version != null && held.record_version > params.c.record_version) "
                 "{ ctx.op = 'noop' } else { ctx._source.classification = params.c }")
_GUARDED = (b'{"script":{"lang":"painless","source":' + json.dumps(VERSION_GUARD).encode()
            + b',"params":{"c":%s}},"scripted_upsert":true,"upsert":{}}')


class BulkAnswerMismatch(RuntimeError):
    """Elasticsearch answered a bulk request with another number of items than were sent: which document each
    answer belongs to is unknown, so none counts as written (an unknown error: the batch is split and retried)."""


def update_action(index: str, result: ClassificationResult) -> UpdateAction:
    """Bulk action: set ``classification`` on the record's document, creating it if needed; guarded by
    :data:`VERSION_GUARD` when the result carries its record's version. The body embeds the result's JSON as every
    sink sends it (:attr:`ClassificationResult.json_bytes`, serialised once); the request body is these lines
    joined (no per-line serialiser call)."""
    # retry_on_conflict: another writer updated the document meanwhile, Elasticsearch re-applies ours
    header = b'{"update":{"_index":%s,"_id":%s,"retry_on_conflict":3}}\n' % (orjson.dumps(index),
                                                                             orjson.dumps(result.id))
    if result.record_version is not None:
        return result.id, header + _GUARDED % result.json_bytes + b"\n"
    return result.id, header + b'{"doc":{"classification":%s},"doc_as_upsert":true}\n' % result.json_bytes


def _action_id(action: UpdateAction) -> str:
    return action[0]


def _item_error(info: dict[str, Any]) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    return str(error or f"status {info.get('status')}")


class ElasticsearchSink:
    """Writes results into ``settings.elasticsearch.index``; creates the index on first use."""

    name = "elasticsearch"
    stores = True  # written before the output topic, which publishes only what the stores took

    def __init__(self, settings: Settings, client: Elasticsearch | None = None, probe_timeout_s: float = 2.0) -> None:
        self.settings = settings
        self.config = settings.elasticsearch
        self.index = self.config.index
        self.client = client or es_client(settings)
        self.probe_timeout_s = probe_timeout_s
        self._index_ready = False

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        failures: list[SinkFailure] = []
        writable: list[ClassificationResult] = []
        for result in results:
            try:
                encoded_id(result)
                writable.append(result)
            except ValueError as exc:
                SINK_ERRORS.labels(sink=self.name, kind="item").inc()
                failures.append(SinkFailure(result.id, f"cannot be an Elasticsearch document id: {exc}"))
        if not writable:
            return failures
        try:
            return failures + self._write(writable)
        except ApiError as exc:
            if exc.status_code != TOO_LARGE:
                raise
        if len(writable) == 1:  # one document larger than the cluster accepts
            SINK_ERRORS.labels(sink=self.name, kind="item").inc()
            return failures + [SinkFailure(writable[0].id, "Elasticsearch refused the document as too large (413)")]
        half = len(writable) // 2
        return failures + self.write(writable[:half]) + self.write(writable[half:])

    def _write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        pending = [update_action(self.index, result) for result in results]
        failures: list[SinkFailure] = []
        delays = backoff_delays(self.config.max_retries, self.config.retry_backoff_s, self.config.max_backoff_s)
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(delays[attempt - 1])
            try:
                pending, permanent, last_error = self._bulk(pending)
                cluster_down = False
            except (TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status_code == TOO_LARGE:
                    raise
                if isinstance(exc, ApiError) and exc.status_code not in REQUEST_TRANSIENT_STATUS:
                    SINK_ERRORS.labels(sink=self.name, kind="request").inc()
                    raise SinkFatal(f"Elasticsearch refused the request to index {self.index!r} "
                                    f"(HTTP {exc.status_code}): {exc}") from exc
                cluster_down, last_error = True, f"{type(exc).__name__}: {exc}"
                SINK_ERRORS.labels(sink=self.name, kind="retried").inc()
                log.warning("Elasticsearch bulk failed, will retry",
                            extra={"attempt": attempt + 1, "error": last_error, "pending": len(pending)})
                continue
            failures += permanent
            if not pending:
                return failures
            SINK_ERRORS.labels(sink=self.name, kind="retried").inc(len(pending))
        if cluster_down or len(pending) == len(results):  # nothing got through: the cluster, not the records
            SINK_ERRORS.labels(sink=self.name, kind="unavailable").inc()
            raise SinkUnavailable(f"Elasticsearch unavailable after {self.config.max_retries} retries: {last_error}")
        SINK_ERRORS.labels(sink=self.name, kind="failed").inc(len(pending))
        return failures + [SinkFailure(_action_id(action), f"still failing after retries: {last_error}")
                           for action in pending]

    def _bulk(self, actions: list[UpdateAction]) -> tuple[list[UpdateAction], list[SinkFailure], str]:
        """One bulk round: (actions to retry, permanent failures, last transient error)."""
        if not self._index_ready:
            ensure_index(self.client, self.index)
            self._index_ready = True
        retry: list[UpdateAction] = []
        permanent: list[SinkFailure] = []
        last_error = ""
        body = b"".join(lines for _, lines in actions)
        with ES_BULK_SECONDS.time():
            items = self.client.bulk(operations=body, filter_path=BULK_RESPONSE_FIELDS).body.get("items", [])
        if len(items) != len(actions):
            SINK_ERRORS.labels(sink=self.name, kind="answer_mismatch").inc()
            raise BulkAnswerMismatch(f"Elasticsearch answered {len(items)} items to a bulk request of "
                                     f"{len(actions)} actions")
        for action, item in zip(actions, items, strict=True):
            info = next(iter(item.values()))
            status = info.get("status", 500)
            if 200 <= status < 300:
                continue
            error = _item_error(info)
            if status in TRANSIENT_STATUS:
                retry.append(action)
                last_error = error
            else:
                SINK_ERRORS.labels(sink=self.name, kind="item").inc()
                permanent.append(SinkFailure(_action_id(action), f"Elasticsearch rejected the document: {error}"))
        return retry, permanent, last_error

    def check(self) -> bool:
        """A ping that gives up after ``probe_timeout_s`` (a cluster that accepts but never answers is not ready)."""
        try:
            return bool(self.client.options(request_timeout=self.probe_timeout_s).ping())
        except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
            return False

    def reset(self) -> None:
        """A new client (after :class:`SinkFatal`); the index is checked again on the next write."""
        old, self.client = self.client, es_client(self.settings)
        self._index_ready = False
        try:
            old.close()
        except Exception as exc:  # noqa: BLE001 - the old client may be broken; it is dropped either way
            log.debug("closing the old Elasticsearch client failed", extra={"error": str(exc)})

    def close(self) -> None:
        self.client.close()
