"""``TermIndex`` counts the same terms as the plain n-gram strings looked up in a dict, batch-wise."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.sparse_features import TermIndex, TfidfFeaturizer, fit_vocabulary, ngrams
from trainer.sample import generate_sample

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
