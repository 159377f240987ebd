"""``TermIndex`` counts the same terms as the plain n-gram strings looked up in a dict, batch-wise."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections import Counter
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from models.archs.bag import words
from models.archs.linear import LinearClassifier
from models.archs.sparse_features import (
    KeyTable,
    TermIndex,
    TfidfFeaturizer,
    fit_vocabulary,
    ngrams,
    split_words,
    string_hashes,
)
from trainer.datasets.sample import generate_sample

ODD_TEXTS = [
    "",
    "   ",
    "Dark matter halos and dark matter halos: dark MATTER.",
    "Ünïcödé wörds, ΛCDM cosmology and Gödel's non-local theorem; x-ray x-ray x-ray",
    "the the the the the the",
    "a single",
    "!!! ??? ---",
    "İstanbul ſtraße ǅemal — mixed case Greek ΣΊΣΥΦΟΣ",
    "numbers 10 TeV 13.6 and under_scores a_b",
]


def reference_counts(terms: list[str], texts: list[str], max_words: int | None) -> list[Counter[int]]:
    """What ``linear`` computed before ``TermIndex``: n-gram strings looked up in a dict."""
    index = {term: row for row, term in enumerate(terms)}
    return [Counter(index[g] for g in ngrams(text, max_words) if g in index) for text in texts]


def counted(index: TermIndex, texts: list[str], max_words: int | None, chunk_size: int = 4096) -> list[Counter[int]]:
    rows, offsets, counts = index.count(texts, max_words, chunk_size=chunk_size)
    ends = [*offsets[1:].tolist(), len(rows)]
    return [Counter(dict(zip(rows[start:end].tolist(), counts[start:end].tolist(), strict=True)))
            for start, end in zip(offsets.tolist(), ends, strict=True)]


@pytest.mark.parametrize("max_words", [None, 3, 512])
def test_counts_match_the_ngram_strings_on_odd_texts(max_words: int | None) -> None:
    terms, _ = fit_vocabulary(ODD_TEXTS + ODD_TEXTS[2:5], max_features=1000, min_df=1)
    terms += ["not a term", "odd,shape", ""]  # shapes ``ngrams`` never produces: they never match
    terms += ["dark", "dark matter"]  # a repeated term counts for its last row, as a dict built from the list
    index = TermIndex(terms)
    assert counted(index, ODD_TEXTS, max_words) == reference_counts(terms, ODD_TEXTS, max_words)
    assert counted(index, ODD_TEXTS, max_words, chunk_size=2) == reference_counts(terms, ODD_TEXTS, max_words)


def test_empty_batches_and_vocabularies_without_bigrams() -> None:
    index = TermIndex(["dark", "matter"])
    rows, offsets, counts = index.count([])
    assert len(rows) == len(offsets) == len(counts) == 0
    assert counted(index, ["dark matter dark", "", "light"], None) == [Counter({0: 2, 1: 1}), Counter(), Counter()]


def test_counts_match_on_real_papers(shared_data: Path | None) -> None:
    """1,500 papers of 2018 (the generated sample without ../shared/data)."""
    if shared_data is not None:
        with gzip.open(shared_data / "arxiv-valid-2018.jsonl.gz", "rt") as lines:
            rows = [json.loads(line) for _, line in zip(range(1500), lines, strict=False)]
    else:
        rows = generate_sample(1500, seed=3)
    texts = [f"{row['title']}. {row['abstract']}" for row in rows]
    terms, _ = fit_vocabulary(texts[:1000], max_features=50_000, min_df=2)
    index = TermIndex(terms)
    assert counted(index, texts, 256, chunk_size=64) == reference_counts(terms, texts, 256)


def test_featurizer_vectors_are_l2_normalised_sublinear_tfidf() -> None:
    featurizer = TfidfFeaturizer(["dark", "matter", "dark matter"], np.array([1.0, 2.0, 3.0], dtype=np.float32))
    out = featurizer.featurize(["dark matter dark", "nothing known"])
    assert out["sparse_offsets"].tolist() == [0, 3]
    weights = dict(zip(out["sparse_ids"].tolist(), out["sparse_weights"].tolist(), strict=True))
    raw = {0: (1 + np.log(2)) * 1.0, 1: 2.0, 2: 3.0}
    norm = np.sqrt(sum(v * v for v in raw.values()))
    assert weights == pytest.approx({row: value / norm for row, value in raw.items()})


def reference_vocabulary(texts: list[str], max_features: int, min_df: int,
                         max_words: int | None) -> tuple[list[str], np.ndarray]:
    """What ``fit_vocabulary`` computed before ``DocumentFrequencies``: a Counter of n-gram strings."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(ngrams(text, max_words)))
    kept = sorted((g for g, n in df.items() if n >= min_df), key=lambda g: (-df[g], g))[:max_features]
    return kept, np.array([np.log((1 + len(texts)) / (1 + df[g])) + 1 for g in kept], dtype=np.float32)


