"""Training datasets: build flat JSONL files from INSPIRE's Elasticsearch or from an arXiv metadata snapshot.

Every dataset file holds one flat record a line::

    {"id", "title", "abstract", "categories": [...], "source", "coreness": "core"|"non_core"|"rejected", "date"}

which :func:`models.records.schema.parse_record` reads. Input that cannot become such a row is skipped, counted by
reason in :class:`SkipCounter` and logged, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch, NotFoundError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.helpers import scan
from pydantic import SecretStr
from tqdm import tqdm

from config.clients import es_client
from config.logging import mask
from config.settings import ElasticsearchSettings, Settings
from models.records.files import GZIP_ERRORS, SkipCounts, numbered_lines, open_text
from models.records.labels import CorenessProxy
from models.records.schema import DETAIL_NO_TEXT, CorenessLabel, RecordError, parse_record

log = logging.getLogger(__name__)

DEFAULT_INDEX = "records-hep"  # INSPIRE's literature index
DEFAULT_DATE_FIELD = "_created"  # INSPIRE's record creation timestamp
DEFAULT_PAGE_SIZE = 1000
KEEP_ALIVE = "5m"
# Only these fields are fetched from Elasticsearch.
INSPIRE_FIELDS = [
    "control_number", "titles", "abstracts", "arxiv_eprints", "acquisition_source",
    "core", "coreness", "_collections", "deleted", "rejected",
]
LITERATURE_COLLECTION = "Literature"
SKIP_NO_TEXT = "no_text"
SKIP_NO_LABEL = "no_coreness_label"
SKIP_NO_DATE = "no_date"


class DatasetError(RuntimeError):
    """The dataset cannot be built (server unreachable, bad credentials, unreadable file...)."""


class SkipCounter(SkipCounts):
    """Skipped inputs by reason; logs each one (the first few at WARNING, then at DEBUG)."""

    warn_limit = 10

    def skip(self, reason: str, where: str, message: str) -> None:
        super().skip(reason, where, message)
        level = logging.WARNING if self.total() <= self.warn_limit else logging.DEBUG
        log.log(level, "skipped %s: %s", where, message, extra={"reason": reason})


def skip_reason(error: RecordError) -> str:
    """The record error's reason, with records lacking both title and abstract told apart as ``no_text``."""
    return SKIP_NO_TEXT if error.detail == DETAIL_NO_TEXT else error.reason


@dataclass
class BuildReport:
    """What a dataset build read, wrote and skipped."""

    out: Path
    read: int
    written: int
    skipped: SkipCounter
    filtered: Counter[str] = field(default_factory=Counter)  # left out on purpose (date, category filters)

    def __str__(self) -> str:
        left_out = ", ".join(f"{why}: {n}" for why, n in sorted(self.filtered.items()))
        return (f"wrote {self.written} of {self.read} records to {self.out}; skipped {self.skipped.summary()}"
                + (f"; filtered out {left_out}" if left_out else ""))


# --------------------------------------------------------------------------- JSONL files


