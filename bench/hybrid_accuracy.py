"""Accuracy of the ``hybrid`` arch against the TF-IDF + logistic-regression reference, trained in the same run.

    python bench/hybrid_accuracy.py                         # full shared data (embeds what the cache lacks)
    python bench/hybrid_accuracy.py --cached-only           # only records whose embeddings are cached already
    python bench/hybrid_accuracy.py --train-limit 8000 --int8   # + the int8 encoder runtime on the 2018 file

Train on ``../shared/data/arxiv-train.jsonl.gz`` (pre-2018), score on ``arxiv-valid-2018.jsonl.gz``. Scoring rule
(issue 9): the categories with at least 20 training papers (150 at full data), old names mapped to current ones
(``config/coreness_proxy.yaml``) on both sides, micro/macro F1 over those labels, every record gets at least its
top category. The hybrid's thresholds are tuned on the most recent 10% of the training papers (by date), which
are held out of its training; the reference uses 0.2 for every category. Coreness accuracy is on the proxy labels
of the 2018 file. Prints one Markdown table, the subset sizes, and the hybrid's inference speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.embedding_cache import EmbeddingCache, text_key  # noqa: E402
from models.hybrid import HybridClassifier  # noqa: E402
from models.record_files import open_text  # noqa: E402
from models.records import CORENESS_LABELS, Record  # noqa: E402
from trainer.thresholds import tune_thresholds  # noqa: E402
from trainer.train import category_targets, coreness_targets  # noqa: E402
from trainer.train_hybrid import (  # noqa: E402
    DEFAULTS,
    cached_embeddings,
    default_base_model,
    default_cache_path,
    score_cached,
    train_hybrid,
)
from trainer.training_data import category_vocabulary, load_records  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIN_TRAIN_PAPERS = 20


def predict_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 (n, C): scores at or above their threshold, else the top category alone."""
    predicted = probs >= thresholds
    empty = ~predicted.any(1)
    predicted[empty, probs[empty].argmax(1)] = True
    return predicted


