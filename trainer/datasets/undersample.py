"""Multi-label-aware undersampling: cap frequent categories, keep every record that carries a rare one."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

NO_CATEGORY = "(none)"  # records without categories are capped like a category of their own


def record_categories(row: Mapping[str, Any]) -> list[str]:
    return list(row.get("categories") or []) or [NO_CATEGORY]


def category_counts(rows: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """How many records carry each category (a record counts once for each of its categories)."""
    return Counter(cat for row in rows for cat in set(record_categories(row)))


def undersample(rows: Sequence[Mapping[str, Any]], threshold: int, seed: int = 0) -> list[Mapping[str, Any]]:
    """Keep every record carrying a rare category (fewer than ``threshold`` records); of the others, visited in
    a seeded random order, keep a record while any of its categories has fewer than ``threshold`` kept.

    Each frequent category keeps at least ``threshold`` records; it may keep more through records it shares
    with rare or other under-filled categories. The kept records stay in their input order.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    counts = category_counts(rows)
    rare = {cat for cat, count in counts.items() if count < threshold}
    keep = [bool(rare.intersection(record_categories(row))) for row in rows]
    kept: Counter[str] = Counter()
    for index, row in enumerate(rows):
        if keep[index]:
            kept.update(set(record_categories(row)))
    order = [index for index, flag in enumerate(keep) if not flag]
    random.Random(seed).shuffle(order)
    for index in order:
        cats = set(record_categories(rows[index]))
        if any(kept[cat] < threshold for cat in cats):
            keep[index] = True
            kept.update(cats)
    return [row for row, flag in zip(rows, keep, strict=True) if flag]
