"""Training examples: JSON lines (flat, INSPIRE or arXiv-snapshot records; ``.gz`` too) -> labelled Records.

Categories are normalised (old arXiv names renamed); coreness is the record's real label when it has one
(``coreness``/``core``, or ``label`` as in an INSPIRE coreness file), else the documented proxy from its
categories. Each record keeps its date (``date``, an arXiv snapshot's first version, or ``year``) so that the
most recent slice can be held out. Lines that cannot be used are counted and reported by reason, never dropped
silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from models.records.files import GZIP_ERRORS, SkipCounts, count_lines, numbered_lines
from models.records.labels import CorenessProxy
from models.records.schema import (
    CORENESS_LABELS,
    DEFAULT_MAX_TEXT_CHARS,
    Record,
    RecordError,
    decode_message,
    parse_record,
)
from trainer.datasets.build import snapshot_date
from trainer.datasets.sample import generate_sample

log = logging.getLogger(__name__)
REASON_UNLABELLED = "unlabelled"
DEFAULT_SAMPLE_COUNT = 2000


class DatedRecord(Record):
    """A training record with its date (``YYYY-MM-DD``, ``YYYY`` or None), used for the time-later split."""

    date: str | None = None


class DataError(ValueError):
    """Training data that cannot be used at all (missing file, no usable record)."""


@dataclass
class LoadReport:
    """What happened to the lines of a data file."""

    path: str
    read: int = 0
    skipped: SkipCounts = field(default_factory=SkipCounts)  # reason -> count, and the first few messages

    def skip(self, line_no: int, reason: str, message: str) -> None:
        self.skipped.skip(reason, f"line {line_no}", message)

    def summary(self) -> str:
        kept = self.read - sum(self.skipped.values())
        text = f"{self.path}: {kept} of {self.read} records usable"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            text += f"; skipped {reasons} (e.g. {'; '.join(self.skipped.examples[:3])})"
        return text


def label_record(record: Record, proxy: CorenessProxy) -> Record:
    """Normalised categories and a coreness label (real if present, else the proxy)."""
    categories = proxy.normalise(record.categories)
    coreness = record.coreness or proxy.label(categories)
    return record.model_copy(update={"categories": categories, "coreness": coreness})


def record_date(data: Mapping[str, Any]) -> str | None:
    """``date`` / the first arXiv version / ``update_date`` (see :func:`trainer.datasets.build.snapshot_date`), else
    ``year``."""
    date = snapshot_date(data)
    if date is None and isinstance(data.get("year"), int | str) and str(data["year"]).strip():
        date = str(data["year"]).strip()
    return date


def parse_training_line(line: bytes | Mapping[str, Any], max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
                        ) -> DatedRecord:
    """One training record: a flat, INSPIRE or arXiv-snapshot record, or a row of an INSPIRE coreness file
    (``label`` is the curators' coreness decision, ``arxiv_categories`` the categories); :class:`RecordError`."""
    data = decode_message(line) if isinstance(line, bytes) else line
    if isinstance(data, Mapping) and "label" in data and "coreness" not in data and "core" not in data:
        data = {**data, "coreness": data["label"]}
        if not data.get("categories") and isinstance(data.get("arxiv_categories"), list):
            data["categories"] = data["arxiv_categories"]
    record = parse_record(data, max_text_chars=max_text_chars)
    return DatedRecord(**record.model_dump(), date=record_date(data) if isinstance(data, Mapping) else None)


def iter_records(path: str | Path, report: LoadReport, *, proxy: CorenessProxy | None = None,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> Iterator[Record]:
    """Labelled records of the JSON-lines file at ``path``; bad lines are recorded in ``report``."""
    proxy = proxy or CorenessProxy.load()
    line_no = 0
    try:
        for line_no, line in numbered_lines(path):
            if not line.strip():
                continue
            report.read += 1
            try:
                record = parse_training_line(line, max_text_chars=max_text_chars)
            except RecordError as exc:
                report.skip(line_no, exc.reason, str(exc))
                continue
            if not record.categories and record.coreness is None:
                report.skip(line_no, REASON_UNLABELLED, f"record {record.id} has neither categories nor coreness")
                continue
            yield label_record(record, proxy)
    except GZIP_ERRORS as exc:
        raise DataError(f"{path} is truncated or not valid gzip (after line {line_no}): {exc}") from None


def load_records(path: str | Path, *, limit: int | None = None, proxy: CorenessProxy | None = None,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, progress: bool = False) -> list[Record]:
    """Up to ``limit`` labelled records from ``path``; logs how many lines were skipped and why. ``progress``:
    a bar with an ETA (the file's lines are counted first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    report = LoadReport(str(path))
    records: list[Record] = []
    total = (limit or count_lines(path)) if progress else None  # (a file shorter than the limit ends early)
    for record in tqdm(iter_records(path, report, proxy=proxy, max_text_chars=max_text_chars), total=total,
                       desc="read", unit="record", disable=not progress, mininterval=2):
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    (log.warning if report.skipped else log.info)(report.summary())
    if not records:
        raise DataError(f"no usable records in {path}: {report.summary()}")
    return records


def split_records(records: Sequence[Record], valid_fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """A shuffled train/validation split, the same for the same seed and records."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_valid = max(1, round(len(shuffled) * valid_fraction)) if len(shuffled) > 1 else 0
    return shuffled[n_valid:], shuffled[:n_valid]


def time_split(records: Sequence[Record], valid_fraction: float, seed: int = 0
               ) -> tuple[list[Record], list[Record]]:
    """The most recent ``valid_fraction`` of the dated records for validation, the rest for training.

    Records are ordered by date (ties by id); undated records always go to training. Falls back to
    :func:`split_records` (shuffled) when fewer than 2 records are dated.
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    dated = [r for r in records if getattr(r, "date", None)]
    if len(dated) < 2:
        return split_records(records, valid_fraction, seed)
    ordered = sorted(dated, key=lambda r: (r.date, r.id))
    n_valid = max(1, round(len(records) * valid_fraction))
    n_valid = min(n_valid, len(ordered) - 1)
    later = {id(r) for r in ordered[-n_valid:]}
    return [r for r in records if id(r) not in later], ordered[-n_valid:]


def held_out(records: Sequence[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """A stable split by id (crc32): about ``fraction`` of the records held out, the same whatever the order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    out = [r for r in records if zlib.crc32(r.id.encode("utf-8")) % 10_000 < fraction * 10_000]
    chosen = {id(r) for r in out}
    return [r for r in records if id(r) not in chosen], out


def bare_archives(categories: Iterable[str]) -> set[str]:
    """The archive names among ``categories`` that also occur split into subject classes (``astro-ph`` beside
    ``astro-ph.CO``). arXiv filed papers under the bare archive before it was split (astro-ph until 2009), and
    snapshots keep those labels: such a label says "one of its subject classes, unknown which"."""
    names = set(categories)
    return {name for name in names if "." not in name and any(other.startswith(name + ".") for other in names)}


def category_vocabulary(records: Iterable[Record], min_count: int = 1) -> list[str]:
    """Categories seen at least ``min_count`` times, most frequent first (ties by name); a bare archive whose
    subject classes are there too is left out (:func:`bare_archives`): no current paper is filed under it."""
    counts = Counter(cat for record in records for cat in record.categories)
    bare = bare_archives(counts)
    return sorted((cat for cat, n in counts.items() if n >= min_count and cat not in bare),
                  key=lambda c: (-counts[c], c))


def known_categories(records: Sequence[Record], labels: Sequence[str], dtype: type = np.float32) -> np.ndarray:
    """(n, C) 1/0: whether a record's label for each category is known. A record filed under a bare archive
    (``astro-ph``) and none of its subject classes says nothing about which subject class (``astro-ph.*``)
    it belongs to: those entries are 0, so that training neither rewards nor penalises them."""
    known = np.ones((len(records), len(labels)), dtype=dtype)
    prefixes = {label.split(".", 1)[0] for label in labels if "." in label}
    columns = {prefix: [i for i, label in enumerate(labels) if label.startswith(prefix + ".")]
               for prefix in prefixes}
    for row, record in enumerate(records):
        for cat in record.categories:
            if cat in columns and not any(c.startswith(cat + ".") for c in record.categories):
                known[row, columns[cat]] = 0
    return known


def fingerprint(records: Iterable[Record]) -> str:
    """sha256 over the records' ids, texts and labels, in order: identifies the training data."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.id, record.text, record.categories, record.coreness]).encode("utf-8"))
    return "sha256:" + digest.hexdigest()


def decimal_year(date: str | None) -> float | None:
    """``YYYY-MM-DD`` / ``YYYY-MM`` / ``YYYY`` -> the year with its fraction (None when unreadable)."""
    parts = (date or "").strip()[:10].split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
    except ValueError:
        return None
    return year + ((month - 1) * 30.44 + day - 1) / 365.25


def recency_weights(records: Sequence[Record], half_life_years: float) -> np.ndarray:
    """Per-record loss weights halving every ``half_life_years`` before the most recent record, mean 1 over the
    dated records; undated records weigh as the most recent ones. All ones when ``half_life_years`` is 0 or
    nothing is dated."""
    years = [decimal_year(getattr(r, "date", None)) for r in records]
    known = [y for y in years if y is not None]
    if half_life_years <= 0 or not known:
        return np.ones(len(records), dtype=np.float32)
    latest = max(known)
    weights = np.array([0.5 ** ((latest - y) / half_life_years) if y is not None else 1.0 for y in years])
    return (weights / weights[[y is not None for y in years]].mean()).astype(np.float32)


def to_records(data: str | Path | Sequence[Record | dict] | None, sample_count: int | None, seed: int,
               proxy: CorenessProxy, progress: bool = False) -> list[Record]:
    """Labelled records from a JSONL path, a list of Records/dicts, or (None) a generated sample."""
    if data is None:
        data = generate_sample(sample_count or DEFAULT_SAMPLE_COUNT, seed)
    if isinstance(data, str | Path):
        return load_records(data, limit=sample_count, proxy=proxy, progress=progress)
    records = []
    for index, item in enumerate(data):
        try:
            record = item if isinstance(item, Record) else parse_training_line(item)
        except RecordError as exc:
            raise DataError(f"training record {index} is invalid: {exc}") from None
        records.append(label_record(record, proxy))
    return records[:sample_count] if sample_count else records


def category_targets(records: Sequence[Record], labels: Sequence[str], dtype: type = np.float32) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(records), len(labels)), dtype=dtype)
    for row, record in enumerate(records):
        for cat in record.categories:
            if cat in index:
                targets[row, index[cat]] = 1.0
    return targets


def coreness_targets(records: Sequence[Record]) -> np.ndarray:
    return np.array([CORENESS_LABELS.index(r.coreness) for r in records], dtype=np.int64)