def score(records: Sequence[Record], model_labels: Sequence[str], probs: np.ndarray, thresholds: np.ndarray,
          eval_labels: Sequence[str], core_probs: np.ndarray) -> dict[str, float]:
    """micro/macro F1 over ``eval_labels`` and coreness accuracy (proxy labels)."""
    from sklearn.metrics import f1_score

    predicted = predict_labels(probs, thresholds)
    column = {label: i for i, label in enumerate(model_labels)}
    y_pred = np.zeros((len(records), len(eval_labels)), dtype=np.int8)
    for j, label in enumerate(eval_labels):
        if label in column:
            y_pred[:, j] = predicted[:, column[label]]
    y_true = category_targets(records, eval_labels)
    return {"micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "coreness_acc": float(np.mean(core_probs.argmax(1) == coreness_targets(records)))}


def reference(train: Sequence[Record], test: Sequence[Record], labels: Sequence[str]) -> tuple[dict, float]:
    """TF-IDF (1-2-grams, sublinear, 300k features) + one-vs-rest LR (C=10), threshold 0.2, top-1 fallback."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    started = time.monotonic()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=300_000)
    x_train = vectorizer.fit_transform([r.text for r in train])
    y_train = category_targets(train, labels)
    categories = OneVsRestClassifier(LogisticRegression(C=10, solver="liblinear")).fit(x_train, y_train)
    coreness = LogisticRegression(C=10, max_iter=1000).fit(x_train, coreness_targets(train))
    seconds = time.monotonic() - started
    x_test = vectorizer.transform([r.text for r in test])
    core_probs = np.zeros((len(test), len(CORENESS_LABELS)))
    core_probs[:, coreness.classes_] = coreness.predict_proba(x_test)
    result = score(test, labels, categories.predict_proba(x_test), np.full(len(labels), 0.2), labels, core_probs)
    return result, seconds


def time_later_split(records: list[Record], dates: dict[str, str], fraction: float = 0.1
                     ) -> tuple[list[Record], list[Record]]:
    """(older, most recent ``fraction``) by date; ties and unknown dates by id."""
    ordered = sorted(records, key=lambda r: (dates.get(r.id, ""), r.id))
    cut = len(ordered) - max(1, round(len(ordered) * fraction))
    return ordered[:cut], ordered[cut:]


def read_dates(path: Path) -> dict[str, str]:
    with open_text(path) as lines:
        return {row["id"]: row.get("date") or "" for row in map(json.loads, lines)}


def only_cached(records: list[Record], cache_path: Path, encoder_id: str, max_length: int, dim: int) -> list[Record]:
    with EmbeddingCache(cache_path, encoder_id, max_length, dim) as cache:
        keys = [text_key(encoder_id, max_length, r.text) for r in records]
        found = cache._lookup(sorted(set(keys)))
    return [r for r, key in zip(records, keys, strict=True) if key in found]


def inference_speed(model: HybridClassifier, texts: list[str], batch_size: int) -> float:
    """Records/s of the full model (encoder + heads) through ``Predictor``'s code path."""
    from models.predictor import score_texts

    score_texts(model, texts[:batch_size], batch_size=batch_size)
    started = time.perf_counter()
    score_texts(model, texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-limit", type=int, help="first N training papers (the file is in random order)")
    parser.add_argument("--test-limit", type=int, help="first N 2018 papers")
    parser.add_argument("--cache", type=Path, default=None, help=f"embedding cache (default: {default_cache_path()})")
    parser.add_argument("--cached-only", action="store_true", help="keep only papers whose embeddings are cached")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--int8", action="store_true", help="also score the 2018 file with the int8 encoder")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--max-features", type=int, default=200_000)
    parser.add_argument("--speed", type=int, default=256, help="papers for the inference-speed figure (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache_path = args.cache or default_cache_path()

    train = load_records(args.data / "arxiv-train.jsonl.gz", limit=args.train_limit)
    test = load_records(args.data / "arxiv-valid-2018.jsonl.gz", limit=args.test_limit)
    base = default_base_model()
    if args.cached_only:
        from models.hybrid import FrozenEncoder
        from models.transformer import load_encoder

        probe = FrozenEncoder(*load_encoder(base), 128)
        train = only_cached(train, cache_path, probe.encoder_id, 128, probe.dim)
        test = only_cached(test, cache_path, probe.encoder_id, 128, probe.dim)
    counts = Counter(cat for r in train for cat in r.categories)
    eval_labels = sorted(cat for cat, n in counts.items() if n >= MIN_TRAIN_PAPERS)
    print(f"train papers {len(train)}, 2018 papers {len(test)}, scored categories {len(eval_labels)} "
          f"(>= {MIN_TRAIN_PAPERS} training papers)", flush=True)

    rows: list[tuple[str, dict, float]] = []
    if not args.no_reference:
        ref, ref_seconds = reference(train, test, eval_labels)
        rows.append(("TF-IDF + LR reference (threshold 0.2, top-1)", ref, ref_seconds))
        print("reference done", flush=True)

    older, recent = time_later_split(train, read_dates(args.data / "arxiv-train.jsonl.gz"))
    labels = category_vocabulary(older, 5)
    model, summary = train_hybrid(older, recent, labels, base_model=base, output_dir=None, cache_path=cache_path,
                                  epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                  max_features=args.max_features, device="cpu")
    _, recent_probs = summary["valid_probs"]
    tuned = tune_thresholds(recent_probs, category_targets(recent, labels), labels)
    thresholds = np.array([tuned[label] for label in labels], dtype=np.float32)
    test_texts = [r.text for r in test]
    test_embeddings, _ = cached_embeddings(model.encoder, test_texts, cache_path)
    core_probs, cat_probs = score_cached(model, test_embeddings, test_texts)
    seconds = summary["train_seconds"]
    rows.append(("hybrid, thresholds tuned on the time-later 10%, top-1",
                 score(test, labels, cat_probs, thresholds, eval_labels, core_probs), seconds))
    rows.append(("hybrid, threshold 0.2, top-1",
                 score(test, labels, cat_probs, np.full(len(labels), 0.2), eval_labels, core_probs), seconds))
    if args.int8:
        model.encoder.set_runtime("int8")
        int8_embeddings, _ = cached_embeddings(model.encoder, test_texts, cache_path)
        core8, cats8 = score_cached(model, int8_embeddings, test_texts)
        rows.append(("hybrid, int8 encoder runtime, tuned thresholds, top-1",
                     score(test, labels, cats8, thresholds, eval_labels, core8), seconds))

    print("\n| model | micro-F1 | macro-F1 | coreness (proxy) acc | train s |")
    print("|---|---|---|---|---|")
    for name, result, secs in rows:
        print(f"| {name} | {result['micro_f1']:.3f} | {result['macro_f1']:.3f} | {result['coreness_acc']:.3f} "
              f"| {secs:.0f} |")
    print(f"\nhybrid: {summary['sparse_features']} TF-IDF features, heads fitted in {summary['heads_seconds']:.1f} s "
          f"on {len(older)} papers (embedding cache hits {summary['cache']['hits']}, misses "
          f"{summary['cache']['misses']}), thresholds tuned on the {len(recent)} most recent")
    if args.speed:
        rps = inference_speed(model, test_texts[:args.speed], 64)
        print(f"hybrid inference ({model.encoder.runtime} encoder, {args.threads} threads, batch 64): {rps:.1f} "
              "records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
