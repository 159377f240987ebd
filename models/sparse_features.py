"""TF-IDF features over a fitted word 1-2-gram vocabulary, as inputs of an ``EmbeddingBag(mode="sum")``.

Sublinear term frequency (1 + log tf), smooth idf (ln((1 + n) / (1 + df)) + 1) and L2 normalisation, as
scikit-learn's ``TfidfVectorizer(sublinear_tf=True)`` computes them. The vocabulary is saved as JSON, the idf
vector with the weights (safetensors).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from models.bag import words

VOCABULARY_FILE = "vocabulary.json"


def ngrams(text: str, max_words: int | None = None) -> list[str]:
    """Word unigrams and bigrams of ``text`` (lower-cased, as the ``bag`` model splits words)."""
    tokens = words(text)[:max_words]
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def fit_vocabulary(texts: Iterable[str], max_features: int, min_df: int = 2,
                   max_words: int | None = None) -> tuple[list[str], np.ndarray]:
    """The ``max_features`` n-grams in most documents (at least ``min_df``; ties by name) and their idf."""
    df: Counter[str] = Counter()
    n_docs = 0
    for text in texts:
        df.update(set(ngrams(text, max_words)))
        n_docs += 1
    kept = sorted((gram for gram, count in df.items() if count >= min_df), key=lambda g: (-df[g], g))[:max_features]
    idf = np.array([math.log((1 + n_docs) / (1 + df[gram])) + 1 for gram in kept], dtype=np.float32)
    return kept, idf


class TfidfFeaturizer:
    """Texts -> (ids, offsets, weights) of their L2-normalised TF-IDF vectors."""

    def __init__(self, vocabulary: Sequence[str], idf: torch.Tensor | np.ndarray, max_words: int = 512) -> None:
        self.vocabulary = list(vocabulary)
        self.index = {gram: i for i, gram in enumerate(self.vocabulary)}
        self.idf = torch.as_tensor(idf, dtype=torch.float32)
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self.vocabulary)

    def featurize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``sparse_ids``, ``sparse_offsets`` and ``sparse_weights`` of ``texts`` (a text with no known n-gram
        gives an empty bag, i.e. a zero vector)."""
        ids: list[int] = []
        tfs: list[float] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            counts = Counter(self.index[g] for g in ngrams(text, self.max_words) if g in self.index)
            ids.extend(counts)
            tfs.extend(1.0 + math.log(c) for c in counts.values())
        id_tensor = torch.tensor(ids, dtype=torch.long)
        weights = torch.tensor(tfs, dtype=torch.float32) * self.idf[id_tensor]
        offset_tensor = torch.tensor(offsets, dtype=torch.long)
        # L2 norm per document
        lengths = torch.diff(offset_tensor, append=torch.tensor([len(ids)]))
        doc = torch.repeat_interleave(torch.arange(len(texts)), lengths)
        norms = torch.zeros(len(texts)).index_add_(0, doc, weights * weights).sqrt().clamp(min=1e-12)
        return {"sparse_ids": id_tensor, "sparse_offsets": offset_tensor, "sparse_weights": weights / norms[doc]}

    def save(self, out_dir: Path) -> None:
        (out_dir / VOCABULARY_FILE).write_text(json.dumps({"ngram_range": [1, 2], "lowercase": True,
                                                           "max_words": self.max_words,
                                                           "vocabulary": self.vocabulary}) + "\n")

    @staticmethod
    def read_vocabulary(checkpoint_dir: Path) -> tuple[list[str], int]:
        """The vocabulary and ``max_words`` saved in ``checkpoint_dir``."""
        data = json.loads((checkpoint_dir / VOCABULARY_FILE).read_text(encoding="utf-8"))
        vocabulary = data["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(g, str) for g in vocabulary):
            raise ValueError(f"{checkpoint_dir / VOCABULARY_FILE}: vocabulary must be a list of strings")
        return vocabulary, int(data.get("max_words", 512))
