"""Label helpers: the documented coreness *proxy* for arXiv data, and old->new arXiv category names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from models.records.schema import CorenessLabel

DEFAULT_PROXY_FILE = Path(__file__).resolve().parents[2] / "config" / "coreness_proxy.yaml"


def _matches(category: str, pattern: str) -> bool:
    return category.startswith(pattern[:-1]) if pattern.endswith("*") else category == pattern


@dataclass(frozen=True)
class CorenessProxy:
    """Maps arXiv categories to a proxy coreness label (see config/coreness_proxy.yaml)."""

    core: tuple[str, ...]
    non_core: tuple[str, ...]
    renamed_categories: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> CorenessProxy:
        return _load_proxy(str(path or DEFAULT_PROXY_FILE))

    def normalise(self, categories: Iterable[str]) -> list[str]:
        """Rename old-style categories to current names, dropping duplicates, keeping order."""
        out: list[str] = []
        for cat in categories:
            cat = self.renamed_categories.get(cat, cat)
            if cat not in out:
                out.append(cat)
        return out

    def label(self, categories: Sequence[str]) -> CorenessLabel:
        cats = self.normalise(categories)
        if any(_matches(c, p) for c in cats for p in self.core):
            return "core"
        if any(_matches(c, p) for c in cats for p in self.non_core):
            return "non_core"
        return "rejected"


@lru_cache(maxsize=8)
def _load_proxy(path: str) -> CorenessProxy:
    data = yaml.safe_load(Path(path).read_text()) or {}
    try:
        return CorenessProxy(
            core=tuple(data["core"]),
            non_core=tuple(data.get("non_core", [])),
            renamed_categories=dict(data.get("renamed_categories", {})),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"coreness proxy file {path} is malformed: {exc}") from exc