def real_texts(shared_data: Path | None, n: int, name: str = "arxiv-valid-2018.jsonl.gz") -> list[str]:
    if shared_data is None:
        return [f"{row['title']}. {row['abstract']}" for row in generate_sample(n, seed=5)]
    with gzip.open(shared_data / name, "rt") as lines:
        return [f"{row['title']}. {row['abstract']}" for row in map(json.loads, islice(lines, n))]


def test_vectorised_split_finds_the_regex_words(shared_data: Path | None) -> None:
    odd = ["a-b-c a--b -a b- 'c' it's x'-y \ud800lone surrogate", "x" * 5000]
    texts = ODD_TEXTS + odd + real_texts(shared_data, 800)
    for max_words in (None, 1, 7):
        found = split_words(texts, max_words)
        got = [[] for _ in texts]
        for i in range(len(found.hashes)):
            got[found.doc[i]].append(found.word(i))
        assert got == [words(text)[:max_words] for text in texts]
        assert np.array_equal(found.hashes, string_hashes([w for ws in got for w in ws]))


@pytest.mark.parametrize(("max_features", "min_df", "max_words", "chunk_size"),
                         [(20_000, 2, None, 300), (3_000, 3, 40, 1024), (10**9, 1, 512, 7)])
def test_streamed_vocabulary_is_the_string_counters(shared_data: Path | None, max_features: int, min_df: int,
                                                    max_words: int | None, chunk_size: int) -> None:
    texts = ODD_TEXTS + real_texts(shared_data, 1500)
    terms, idf = fit_vocabulary(iter(texts), max_features, min_df, max_words, chunk_size=chunk_size)
    expected_terms, expected_idf = reference_vocabulary(texts, max_features, min_df, max_words)
    assert terms == expected_terms
    np.testing.assert_allclose(idf, expected_idf, rtol=1e-6)


def test_key_table_keeps_the_last_value_and_misses_the_rest() -> None:
    keys = np.array([5, 2**63 + 7, 5, 0, 123456789012345], dtype=np.uint64)
    table = KeyTable(keys, np.array([1, 2, 3, 4, 5]))
    queries = np.array([5, 2**63 + 7, 0, 123456789012345, 6, 2**64 - 1], dtype=np.uint64)
    assert table.get(queries).tolist() == [3, 2, 4, 5, -1, -1]
    assert KeyTable(np.zeros(0, np.uint64), np.zeros(0, np.int64)).get(queries).tolist() == [-1] * 6


def traced_peak(work: Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = work()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_featurising_memory_grows_with_the_terms_not_the_texts(shared_data: Path | None) -> None:
    """Training reads texts once, a chunk at a time: counting n-grams holds per distinct n-gram, not per
    text, and the encoded features are a few bytes per stored term; the working memory stays that of a chunk.
    (tracemalloc sees numpy's buffers.) N and 4N real papers."""
    texts = real_texts(shared_data, 8000, "arxiv-train.jsonl.gz")
    n = len(texts) // 4
    fit_vocabulary(iter(texts), 10, 1, 512)  # one-time tables (word characters, powers) before measuring
    small, _ = traced_peak(lambda: fit_vocabulary(iter(texts[:n]), 300_000, 2, 512))
    large, _ = traced_peak(lambda: fit_vocabulary(iter(texts), 300_000, 2, 512))
    assert large < 2.0 * small  # 4x the texts: distinct n-grams grow sublinearly (measured 1.3x)
    terms, idf = fit_vocabulary(iter(texts), 300_000, 2, 512)
    model = LinearClassifier(3, terms, idf)
    kept: dict[int, int] = {}
    for size in (n, 4 * n):
        peak, encoded = traced_peak(lambda size=size: model.encode_all(iter(texts[:size])))
        stored = encoded.ids.nbytes + encoded.tf.nbytes + encoded.offsets.nbytes
        assert stored <= 8 * len(encoded.ids) + 8 * (size + 1)  # int32 row + float32 tf per term, int64 offsets
        kept[size] = peak - stored  # transient: the buffers of a chunk
    assert kept[4 * n] < 1.5 * kept[n]  # 4x the texts, the same working memory: no per-text Python objects
