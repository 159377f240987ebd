"""``linear``: TF-IDF word uni+bigrams (a learned vocabulary) -> one sparse linear layer per head. The default.

No bottleneck: every vocabulary term has its own weight for every category (an ``EmbeddingBag(mode="sum")``
whose rows are the terms and whose columns are the 3 coreness logits and the category logits), fed with
sublinear TF-IDF weights (``1 + log tf`` times the term's IDF, L2-normalised) through ``per_sample_weights``.
The vocabulary is ``vocabulary.json`` (terms, in row order) beside the weights; IDFs are a buffer in
``model.safetensors``. Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.base import ClassifierOutput
from models.sparse_features import TermIndex, fit_vocabulary, l2_normalised_bags

VOCABULARY_FILE = "vocabulary.json"
DEFAULT_MAX_TERMS = 300_000
DEFAULT_MIN_DF = 2


class HeadBias(nn.Module):
    """The bias of one head (the weights live in the shared sparse table)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class LinearClassifier(nn.Module):
    """One-vs-rest logistic regression (categories) and softmax regression (coreness) on TF-IDF features."""

    arch = "linear"

    def __init__(self, num_categories: int, terms: Sequence[str], idf: Sequence[float] | None = None,
                 input_dropout: float = 0.0, max_seq_length: int = 512, *, zero_weights: bool = True) -> None:
        super().__init__()
        if not terms:
            raise ValueError("the linear model needs a non-empty vocabulary")
        self.num_categories = num_categories
        self.terms = list(terms)
        self.index = TermIndex(self.terms)
        self.input_dropout = input_dropout
        self.max_seq_length = max_seq_length
        self.register_buffer("idf", torch.tensor(list(idf) if idf is not None else [1.0] * len(self.terms),
                                                 dtype=torch.float32))
        shape = (len(self.terms), 3 + num_categories)  # zeros to train; left unset when a checkpoint fills them
        self.weights = nn.EmbeddingBag(*shape, mode="sum", sparse=True,
                                       _weight=torch.zeros(shape) if zero_weights else torch.empty(shape))
        self.coreness_head = HeadBias(3)
        self.category_head = HeadBias(num_categories)

    @classmethod
    def from_texts(cls, texts: Sequence[str], num_categories: int, max_terms: int = DEFAULT_MAX_TERMS,
                   min_df: int = DEFAULT_MIN_DF, **params: Any) -> LinearClassifier:
        """A fresh model whose vocabulary is learned from the training ``texts``."""
        terms, idf = fit_vocabulary(texts, max_terms, min_df, params.get("max_seq_length"))
        if not terms:  # tiny data: every term once
            terms, idf = fit_vocabulary(texts, max_terms, 1, params.get("max_seq_length"))
        return cls(num_categories, terms, idf.tolist(), **params)

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path | None = None) -> LinearClassifier:
        if checkpoint_dir is None:
            raise ValueError("the linear model needs its checkpoint directory (vocabulary.json)")
        path = Path(checkpoint_dir) / VOCABULARY_FILE
        try:
            terms = json.loads(path.read_text(encoding="utf-8"))["terms"]
        except FileNotFoundError:
            raise ValueError(f"{path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a vocabulary file: {exc}") from None
        return cls(len(config["category_labels"]), terms, input_dropout=config.get("input_dropout", 0.0),
                   max_seq_length=config.get("max_seq_length", 512), zero_weights=False)

    def arch_config(self) -> dict[str, Any]:
        return {"vocabulary_size": len(self.terms), "input_dropout": self.input_dropout,
                "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Vocabulary ids of each text's terms (once each), their bag offsets, and sublinear term frequencies."""
        rows, offsets, counts = self.index.count(texts, max_length or self.max_seq_length)
        return {"ids": torch.from_numpy(rows), "offsets": torch.from_numpy(offsets),
                "tf": torch.from_numpy(np.log(counts.astype(np.float32)) + 1.0)}

    def count_tokens(self, text: str) -> int:
        # A record's text has single spaces (models/records.py): its words are counted without splitting it.
        n = min(text.count(" ") + 1 if text else 0, self.max_seq_length)
        return max(1, 2 * n - 1)

    def save_extra(self, out_dir: Path) -> None:
        (out_dir / VOCABULARY_FILE).write_text(json.dumps({"terms": self.terms}, ensure_ascii=False))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, tf: torch.Tensor) -> ClassifierOutput:
        weights = tf * self.idf[ids]
        if self.training and self.input_dropout > 0:
            weights = weights * torch.bernoulli(torch.full_like(weights, 1 - self.input_dropout))
        logits = self.weights(ids, offsets, per_sample_weights=l2_normalised_bags(weights, offsets))
        return ClassifierOutput(logits[:, :3] + self.coreness_head.bias, logits[:, 3:] + self.category_head.bias)