def iter_json_lines(path: str | os.PathLike[str], skipped: SkipCounter) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON value)`` for each non-blank line; undecodable lines are counted in ``skipped``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"input file not found: {path}")
    try:
        for number, line in numbered_lines(path):
            text = line.decode("utf-8")  # type: ignore[union-attr]  # unbounded lines are bytes
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                skipped.skip("invalid_json", f"{path}:{number}", f"not JSON: {exc.msg}")
    except (OSError, UnicodeDecodeError, *GZIP_ERRORS) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def read_dataset(path: str | os.PathLike[str], skipped: SkipCounter | None = None,
                 keep_fields: Iterable[str] = (), progress: bool = False) -> list[dict[str, Any]]:
    """Rows of a dataset file, validated and normalised by :func:`parse_record`; ``date`` and ``keep_fields``
    are kept as they are."""
    skipped = SkipCounter() if skipped is None else skipped
    extra = ["date", *keep_fields]
    rows = []
    lines = iter_json_lines(path, skipped)
    for number, data in tqdm(lines, desc=f"reading {Path(path).name}", unit="rec", disable=not progress):
        try:
            record = parse_record(data)
        except RecordError as exc:
            skipped.skip(skip_reason(exc), f"{path}:{number}", exc.message)
            continue
        rows.append(record.model_dump() | {key: data.get(key) for key in extra})
    return rows


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> int:
    """Write rows atomically (to a temporary file, then renamed); returns how many were written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp.{out.name}")  # same suffix: compressed like the target
    count = 0
    try:
        with open_text(tmp, "w") as sink:
            for row in rows:
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


# --------------------------------------------------------------------------- Elasticsearch (INSPIRE)


def month_range(year_from: int, year_to: int, month_from: int = 1, month_to: int = 12) -> tuple[str, str]:
    """``[gte, lt)`` dates covering whole months: from the first of ``year_from-month_from`` to the end of
    ``year_to-month_to``."""
    for month in (month_from, month_to):
        if not 1 <= month <= 12:
            raise DatasetError(f"month must be between 1 and 12, got {month}")
    start = date(year_from, month_from, 1)
    end = date(year_to + 1, 1, 1) if month_to == 12 else date(year_to, month_to + 1, 1)
    if end <= start:
        raise DatasetError(f"empty date range: {start} to {end}")
    return start.isoformat(), end.isoformat()


def es_settings(settings: Settings, url: str | None = None) -> ElasticsearchSettings:
    """The Elasticsearch settings for reading: ``url`` if given, and credentials from
    ``CORESTREAM_ELASTICSEARCH__*`` or else ``ES_API_KEY`` / ``ES_USERNAME`` + ``ES_PASSWORD``."""
    es = settings.elasticsearch
    update: dict[str, Any] = {"url": url or es.url}
    if es.api_key is None and es.username is None:
        if os.environ.get("ES_API_KEY"):
            update["api_key"] = SecretStr(os.environ["ES_API_KEY"])
        elif os.environ.get("ES_USERNAME"):
            update["username"] = os.environ["ES_USERNAME"]
            update["password"] = SecretStr(os.environ.get("ES_PASSWORD", ""))
        elif os.environ.get("ES_PASSWORD"):
            raise DatasetError("ES_PASSWORD is set but ES_USERNAME is not")
    if not update["url"]:
        raise DatasetError("no Elasticsearch URL: pass --es-url or set CORESTREAM_ELASTICSEARCH__URL")
    return es.model_copy(update=update)


def connect(settings: Settings, url: str | None = None) -> Elasticsearch:
    """A client for ``url`` (default: the ``elasticsearch.url`` setting) with its credentials; each request is
    retried ``elasticsearch.max_retries`` times on connection errors and timeouts."""
    es = es_settings(settings, url)
    return es_client(es).options(max_retries=es.max_retries, retry_on_timeout=True)


@contextmanager
def es_errors(url: str, index: str) -> Iterator[None]:
    """Turn client exceptions into one-line :class:`DatasetError` messages (credentials never shown)."""
    where = f"{mask(url)} (index {index})"
    try:
        yield
    except AuthenticationException as exc:
        raise DatasetError(
            f"Elasticsearch at {where} rejected the credentials (401 {_error_type(exc)}): "
            "check ES_USERNAME/ES_PASSWORD, ES_API_KEY or CORESTREAM_ELASTICSEARCH__*"
        ) from None
    except AuthorizationException as exc:
        raise DatasetError(f"Elasticsearch at {where}: access denied (403 {_error_type(exc)})") from None
    except NotFoundError as exc:
        raise DatasetError(f"Elasticsearch at {where}: not found ({_error_type(exc)})") from None
    except ESConnectionError as exc:
        raise DatasetError(f"cannot reach Elasticsearch at {where}: {mask(str(exc.message))}") from None
    except ApiError as exc:
        raise DatasetError(f"Elasticsearch at {where} answered {exc.meta.status}: {_error_type(exc)}") from None


def _error_type(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, Mapping) else {}
    error = body.get("error")
    return str(error.get("type", error)) if isinstance(error, Mapping) else str(error or exc.message)


def date_query(date_field: str, gte: str, lt: str) -> dict[str, Any]:
    return {"range": {date_field: {"gte": gte, "lt": lt}}}


def iter_hits(client: Elasticsearch, index: str, query: Mapping[str, Any], page_size: int,
              source: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """All hits matching ``query``: point-in-time + ``search_after`` pages, or scroll where PIT is unavailable."""
    try:
        pit_id = client.open_point_in_time(index=index, keep_alive=KEEP_ALIVE)["id"]
    except NotFoundError:  # no such index: not a reason to fall back
        raise
    except ApiError as exc:
        log.info("point in time unavailable (%s); paging with scroll", _error_type(exc))
        yield from scan(client, index=index, query={"query": query}, size=page_size, scroll=KEEP_ALIVE,
                        _source=source)
        return
    try:
        search_after = None
        while True:
            page = client.search(
                pit={"id": pit_id, "keep_alive": KEEP_ALIVE}, query=query, size=page_size, _source=source,
                sort=[{"_shard_doc": "asc"}], search_after=search_after, track_total_hits=False,
            )
            pit_id = page.get("pit_id", pit_id)
            hits = page["hits"]["hits"]
            yield from hits
            if len(hits) < page_size:
                return
            search_after = hits[-1]["sort"]
    finally:
        try:
            client.close_point_in_time(id=pit_id)
        except ApiError as exc:  # it expires by itself anyway
            log.debug("could not close point in time: %s", exc)


def inspire_coreness(source: Mapping[str, Any], parsed: CorenessLabel | None) -> CorenessLabel | None:
    """Rejected if the curators rejected the record (``deleted``/``rejected`` true, or ``_collections`` present
    without "Literature"); otherwise the ``core`` flag (true: core, false: non_core) or a ``coreness`` label."""
    collections = source.get("_collections")
    hidden = isinstance(collections, list) and LITERATURE_COLLECTION not in collections
    if source.get("deleted") is True or source.get("rejected") is True or hidden:
        return "rejected"
    return parsed


def inspire_row(hit: Mapping[str, Any], date_field: str = DEFAULT_DATE_FIELD) -> dict[str, Any]:
    """A dataset row from one INSPIRE literature hit; :class:`RecordError` if it has no text or no label."""
    source = dict(hit.get("_source") or {})
    source.setdefault("control_number", hit.get("_id"))
    record = parse_record(source)
    coreness = inspire_coreness(source, record.coreness)
    if coreness is None:
        raise RecordError(SKIP_NO_LABEL, f"record {record.id}: no 'core' flag and not rejected")
    return record.model_dump() | {"coreness": coreness, "date": _date_part(_field(hit, date_field))}


def _field(hit: Mapping[str, Any], dotted: str) -> Any:
    value: Any = hit.get("_source") or {}
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _date_part(value: Any) -> str | None:
    return value[:10] if isinstance(value, str) and len(value) >= 10 else None


def build_from_es(
    client: Elasticsearch,
    index: str,
    out: str | os.PathLike[str],
    *,
    gte: str,
    lt: str,
    date_field: str = DEFAULT_DATE_FIELD,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: bool = True,
) -> BuildReport:
    """Write the literature records of ``index`` created in ``[gte, lt)`` to ``out``."""
    url = ", ".join(str(node.base_url) for node in client.transport.node_pool.all())
    query = date_query(date_field, gte, lt)
    skipped = SkipCounter()
    read = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal read
        with es_errors(url, index):
            total = client.count(index=index, query=query)["count"]
            hits = iter_hits(client, index, query, page_size, source=[*INSPIRE_FIELDS, date_field.split(".")[0]])
            for hit in tqdm(hits, total=total, desc=f"{index} {gte}..{lt}", unit="rec", disable=not progress):
                read += 1
                try:
                    yield inspire_row(hit, date_field)
                except RecordError as exc:
                    skipped.skip(skip_reason(exc), f"{index}/{hit.get('_id')}", exc.message)

    written = write_jsonl(rows(), out)
    return BuildReport(Path(out), read, written, skipped)


# --------------------------------------------------------------------------- arXiv metadata snapshot

_LATEX_BREAK = re.compile(r"\\\\")


def clean_text(text: str) -> str:
    """Drop LaTeX line breaks (``\\\\``) and collapse newlines and runs of spaces."""
    return " ".join(_LATEX_BREAK.sub(" ", text).split())


def snapshot_date(data: Mapping[str, Any]) -> str | None:
    """Submission date: ``date`` (shared-data format), else the first version's ``created``, else
    ``update_date``; ``YYYY-MM-DD`` or None."""
    if isinstance(data.get("date"), str):
        return _date_part(data["date"])
    versions = data.get("versions")
    if isinstance(versions, list) and versions and isinstance(versions[0], Mapping):
        created = versions[0].get("created")
        if isinstance(created, str):
            try:
                return parsedate_to_datetime(created).date().isoformat()
            except (TypeError, ValueError):
                pass
    return _date_part(data.get("update_date"))


def snapshot_row(data: Any, proxy: CorenessProxy) -> dict[str, Any]:
    """A dataset row from one snapshot entry, labelled with the coreness proxy; :class:`RecordError` if bad."""
    if not isinstance(data, Mapping):
        raise RecordError("invalid_record", "snapshot entry must be a JSON object")
    flat = {key: data.get(key) for key in ("id", "title", "abstract", "categories")}
    for key in ("title", "abstract"):
        if isinstance(flat[key], str):
            flat[key] = clean_text(flat[key])
    record = parse_record(flat)
    primary = data.get("primary_category")
    categories = proxy.normalise(([primary] if isinstance(primary, str) else []) + record.categories)
    return record.model_dump() | {
        "categories": categories,
        "source": "arXiv",
        "coreness": proxy.label(categories),
        "date": snapshot_date(data),
    }


def matches_categories(categories: Iterable[str], prefixes: Iterable[str]) -> bool:
    prefixes = tuple(prefixes)
    return any(cat.startswith(prefixes) for cat in categories)


def read_snapshot(
    path: str | os.PathLike[str],
    skipped: SkipCounter,
    *,
    proxy: CorenessProxy | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    categories: Iterable[str] | None = None,
    filtered: Counter[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Dataset rows from an arXiv metadata snapshot (plain or .gz), filtered by date (inclusive ISO dates)
    and category prefixes; entries left out by the filters are counted in ``filtered``."""
    proxy = proxy or CorenessProxy.load()
    filtered = Counter() if filtered is None else filtered
    prefixes = tuple(categories or ())
    for number, data in iter_json_lines(path, skipped):
        try:
            row = snapshot_row(data, proxy)
        except RecordError as exc:
            skipped.skip(skip_reason(exc), f"{path}:{number}", exc.message)
            continue
        if (date_from or date_to) and row["date"] is None:
            skipped.skip(SKIP_NO_DATE, f"{path}:{number}", f"record {row['id']} has no date to filter on")
            continue
        if date_from and row["date"] < date_from or date_to and row["date"] > date_to:
            filtered["date"] += 1
        elif prefixes and not matches_categories(row["categories"], prefixes):
            filtered["categories"] += 1
        else:
            yield row


