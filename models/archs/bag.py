"""``bag``: hashed word uni+bigrams -> EmbeddingBag(mean) -> coreness and category heads. Fast on CPU."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.archs.base import ClassifierOutput

WORD = re.compile(r"\w+(?:[-']\w+)*")
DEFAULT_BUCKETS = 2**18


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def hashed_ngrams(text: str, num_buckets: int, max_words: int | None = None) -> list[int]:
    """Bucket ids of the word unigrams and bigrams of ``text`` (crc32: stable across runs and hosts)."""
    tokens = words(text)[:max_words]
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    return [zlib.crc32(gram.encode("utf-8")) % num_buckets for gram in grams]


class BagClassifier(nn.Module):
    """A fastText-style baseline: mean of hashed n-gram embeddings, then two linear heads."""

    arch = "bag"

    def __init__(self, num_categories: int, num_buckets: int = DEFAULT_BUCKETS, embed_dim: int = 64,
                 dropout: float = 0.1, max_seq_length: int = 512) -> None:
        super().__init__()
        self.num_categories = num_categories
        self.num_buckets = num_buckets
        self.embed_dim = embed_dim
        self.dropout_p = dropout
        self.max_seq_length = max_seq_length
        self.embedding = nn.EmbeddingBag(num_buckets, embed_dim, mode="mean", sparse=True)  # sparse grads: fast steps
        self.dropout = nn.Dropout(dropout)
        self.coreness_head = nn.Linear(embed_dim, 3)
        self.category_head = nn.Linear(embed_dim, num_categories)

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path | None = None) -> BagClassifier:
        return cls(len(config["category_labels"]), num_buckets=config["num_buckets"], embed_dim=config["embed_dim"],
                   dropout=config.get("dropout", 0.1), max_seq_length=config.get("max_seq_length", 512))

    def arch_config(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets, "embed_dim": self.embed_dim, "dropout": self.dropout_p,
                "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        max_words = max_length or self.max_seq_length
        bags = [hashed_ngrams(text, self.num_buckets, max_words) for text in texts]
        offsets = torch.tensor([0] + [len(bag) for bag in bags[:-1]], dtype=torch.long).cumsum(0)
        ids = torch.tensor([i for bag in bags for i in bag], dtype=torch.long)
        return {"ids": ids, "offsets": offsets}

    def count_tokens(self, text: str) -> int:
        # A record's text has single spaces (models/records/schema.py): its words are counted without splitting it.
        n = min(text.count(" ") + 1 if text else 0, self.max_seq_length)
        return max(1, 2 * n - 1)

    def save_extra(self, out_dir: Path) -> None:
        """Nothing besides the weights: the hashing is fixed."""

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> ClassifierOutput:
        pooled = self.dropout(self.embedding(ids, offsets))
        return ClassifierOutput(self.coreness_head(pooled), self.category_head(pooled))
