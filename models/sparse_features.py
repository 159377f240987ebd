"""TF-IDF features over a fitted word 1-2-gram vocabulary, as inputs of an ``EmbeddingBag(mode="sum")``.

Sublinear term frequency (1 + log tf), smooth idf (ln((1 + n) / (1 + df)) + 1) and L2 normalisation, as
scikit-learn's ``TfidfVectorizer(sublinear_tf=True)`` computes them. The vocabulary is saved as JSON, the idf
vector with the weights (safetensors). :class:`TermIndex` counts a whole batch's terms at once: the hot loop of
``linear`` inference.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import methodcaller
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


def l2_normalised_bags(weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``weights`` (the inputs of an ``EmbeddingBag`` with bag starts ``offsets``) divided by their bag's L2 norm
    (an empty or all-zero bag stays zero)."""
    lengths = torch.diff(offsets, append=torch.tensor([len(weights)], device=offsets.device))
    bag = torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), lengths)
    norms = torch.zeros(len(offsets), device=weights.device).index_add_(0, bag, weights.square())
    return weights / norms.sqrt().clamp_min(1e-12)[bag]


class _WordIds(dict[str, int]):
    """Word -> id, 0 for a word outside the vocabulary (``__getitem__`` mapped in C, no per-word branching)."""

    def __missing__(self, word: str) -> int:
        return 0


class TermIndex:
    """The vocabulary rows of the word unigrams and bigrams of texts, counted per text, a batch at a time.

    Words become ids through one dict lookup each; a bigram is the integer pair of its word ids, looked up in a
    sorted array. Counting is numpy over the whole batch, so no n-gram string is built: the same rows and counts
    as :func:`ngrams` with a dict, about twice as fast.
    """

    def __init__(self, terms: Sequence[str]) -> None:
        # Whole-vocabulary steps (dicts built from iterators, ``map`` over str methods): loading 300k terms is
        # part of a model's load time.
        spaces = np.fromiter(map(methodcaller("count", " "), terms), dtype=np.int64, count=len(terms))
        unigram_rows, pair_rows = np.flatnonzero(spaces == 0), np.flatnonzero(spaces == 1)  # others never match
        unigrams = [terms[i] for i in unigram_rows.tolist()]
        pair_words = " ".join(terms[i] for i in pair_rows.tolist()).split(" ")  # w1 w2 w1 w2 ...
        firsts, seconds = (pair_words[0::2], pair_words[1::2]) if len(pair_words) > 1 else ([], [])
        self.word_ids = _WordIds((word, i) for i, word in enumerate(dict.fromkeys(unigrams), start=1))
        for word in sorted(set(pair_words) - self.word_ids.keys()):  # words only seen in pairs
            self.word_ids[word] = len(self.word_ids) + 1
        self.num_words = len(self.word_ids) + 1
        self.num_rows = len(terms)
        self.unigram_row = np.full(self.num_words, -1, dtype=np.int64)
        self.unigram_row[np.fromiter(map(self.word_ids.__getitem__, unigrams), np.int64, len(unigrams))] = unigram_rows
        first = np.fromiter(map(self.word_ids.__getitem__, firsts), np.int64, len(firsts))
        second = np.fromiter(map(self.word_ids.__getitem__, seconds), np.int64, len(seconds))
        keys = first * self.num_words + second
        order = np.argsort(keys, kind="stable")
        self.pair_keys, self.pair_rows = keys[order], pair_rows[order]

    def count(self, texts: Sequence[str], max_words: int | None = None,
              chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows``, ``offsets`` (start of each text in ``rows``) and ``counts`` of the vocabulary terms of each
        text's first ``max_words`` words, each row once per text (in no particular order within a text)."""
        parts = [self._count(texts[start:start + chunk_size], max_words) for start in range(0, len(texts), chunk_size)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.cumsum([0] + [len(rows) for rows, _, _ in parts[:-1]])
        return (np.concatenate([rows for rows, _, _ in parts]),
                np.concatenate([offsets + start for (_, offsets, _), start in zip(parts, starts, strict=True)]),
                np.concatenate([counts for _, _, counts in parts]))

    def _count(self, texts: Sequence[str], max_words: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tokens: list[str] = []
        lengths: list[int] = []
        for text in texts:
            found = words(text)[:max_words]
            lengths.append(len(found))
            tokens.extend(found)
        ids = np.fromiter(map(self.word_ids.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        # unigrams: unique (text, row) keys with their counts
        rows = self.unigram_row[ids]
        known = rows >= 0
        uni_keys, uni_counts = np.unique(doc[known] * self.num_rows + rows[known], return_counts=True)
        # bigrams: unique (text, word pair) keys, then the pairs that are vocabulary terms
        same_text = doc[1:] == doc[:-1]
        span = self.num_words * self.num_words
        pair = ids[:-1][same_text] * self.num_words + ids[1:][same_text]
        pair_keys, pair_counts = np.unique(doc[:-1][same_text] * span + pair, return_counts=True)
        pair = pair_keys % span
        at = (np.searchsorted(self.pair_keys, pair, side="right") - 1).clip(min=0)  # a repeated term: its last row
        hit = self.pair_keys[at] == pair if len(self.pair_keys) else np.zeros(len(pair), dtype=bool)
        text_of = np.concatenate([uni_keys // self.num_rows, pair_keys[hit] // span])
        order = np.argsort(text_of, kind="stable")
        out_rows = np.concatenate([uni_keys % self.num_rows, self.pair_rows[at[hit]]])[order]
        counts = np.concatenate([uni_counts, pair_counts[hit]])[order]
        offsets = np.searchsorted(text_of[order], np.arange(len(texts)))
        return out_rows, offsets, counts


class TfidfFeaturizer:
    """Texts -> (ids, offsets, weights) of their L2-normalised TF-IDF vectors."""

    def __init__(self, vocabulary: Sequence[str], idf: torch.Tensor | np.ndarray, max_words: int = 512) -> None:
        self.vocabulary = list(vocabulary)
        self.index = TermIndex(self.vocabulary)
        self.idf = torch.as_tensor(idf, dtype=torch.float32)
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self.vocabulary)

    def featurize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``sparse_ids``, ``sparse_offsets`` and ``sparse_weights`` of ``texts`` (a text with no known n-gram
        gives an empty bag, i.e. a zero vector)."""
        rows, offsets, counts = self.index.count(texts, self.max_words)
        ids, offsets_tensor = torch.from_numpy(rows), torch.from_numpy(offsets)
        weights = torch.from_numpy(np.log(counts.astype(np.float32)) + 1.0) * self.idf[ids]
        return {"sparse_ids": ids, "sparse_offsets": offsets_tensor,
                "sparse_weights": l2_normalised_bags(weights, offsets_tensor)}

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