def build_from_snapshot(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    proxy: CorenessProxy | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    categories: Iterable[str] | None = None,
    progress: bool = True,
) -> BuildReport:
    """Write the snapshot entries that pass the filters to ``out``."""
    skipped = SkipCounter()
    filtered: Counter[str] = Counter()
    entries = read_snapshot(path, skipped, proxy=proxy, date_from=date_from, date_to=date_to,
                            categories=categories, filtered=filtered)
    written = write_jsonl(tqdm(entries, desc=Path(path).name, unit="rec", disable=not progress), out)
    return BuildReport(Path(out), written + skipped.total() + filtered.total(), written, skipped, filtered)


def parse_day(text: str, end: bool = False) -> str:
    """``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` -> ISO date (first day, or last day with ``end``)."""
    for fmt, size in (("%Y-%m-%d", 10), ("%Y-%m", 7), ("%Y", 4)):
        try:
            parsed = datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        if not end or size == 10:
            return parsed.isoformat()
        if size == 4:
            return date(parsed.year, 12, 31).isoformat()
        following = date(parsed.year + parsed.month // 12, parsed.month % 12 + 1, 1)
        return date.fromordinal(following.toordinal() - 1).isoformat()
    raise DatasetError(f"not a date: {text!r} (expected YYYY, YYYY-MM or YYYY-MM-DD)")
