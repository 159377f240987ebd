"""TF-IDF features over a fitted word 1-2-gram vocabulary, as inputs of an ``EmbeddingBag(mode="sum")``.

Sublinear term frequency (1 + log tf), smooth idf (ln((1 + n) / (1 + df)) + 1) and L2 normalisation, as
scikit-learn's ``TfidfVectorizer(sublinear_tf=True)`` computes them. The vocabulary is saved as JSON, the idf
vector with the weights (safetensors). :class:`TermIndex` counts a whole batch's terms at once: the hot loop of
``linear`` inference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import methodcaller
from pathlib import Path

import numpy as np
import torch

from models.archs.bag import words

VOCABULARY_FILE = "vocabulary.json"


def ngrams(text: str, max_words: int | None = None) -> list[str]:
    """Word unigrams and bigrams of ``text`` (lower-cased, as the ``bag`` model splits words)."""
    tokens = words(text)[:max_words]
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def fit_vocabulary(texts: Iterable[str], max_features: int, min_df: int = 2,
                   max_words: int | None = None, chunk_size: int = 1024) -> tuple[list[str], np.ndarray]:
    """The ``max_features`` n-grams in most documents (at least ``min_df``; ties by name) and their idf,
    counted a chunk of texts at a time (:class:`DocumentFrequencies`)."""
    counter = DocumentFrequencies(max_words)
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == chunk_size:
            counter.add(chunk)
            chunk = []
    counter.add(chunk)
    return counter.vocabulary(max_features, min_df)


def l2_normalised_bags(weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``weights`` (the inputs of an ``EmbeddingBag`` with bag starts ``offsets``) divided by their bag's L2 norm
    (an empty or all-zero bag stays zero)."""
    lengths = torch.diff(offsets, append=torch.tensor([len(weights)], device=offsets.device))
    bag = torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), lengths)
    norms = torch.zeros(len(offsets), device=weights.device).index_add_(0, bag, weights.square())
    return weights / norms.sqrt().clamp_min(1e-12)[bag]


# ---------------------------------------------------------------------------------------------- word split

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_SEPARATOR = "\n"  # not a word character: no word spans two texts


@lru_cache(maxsize=1)
def _word_characters() -> np.ndarray:
    """For every code point, whether ``\\w`` (as :data:`models.archs.bag.WORD` uses it) matches it: read from the
    regex itself, so that the vectorised split below finds exactly the words of :func:`models.archs.bag.words`."""
    table = np.zeros(0x110000, dtype=bool)
    everything = "".join(map(chr, range(0x110000)))
    for match in re.finditer(r"\w+", everything):
        table[match.start():match.end()] = True
    return table


