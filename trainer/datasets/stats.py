"""Dataset statistics: label counts, text lengths and duplicates, as text tables and a PNG plot."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.records.schema import CORENESS_LABELS
from trainer.datasets.undersample import category_counts

_NON_WORD = re.compile(r"[\W_]+")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells_ = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))
        return "  ".join(cells_).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])]).rstrip()


def normalise_title(title: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: the key for duplicate titles."""
    return " ".join(_NON_WORD.sub(" ", title.lower()).split())


def _duplicates(keys: Sequence[str]) -> int:
    """How many rows repeat a key seen before (so ``a, a, a`` counts 2)."""
    return sum(count - 1 for count in Counter(keys).values() if count > 1)


@dataclass
class DatasetStats:
    records: int
    categories: Counter[str]
    coreness: Counter[str]
    text_lengths: list[int] = field(repr=False)
    duplicate_ids: int
    duplicate_titles: int

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]]) -> DatasetStats:
        return cls(
            records=len(rows),
            categories=category_counts(rows),
            coreness=Counter(str(row.get("coreness")) for row in rows),
            text_lengths=[len(row.get("title") or "") + len(row.get("abstract") or "") for row in rows],
            duplicate_ids=_duplicates([str(row.get("id")) for row in rows]),
            duplicate_titles=_duplicates([normalise_title(row.get("title") or "") for row in rows if row.get("title")]),
        )

    def length_summary(self) -> dict[str, int]:
        """min / median / p95 / max of title + abstract length in characters."""
        if not self.text_lengths:
            return {"min": 0, "median": 0, "p95": 0, "max": 0}
        lengths = np.asarray(self.text_lengths)
        return {
            "min": int(lengths.min()),
            "median": int(np.median(lengths)),
            "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "categories": dict(self.categories.most_common()),
            "coreness": dict(self.coreness.most_common()),
            "text_length_chars": self.length_summary(),
            "duplicate_ids": self.duplicate_ids,
            "duplicate_titles": self.duplicate_titles,
        }

    def report(self, top: int | None = None) -> str:
        """Text tables: overview, coreness, text length, and categories (the ``top`` most frequent)."""
        total = max(self.records, 1)
        overview = format_table(["", "count"], [
            ["records", self.records], ["duplicate ids", self.duplicate_ids],
            ["duplicate titles", self.duplicate_titles], ["categories", len(self.categories)],
        ])
        labels = [*CORENESS_LABELS, *sorted(set(self.coreness) - set(CORENESS_LABELS))]
        coreness = format_table(["coreness", "records", "%"], [
            [label, self.coreness[label], round(100 * self.coreness[label] / total, 1)] for label in labels
        ])
        lengths = format_table(["text length (chars)", "value"], list(self.length_summary().items()))
        shown = self.categories.most_common(top)
        categories = format_table(["category", "records", "%"], [
            [cat, count, round(100 * count / total, 1)] for cat, count in shown
        ])
        more = len(self.categories) - len(shown)
        tail = [f"... {more} more categories"] if more else []
        return "\n\n".join([overview, coreness, lengths, categories, *tail])

    def plot(self, out: str | Path, top: int = 30) -> Path:
        """A PNG with the category counts (``top`` most frequent), coreness counts and text length histogram."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_cat, ax_core, ax_len) = plt.subplots(
            1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 1, 2]}, layout="constrained"
        )
        cats = self.categories.most_common(top)
        ax_cat.barh([c for c, _ in reversed(cats)], [n for _, n in reversed(cats)])
        ax_cat.set_title(f"records per category (top {len(cats)} of {len(self.categories)})")
        ax_cat.tick_params(axis="y", labelsize=7)
        ax_core.bar(list(self.coreness), list(self.coreness.values()))
        ax_core.set_title("records per coreness")
        ax_len.hist(self.text_lengths or [0], bins=50)
        ax_len.set_title("title + abstract length (characters)")
        ax_len.set_xlabel("characters")
        fig.suptitle(f"{self.records} records, {self.duplicate_ids} duplicate ids, "
                     f"{self.duplicate_titles} duplicate titles")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
