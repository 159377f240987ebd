"""Training on a file whose label mix differs from new submissions (``--label-prior FILE``).

A large harvest (e.g. ``arxiv-train-large``: every paper filed in or cross-listed to ~130 smaller categories)
holds far more papers than a representative sample, but its category mix is not the one the model will see.
``FILE`` holds records whose mix new submissions follow (e.g. ``arxiv-train``, the representative part of the
large file). Two things follow from it:

* **Thresholds and calibration** are tuned on the records of the time-later validation slice that are also in
  ``FILE`` (by id), not on the whole slice: the decisions are made for the mix the model will meet.
* **Loss weights** (``--label-prior-power P``): each training paper's category loss is multiplied by
  ``(p_target(primary) / p_train(primary)) ** P``, the importance weight of its primary category, with both
  priors taken from the most recent year of dated records of ``FILE`` and of the training data (add-one smoothed,
  the ratio clipped to [1/20, 20], weights scaled to mean 1). P = 0 (the default) keeps the harvest's mix, 1 moves
  the effective primary-category prior onto the target's. On the large file's time-later slice P = 0.5 was no
  better than 0 (docs/models.md, "Training at scale"), so only the thresholds move by default.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.records.files import numbered_lines
from models.records.labels import CorenessProxy
from models.records.schema import Record
from trainer.datasets.training_data import DataError, decimal_year, record_date

log = logging.getLogger(__name__)
MAX_RATIO = 20.0
MIN_TUNING_RECORDS = 500  # fewer representative validation records: tune on the whole slice


@dataclass(frozen=True)
class LabelPrior:
    """The target mix: the ids of the representative records and their primary-category shares."""

    ids: frozenset[str]
    primary_share: dict[str, float]

    @classmethod
    def from_records(cls, records: Sequence[Record | _Paper]) -> LabelPrior:
        return cls(frozenset(r.id for r in records), primary_shares(records))

    def tuning_slice(self, valid: Sequence[Record]) -> list[Record]:
        """The representative records of the validation slice (all of it when fewer than
        :data:`MIN_TUNING_RECORDS`)."""
        chosen = [r for r in valid if r.id in self.ids]
        if len(chosen) < MIN_TUNING_RECORDS:
            log.warning("only %d of the %d validation records are in the label prior: thresholds tuned on all",
                        len(chosen), len(valid))
            return list(valid)
        return chosen

    def weights(self, records: Sequence[Record], power: float) -> np.ndarray:
        """Per-record importance weights of the primary category, ``** power``, mean 1 (float32)."""
        if power == 0 or not records:
            return np.ones(len(records), dtype=np.float32)
        train = primary_shares(records)
        floor = 1.0 / (len(records) + len(train) + 1)  # add-one share of a category the target never saw
        ratio = {cat: (self.primary_share.get(cat, floor) / share) for cat, share in train.items()}
        raw = np.array([np.clip(ratio.get(primary(r), 1.0), 1 / MAX_RATIO, MAX_RATIO) for r in records])
        weights = raw ** power
        return (weights / weights.mean()).astype(np.float32)


def primary(record: Record | _Paper) -> str | None:
    return record.categories[0] if record.categories else None


def primary_shares(records: Sequence[Record | _Paper]) -> dict[str, float]:
    """Add-one smoothed share of each primary category among the records of the most recent year (all records
    when none is dated)."""
    years = [decimal_year(getattr(r, "date", None)) for r in records]
    known = [y for y in years if y is not None]
    start = max(known) - 1 if known else None
    recent = [r for r, y in zip(records, years, strict=True) if y is not None and y >= start] if known \
        else list(records)
    counts = Counter(primary(r) for r in recent if primary(r))
    total = sum(counts.values()) + len(counts)
    return {cat: (n + 1) / total for cat, n in counts.items()}


class _Paper(NamedTuple):
    id: str
    categories: list[str]
    date: str | None


@functools.lru_cache(maxsize=2)
def load_label_prior(path: str) -> LabelPrior:
    """The :class:`LabelPrior` of a records file (read once per process): only ids, normalised categories and
    dates are read (JSON, no record validation: a tenth of the time); lines without an id or categories are
    skipped and counted in the log."""
    if not Path(path).is_file():
        raise DataError(f"label prior file not found: {path}")
    proxy = CorenessProxy.load()
    papers, skipped = [], 0
    for _, line in numbered_lines(path):
        try:
            data = json.loads(line)
            categories = data.get("categories") or data.get("arxiv_categories") or []
            if isinstance(categories, str):
                categories = categories.split()
            papers.append(_Paper(str(data["id"]), proxy.normalise(categories), record_date(data)))
        except (ValueError, KeyError, TypeError, AttributeError):
            skipped += line.strip() != b""
    log.info("label prior %s: %d papers (%d lines skipped)", path, len(papers), skipped)
    if not papers:
        raise DataError(f"no usable records in label prior file {path}")
    return LabelPrior.from_records(papers)
