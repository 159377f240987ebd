"""How to train on a file whose label mix differs from new submissions: choose on the time-later slice of the
training data (never on the 2018 file, whose figures are printed for the report only).

    python bench/label_mix.py --data ../shared/data/arxiv-train-large.jsonl.gz \
        --prior ../shared/data/arxiv-train.jsonl.gz --powers 0,0.5,1

For each ``--label-prior-power`` P, ``linear`` is trained with the trainer's defaults (no refit) on all but the most
recent 10% of ``--data``; the choice is made on the representative part of that held-out slice (its papers that are
also in ``--prior``), split into halves A and B by row: thresholds tuned on one half (or on the whole slice without
the other half: "full-slice thresholds", what the trainer did before ``--label-prior``) and measured on the other,
both ways (cross-fitted). Prints one row per method with micro/macro-F1 there, and on the 2018 file (150 categories,
thresholds tuned on the whole representative slice, or the whole slice), and the fit's CPU seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import MAX_LABELS, MIN_TRAIN_PAPERS, SHARED, f1_scores  # noqa: E402
from models.archs.checkpoint import load_checkpoint  # noqa: E402
from models.inference.predictor import score_logits  # noqa: E402
from models.records.labels import CorenessProxy  # noqa: E402
from trainer.datasets.training_data import (  # noqa: E402
    category_targets,  # noqa: E402
    load_records,
    time_split,
)
from trainer.evaluation.thresholds import apply_thresholds, tune_thresholds  # noqa: E402
from trainer.training.train import train_model


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def names(predicted: np.ndarray, labels: list[str]) -> list[list[str]]:
    return [[labels[i] for i in np.flatnonzero(row)] for row in predicted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "arxiv-train-large.jsonl.gz")
    parser.add_argument("--prior", type=Path, default=SHARED / "arxiv-train.jsonl.gz")
    parser.add_argument("--powers", default="0,0.5,1")
    parser.add_argument("--epochs", type=int, help="default: the trainer's")
    args = parser.parse_args()
    proxy = CorenessProxy.load()
    records = load_records(args.data, proxy=proxy)
    prior_ids = {r.id for r in load_records(args.prior, proxy=proxy)}
    _, valid = time_split(records, 0.1)
    rep = np.array([r.id in prior_ids for r in valid])
    half = np.zeros(len(valid), dtype=bool)
    half[np.flatnonzero(rep)[::2]] = True  # half A of the representative part; B = rep & ~half
    scored_2018 = load_records(SHARED / "arxiv-valid-2018.jsonl.gz", proxy=proxy)
    counts = Counter(c for r in load_records(SHARED / "arxiv-train.jsonl.gz", proxy=proxy) for c in r.categories)
    bench_labels = [c for c, n in counts.most_common() if n >= MIN_TRAIN_PAPERS][:MAX_LABELS]
    print(f"{len(records)} papers, time-later slice {len(valid)} ({rep.sum()} representative, from "
          f"{min(r.date for r in valid)}); 2018: {len(scored_2018)} papers, {len(bench_labels)} categories", flush=True)
    print("| label-prior power | thresholds tuned on | slice micro | slice macro | 2018 micro | 2018 macro "
          "| fit CPU s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="label-mix-") as tmp:
        for power in [float(p) for p in args.powers.split(",")]:
            started = time.process_time()
            path = train_model(records, arch="linear", output_dir=Path(tmp) / str(power), progress=False,
                               from_scratch=True, refit=False, epochs=args.epochs,
                               label_prior=args.prior if power > 0 else None, label_prior_power=power)
            cpu = time.process_time() - started
            model, config = load_checkpoint(path, device="cpu")
            labels = config["category_labels"]
            probs = sigmoid(score_logits(model, [r.text for r in valid])[1])
            y = category_targets(valid, labels)
            probs_2018 = sigmoid(score_logits(model, [r.text for r in scored_2018])[1])
            truth = [r.categories for i, r in enumerate(valid) if rep[i]]
            b_half = rep & ~half
            for name in ("whole slice", "representative part"):
                predicted = np.zeros(probs.shape, dtype=np.int8)
                for tune_on, apply_to in ((half, b_half), (b_half, half)):
                    if name == "whole slice":  # the rest of the slice, representative or not
                        tune_on = ~apply_to
                    thresholds = tune_thresholds(probs[tune_on], y[tune_on], labels)
                    predicted[apply_to] = apply_thresholds(probs[apply_to], thresholds, labels, at_least_one=True)
                slice_micro, slice_macro = f1_scores(truth, names(predicted[rep], labels), bench_labels)
                tune_all = np.ones(len(valid), dtype=bool) if name == "whole slice" else rep
                thresholds = tune_thresholds(probs[tune_all], y[tune_all], labels)
                chosen = apply_thresholds(probs_2018, thresholds, labels, at_least_one=True)
                micro, macro = f1_scores([r.categories for r in scored_2018], names(chosen, labels), bench_labels)
                print(f"| {power:g} | {name} | {slice_micro:.3f} | {slice_macro:.3f} | {micro:.3f} | {macro:.3f} | "
                      f"{cpu:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
