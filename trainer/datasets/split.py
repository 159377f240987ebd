"""Deterministic train/validation/test splits: stratified on the primary category, or by time."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from trainer.datasets.undersample import record_categories

SPLIT_NAMES = ("train", "valid", "test")
Row = Mapping[str, Any]


def _check_fractions(valid: float, test: float) -> None:
    if valid < 0 or test < 0 or valid + test >= 1:
        raise ValueError(f"valid and test fractions must be >= 0 and sum to less than 1, got {valid} and {test}")


def stratified_split(rows: Sequence[Row], valid: float = 0.1, test: float = 0.1,
                     seed: int = 0) -> dict[str, list[Row]]:
    """Split each primary category (first one) on its own, in a seeded random order.

    A category of ``n`` records gives ``round(n * test)`` to test and ``round(n * valid)`` to valid, but always
    keeps at least one record in train: rare categories stay in train. Each part keeps the input order.
    """
    _check_fractions(valid, test)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[record_categories(row)[0]].append(index)
    rng = random.Random(seed)
    part_of: dict[int, str] = {}
    for category in sorted(groups):
        indices = groups[category]
        rng.shuffle(indices)
        n_test = min(_round(len(indices) * test), len(indices) - 1)
        n_valid = min(_round(len(indices) * valid), len(indices) - 1 - n_test)
        for position, index in enumerate(indices):
            part_of[index] = "test" if position < n_test else "valid" if position < n_test + n_valid else "train"
    return {name: [row for index, row in enumerate(rows) if part_of[index] == name] for name in SPLIT_NAMES}


def time_split(rows: Sequence[Row], valid: float = 0.1, test: float = 0.1,
               date_field: str = "date") -> dict[str, list[Row]]:
    """Oldest records to train, the next to valid, the newest to test (ties broken by id).

    Rows without a ``date_field`` value cannot be placed: pass only dated rows (see :func:`undated`).
    """
    _check_fractions(valid, test)
    ordered = sorted(rows, key=lambda row: (str(row[date_field]), str(row.get("id"))))
    n_test = _round(len(ordered) * test)
    n_valid = _round(len(ordered) * valid)
    n_train = len(ordered) - n_test - n_valid
    return {
        "train": ordered[:n_train],
        "valid": ordered[n_train:n_train + n_valid],
        "test": ordered[n_train + n_valid:],
    }


def undated(rows: Sequence[Row], date_field: str = "date") -> list[Row]:
    return [row for row in rows if not row.get(date_field)]


def _round(value: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return int(value + 0.5)