@lru_cache(maxsize=8)
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``M**i`` and ``M**-i`` modulo 2**64 for i < ``n`` (numpy's uint64 arithmetic wraps)."""
    inverse = pow(int(_MULTIPLIER), -1, 2**64)
    forward = np.full(n, _MULTIPLIER, dtype=np.uint64)
    forward[0] = 1
    backward = np.full(n, np.uint64(inverse), dtype=np.uint64)
    backward[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(forward), np.cumprod(backward)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _span_hashes(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each span ``points[start:end]`` (the same for the same characters wherever
    they are), from one prefix sum over all of ``points``."""
    size = 1 << max(10, int(len(points)).bit_length())  # a few cached sizes
    forward, backward = _powers(size)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(points) + 1, dtype=np.uint64)
        np.cumsum(points.astype(np.uint64) * forward[: len(points)], out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * backward[starts]


def string_hashes(strings: Sequence[str]) -> np.ndarray:
    """:func:`_span_hashes` of whole strings (as :func:`split_words` hashes the words it finds)."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    ends = np.cumsum(lengths)
    return _span_hashes(_code_points("".join(strings)), ends - lengths, ends)


@dataclass
class Words:
    """The words of a batch of texts, in order: ``hashes`` (64-bit), ``doc`` (the text each is in), and
    ``starts``/``ends`` in ``joined`` (the lower-cased texts joined by newlines), to read a word back."""

    hashes: np.ndarray
    doc: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    joined: str

    def word(self, i: int) -> str:
        return self.joined[self.starts[i]:self.ends[i]]


def split_words(texts: Sequence[str], max_words: int | None = None) -> Words:
    """The words of ``texts`` (``\\w+(?:[-']\\w+)*`` of the lower-cased text, the first ``max_words`` of each),
    found with array operations over the code points of the whole batch: no per-word Python step.

    A word character is what ``\\w`` matches; ``-`` or ``'`` joins two words when both its neighbours are word
    characters. Each word is identified by a 64-bit hash of its characters (polynomial modulo 2**64: two distinct
    words share one with probability ~2**-64, which only merges two features)."""
    lowered = [text.lower() for text in texts]
    joined = _SEPARATOR.join(lowered)
    points = _code_points(joined)
    if not len(points):
        empty = np.zeros(0, dtype=np.int64)
        return Words(empty.astype(np.uint64), empty, empty, empty, joined)
    word = _word_characters()[points]
    joiner = (points == 45) | (points == 39)  # - '
    joiner[0] = joiner[-1] = False
    joiner[1:-1] &= word[:-2] & word[2:]
    inside = np.zeros(len(points) + 2, dtype=np.int8)
    inside[1:-1] = word | joiner
    edges = np.diff(inside)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    text_starts = np.cumsum([0] + [len(text) + 1 for text in lowered[:-1]])
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    if max_words is not None:
        first = np.searchsorted(doc, np.arange(len(texts)))
        keep = np.arange(len(doc)) - first[doc] < max_words
        starts, ends, doc = starts[keep], ends[keep], doc[keep]
    return Words(_span_hashes(points, starts, ends), doc, starts, ends, joined)


class KeyTable:
    """Integer keys -> values (>= 0), looked up a whole array at once: open addressing with linear probing in
    numpy arrays, at most half full. A query costs one or two memory reads, where ``searchsorted`` over 300k
    sorted keys costs ~19 (the largest part of ``linear`` inference before). A repeated key keeps its last
    value, as a dict built from the pairs."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = keys.astype(np.uint64)
        bits = max(4, (2 * len(keys)).bit_length())
        self._shift, self._mask = np.uint64(64 - bits), (1 << bits) - 1
        self._slots_kv = np.zeros((1 << bits, 2), dtype=np.int64)  # key (as int64 bits), value: one read a probe
        self._slots_kv[:, 1] = -1
        unique, first_from_end = np.unique(keys[::-1], return_index=True)
        keys, values = unique, np.asarray(values, dtype=np.int64)[len(keys) - 1 - first_from_end]
        slots, pending = self._slots(keys), np.arange(len(keys))
        while len(pending):
            free = self._slots_kv[slots[pending], 1] == -1
            _, first = np.unique(slots[pending[free]], return_index=True)  # one key per free slot
            placed = pending[free][first]
            self._slots_kv[slots[placed], 0] = keys[placed].view(np.int64)
            self._slots_kv[slots[placed], 1] = values[placed]
            waiting = np.ones(len(pending), dtype=bool)
            waiting[np.flatnonzero(free)[first]] = False
            pending = pending[waiting]
            slots[pending] = (slots[pending] + 1) & self._mask

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _MULTIPLIER) >> self._shift).astype(np.int64)  # Fibonacci hashing: the top bits

    def get(self, queries: np.ndarray) -> np.ndarray:
        """The value of each query, -1 where it is no key."""
        queries = queries.astype(np.uint64, copy=False)
        found = np.full(len(queries), -1, dtype=np.int64)
        slots, active = self._slots(queries), np.arange(len(queries))
        signed = queries.view(np.int64)
        while len(active):
            pairs = self._slots_kv[slots[active]]
            values = pairs[:, 1]
            hit = pairs[:, 0] == signed[active]
            found[active[hit]] = values[hit]
            active = active[~hit & (values != -1)]  # an empty slot ends the probe
            slots[active] = (slots[active] + 1) & self._mask
        return found


class TermIndex:
    """The vocabulary rows of the word unigrams and bigrams of texts, counted per text, a batch at a time.

    Words are found and hashed by :func:`split_words` (array operations), looked up among the vocabulary's
    word hashes with one ``searchsorted``; a bigram is the integer pair of its word ids, looked up in a sorted
    array. No n-gram string is built: the same rows and counts as :func:`ngrams` with a dict.
    """

    def __init__(self, terms: Sequence[str]) -> None:
        # Whole-vocabulary steps (array operations, ``map`` over str methods): loading 300k terms is part of a
        # model's load time.
        spaces = np.fromiter(map(methodcaller("count", " "), terms), dtype=np.int64, count=len(terms))
        unigram_rows, pair_rows = np.flatnonzero(spaces == 0), np.flatnonzero(spaces == 1)  # others never match
        unigrams = [terms[i] for i in unigram_rows.tolist()]
        pair_words = " ".join(terms[i] for i in pair_rows.tolist()).split(" ") if len(pair_rows) else []
        hashes = string_hashes(unigrams + pair_words)  # w ... w, then w1 w2 w1 w2 ...
        word_hashes = np.unique(hashes)
        self.words = KeyTable(word_hashes, np.arange(1, len(word_hashes) + 1))  # word id, from 1
        self.num_words = len(word_hashes) + 1  # id 0: a word outside the vocabulary
        self.num_rows = len(terms)
        ids = self.word_ids(hashes)
        self.unigram_row = np.full(self.num_words, -1, dtype=np.int64)
        self.unigram_row[ids[: len(unigrams)]] = unigram_rows  # a repeated term: its last row
        pairs = ids[len(unigrams):]
        self.pairs = KeyTable(pairs[0::2] * self.num_words + pairs[1::2], pair_rows)  # a repeated term: its last row

    def word_ids(self, hashes: np.ndarray) -> np.ndarray:
        """The id (1..) of each word hash, 0 for a word outside the vocabulary."""
        return self.words.get(hashes).clip(min=0)

    def count(self, texts: Sequence[str], max_words: int | None = None,
              chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows``, ``offsets`` (start of each text in ``rows``) and ``counts`` of the vocabulary terms of each
        text's first ``max_words`` words, each row once per text (in no particular order within a text)."""
        parts = [self._count(texts[start:start + chunk_size], max_words) for start in range(0, len(texts), chunk_size)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [len(rows) for rows, _, _ in parts[:-1]])
        return (np.concatenate([rows for rows, _, _ in parts]),
                np.concatenate([offsets + start for (_, offsets, _), start in zip(parts, starts, strict=True)]),
                np.concatenate([counts for _, _, counts in parts]))

    def _count(self, texts: Sequence[str], max_words: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = split_words(texts, max_words)
        return self.count_ids(self.word_ids(found.hashes), found.doc, len(texts))

    def count_ids(self, ids: np.ndarray, doc: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`count` from the word ids (:meth:`word_ids`) of ``n_texts`` texts and the text of each word."""
        # unigrams: unique (text, row) keys with their counts
        rows = self.unigram_row[ids]
        known = rows >= 0
        uni_keys, uni_counts = np.unique(doc[known] * self.num_rows + rows[known], return_counts=True)
        # bigrams: unique (text, word pair) keys, then the pairs that are vocabulary terms
        same_text = (doc[1:] == doc[:-1]) & (ids[1:] > 0) & (ids[:-1] > 0)
        span = self.num_words * self.num_words
        pair = ids[:-1][same_text] * self.num_words + ids[1:][same_text]
        pair_keys, pair_counts = np.unique(doc[:-1][same_text] * span + pair, return_counts=True)
        pair_rows = self.pairs.get(pair_keys % span)
        hit = pair_rows >= 0
        text_of = np.concatenate([uni_keys // self.num_rows, pair_keys[hit] // span])
        order = np.argsort(text_of, kind="stable")
        out_rows = np.concatenate([uni_keys % self.num_rows, pair_rows[hit]])[order]
        counts = np.concatenate([uni_counts, pair_counts[hit]])[order]
        offsets = np.searchsorted(text_of[order], np.arange(n_texts))
        return out_rows, offsets, counts


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values (a sort: numpy 2's hash-based ``np.unique`` is several times slower on int64)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


class DocumentFrequencies:
    """How many texts hold each word unigram and bigram, counted a batch at a time in memory that grows with
    the number of distinct n-grams, not of texts: words are 64-bit hashes (:func:`split_words`) given ids in
    order of appearance (their strings kept once each), a bigram is the integer pair of its word ids, counts
    are numpy arrays (bigram counts merged as they grow). No n-gram string is built before
    :meth:`vocabulary` picks the terms."""

    _PAIR = np.int64(1 << 32)  # a bigram's key: first id * 2**32 + second id

    def __init__(self, max_words: int | None = None) -> None:
        self.max_words = max_words
        self.documents = 0
        self.words: list[str] = []  # by id
        self._hashes = np.zeros(0, dtype=np.uint64)  # known word hashes, sorted
        self._ids = np.zeros(0, dtype=np.int64)  # the id of each
        self._word_df = np.zeros(0, dtype=np.int64)
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, counts); the first is the merged one

    def add(self, texts: Sequence[str]) -> None:
        """Count the n-grams of ``texts`` (each at most once per text)."""
        if not texts:
            return
        found = split_words(texts, self.max_words)
        if (len(self.words) + len(found.hashes)) ** 2 * len(texts) >= 2**62 and len(texts) > 1:
            half = len(texts) // 2  # (text, pair) keys could overflow int64: count in halves
            self.add(texts[:half])
            self.add(texts[half:])
            return
        self.documents += len(texts)
        if not len(found.hashes):
            return
        ids, doc = self._word_ids(found), found.doc
        span = np.int64(len(self.words))
        per_text = _unique(doc * span + ids)
        self._word_df = np.bincount(per_text % span, minlength=len(self.words)) + np.pad(
            self._word_df, (0, len(self.words) - len(self._word_df)))
        same_text = doc[1:] == doc[:-1]
        pair_of_text = _unique((doc[1:][same_text] * span + ids[:-1][same_text]) * span + ids[1:][same_text])
        first, second = (pair_of_text // span) % span, pair_of_text % span
        keys, counts = np.unique(first * self._PAIR + second, return_counts=True)
        self._pairs.append((keys, counts))
        if sum(len(k) for k, _ in self._pairs[1:]) >= len(self._pairs[0][0]):
            self._merge()

    def _word_ids(self, found: Words) -> np.ndarray:
        """Ids of the words found, new words added (with their strings)."""
        unique, first, inverse = np.unique(found.hashes, return_index=True, return_inverse=True)
        at = np.searchsorted(self._hashes, unique).clip(max=max(len(self._hashes) - 1, 0))
        known = self._hashes[at] == unique if len(self._hashes) else np.zeros(len(unique), dtype=bool)
        new = np.flatnonzero(~known)
        new_ids = np.arange(len(self.words), len(self.words) + len(new))
        self.words.extend(found.word(i) for i in first[new].tolist())
        ids = np.empty(len(unique), dtype=np.int64)
        ids[known] = self._ids[at[known]]
        ids[new] = new_ids
        where = np.searchsorted(self._hashes, unique[new])
        self._hashes = np.insert(self._hashes, where, unique[new])
        self._ids = np.insert(self._ids, where, new_ids)
        return ids[inverse.reshape(-1)]

    def _merge(self) -> None:
        keys = np.concatenate([k for k, _ in self._pairs])
        counts = np.concatenate([c for _, c in self._pairs])
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
        self._pairs = [(keys[starts], np.add.reduceat(counts, starts) if len(keys) else counts)]

    def vocabulary(self, max_features: int, min_df: int = 2) -> tuple[list[str], np.ndarray]:
        """The ``max_features`` n-grams in most texts (at least ``min_df``; ties by name) and their smooth idf."""
        if len(self._pairs) > 1:
            self._merge()
        pair_keys, pair_df = self._pairs[0] if self._pairs else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        word_rows = np.flatnonzero(self._word_df >= min_df)
        pair_rows = np.flatnonzero(pair_df >= min_df)
        df = np.concatenate([self._word_df[word_rows], pair_df[pair_rows]])
        if len(df) > max_features:  # the highest counts, and at the cut only the names needed
            cut = np.partition(df, len(df) - max_features)[len(df) - max_features]
            chosen = np.flatnonzero(df >= cut)
        else:
            chosen = np.arange(len(df))
        words, n_words = self.words, len(word_rows)
        pairs = pair_keys[pair_rows].tolist()
        names = [words[word_rows[i]] if i < n_words else
                 f"{words[pairs[i - n_words] >> 32]} {words[pairs[i - n_words] & 0xFFFFFFFF]}"
                 for i in chosen.tolist()]
        counts = df[chosen].tolist()
        ranked = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))[:max_features]
        kept = [names[i] for i in ranked]
        kept_df = np.array([counts[i] for i in ranked], dtype=np.float64)
        idf = (np.log((1 + self.documents) / (1 + kept_df)) + 1).astype(np.float32)
        return kept, idf


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
