"""``corestream-train evaluate``: score a checkpoint on labelled data; write report.json, report.md and plots.

Category metrics use the checkpoint's own per-class thresholds (and its at-least-one-category rule); coreness
is the arg-max label. Scores are the predictor's calibrated ones; the report gives their expected calibration
error (coreness answer, best category, returned categories) and a reliability diagram. The report carries the
checkpoint's model card (data, labels, validation metrics, limits).
Data categories that the model does not know are counted in the report (they cannot be predicted) and otherwise
ignored.
Plots use matplotlib's object API (no pyplot, no display needed).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from config.cli import CommandError
from config.settings import Settings
from models.archs.checkpoint import CheckpointError
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from models.records.schema import CORENESS_LABELS, Record
from trainer.datasets.training_data import DataError, category_targets, fingerprint, to_records
from trainer.evaluation.card import card_markdown
from trainer.evaluation.metrics import category_calibration, category_metrics, coreness_calibration, coreness_metrics
from trainer.evaluation.thresholds import apply_thresholds

log = logging.getLogger(__name__)
CHUNK = 1024


def build_report(coreness_true: Sequence[str], coreness_probs: np.ndarray, categories_true: np.ndarray,
                 category_probs: np.ndarray, labels: Sequence[str], thresholds: dict[str, float],
                 at_least_one: bool = False) -> dict[str, Any]:
    """The metrics part of a report from labels and predicted probabilities."""
    coreness_pred = [CORENESS_LABELS[i] for i in np.asarray(coreness_probs).argmax(1)]
    predicted = apply_thresholds(category_probs, thresholds, labels, at_least_one=at_least_one)
    return {
        "categories": category_metrics(categories_true, predicted, category_probs, labels, thresholds),
        "coreness": coreness_metrics(list(coreness_true), coreness_pred, CORENESS_LABELS),
        "calibration": {"coreness": coreness_calibration(list(coreness_true), coreness_probs, CORENESS_LABELS),
                        "categories": category_calibration(categories_true, category_probs, predicted)},
    }


def predict_in_chunks(predictor: Predictor, records: Sequence[Record], progress: bool) -> tuple[np.ndarray, np.ndarray]:
    core, cats = [], []
    with tqdm(total=len(records), desc="evaluate", unit="rec", disable=not progress) as bar:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            c, k = predictor.predict_proba(chunk)
            core.append(c)
            cats.append(k)
            bar.update(len(chunk))
    return np.concatenate(core), np.concatenate(cats)


def evaluate_model(model: str | Path, data: str | Path | Sequence[Record | dict], *,
                   output_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64,
                   sample_count: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint ``model`` on ``data``; write the report files to ``output_dir`` if given."""
    predictor = Predictor.from_checkpoint(model, device=device, batch_size=batch_size)
    records = to_records(data, sample_count, 0, CorenessProxy.load())
    labels = predictor.category_labels
    known = set(labels)
    unknown = Counter(cat for r in records for cat in r.categories if cat not in known)
    coreness_probs, category_probs = predict_in_chunks(predictor, records, progress)
    report = {
        "model": {**predictor.info.model_dump(), "path": str(model)},
        "data": {"source": str(data) if isinstance(data, str | Path) else "in-memory", "records": len(records),
                 "fingerprint": fingerprint(records),
                 "unknown_categories": dict(unknown.most_common()),
                 "records_with_unknown_categories_only": sum(
                     1 for r in records if r.categories and not known.intersection(r.categories))},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **build_report([r.coreness for r in records], coreness_probs, category_targets(records, labels),
                       category_probs, labels, predictor.config["thresholds"], predictor.at_least_one_category),
        "card": predictor.config.get("card"),
    }
    report["calibration"]["temperatures"] = predictor.config.get("calibration")  # None: an uncalibrated checkpoint
    if output_dir is not None:
        write_report(report, Path(output_dir))
    return report


# --------------------------------------------------------------------------- report files


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """report.json, report.md, per_class_f1.png and coreness_confusion.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "per_class_f1.png",
             out_dir / "coreness_confusion.png", out_dir / "calibration.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot_per_class_f1(report["categories"]["per_class"], paths[2])
    plot_confusion(report["coreness"], paths[3])
    plot_reliability(report["calibration"], paths[4])
    return paths


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    cats, core, model = report["categories"], report["coreness"], report["model"]
    lines = [f"# Evaluation of {model['name']}@{model['version']} ({model['arch']})", "",
             f"Data: {report['data']['source']}, {report['data']['records']} records "
             f"({report['data']['fingerprint']}). Created {report['created_at']}.", "",
             "## Categories (multi-label, per-class thresholds)", "", "| metric | micro | macro | weighted | samples |",
             "|---|---|---|---|---|"]
    for name in ("f1", "precision", "recall"):
        lines.append(f"| {name} | " + " | ".join(_fmt(cats[f"{name}_{avg}"])
                                                 for avg in ("micro", "macro", "weighted", "samples")) + " |")
    lines += ["", "| metric | value |", "|---|---|"]
    for key in ("hamming_loss", "subset_accuracy", "roc_auc_micro", "roc_auc_macro", "map"):
        lines.append(f"| {key} | {_fmt(cats[key])} |")
    unknown = report["data"]["unknown_categories"]
    if unknown:
        lines += ["", f"Categories in the data that the model does not know ({sum(unknown.values())} labels): "
                  + ", ".join(f"{k} ({v})" for k, v in list(unknown.items())[:20])]
    lines += ["", "### Per class", "", "| category | support | precision | recall | F1 | AP | threshold |",
              "|---|---|---|---|---|---|---|"]
    for row in sorted(cats["per_class"], key=lambda r: -r["support"]):
        lines.append(f"| {row['label']} | {row['support']} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | "
                     f"{_fmt(row['f1'])} | {_fmt(row['average_precision'])} | {_fmt(row['threshold'])} |")
    lines += ["", "## Coreness", "", f"Accuracy {_fmt(core['accuracy'])}, macro-F1 {_fmt(core['macro_f1'])}.", "",
              "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(core["labels"]) + " |",
              "|---" * (len(core["labels"]) + 1) + "|"]
    for label, row in zip(core["labels"], core["confusion_matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    lines += [""] + calibration_markdown(report["calibration"])
    lines += [""] + card_markdown(report.get("card"))
    lines += ["", "![per-class F1](per_class_f1.png)", "", "![coreness confusion matrix](coreness_confusion.png)",
              "", "![reliability diagram](calibration.png)", ""]
    return "\n".join(lines)


def calibration_markdown(calibration: dict[str, Any]) -> list[str]:
    """The calibration section: ECE, mean score against share right, saturated top scores; the temperatures."""
    temperatures = calibration.get("temperatures")
    rows = [("coreness answer", calibration["coreness"]), ("best category", calibration["categories"]["top"]),
            ("every returned category (share right = precision)", calibration["categories"]["returned"])]
    lines = ["## Calibration", "",
             "Expected calibration error (ECE, 15 equal-width bins): how far the scores are from the share of "
             "answers that are right, weighted by answers. 0 is perfect.", "",
             "| scores | answers | ECE | mean score | share right | top score >= 0.999 |", "|---|---|---|---|---|---|"]
    for name, row in rows:
        lines.append(f"| {name} | {row['answers']} | {_fmt(row['ece'])} | {_fmt(row['mean_confidence'])} | "
                     f"{_fmt(row['accuracy'])} | {_fmt(row.get('saturated_share'))} |")
    lines.append("")
    if temperatures:
        lines.append(f"Temperature scaling: coreness {temperatures['coreness_temperature']}, categories "
                     f"{temperatures['category_temperature']} (fitted on the {temperatures.get('fitted_on', '?')}, "
                     f"{temperatures.get('records', '?')} records); a uniform guess mixed in at weight "
                     f"{temperatures.get('floor', 0)}.")
    else:
        lines.append("The checkpoint has no calibration (trained before it existed): its raw scores are reported.")
    return lines


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    """Reliability diagram: share right against mean score per bin, for the coreness answer and the best
    category (the diagonal is perfect calibration)."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    heads = (("coreness answer", calibration["coreness"]), ("best category", calibration["categories"]["top"]))
    for name, row in heads:
        bins = row["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{name} (ECE {_fmt(row['ece'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("share right")
    ax.set_title("Reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_per_class_f1(per_class: list[dict[str, Any]], path: Path, top: int = 40) -> None:
    """Horizontal bars of F1 for the ``top`` categories by support."""
    rows = sorted(per_class, key=lambda r: -r["support"])[:top][::-1]
    fig = Figure(figsize=(8, max(2.5, 0.25 * len(rows) + 1)))
    ax = fig.subplots()
    ax.barh([f"{r['label']} ({r['support']})" for r in rows], [r["f1"] for r in rows], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title(f"Per-class F1 (top {len(rows)} categories by support)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(coreness: dict[str, Any], path: Path) -> None:
    matrix = np.array(coreness["confusion_matrix"])
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(coreness["labels"])), coreness["labels"])
    ax.set_yticks(range(len(coreness["labels"])), coreness["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_title(f"Coreness (accuracy {coreness['accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- CLI


def _evaluate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = evaluate_model(args.model, args.data, device=args.device, batch_size=args.batch_size,
                                sample_count=args.sample_count, progress=not args.no_progress)
        model = report["model"]
        output_dir = Path(args.output_dir or Path("reports") / f"{model['name']}-{model['version']}")
        write_report(report, output_dir)
    except (CheckpointError, DataError, ValueError, OSError) as exc:
        raise CommandError(str(exc)) from None
    cats, core = report["categories"], report["coreness"]
    print(f"{report['data']['records']} records; categories micro-F1 {cats['f1_micro']:.4f}, macro-F1 "
          f"{cats['f1_macro']:.4f}, mAP {_fmt(cats['map'])}; coreness accuracy {core['accuracy']:.4f}, "
          f"macro-F1 {core['macro_f1']:.4f}, calibration error (ECE) {_fmt(report['calibration']['coreness']['ece'])}")
    print(f"report written to {output_dir}/report.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on labelled data",
                              description="Score a checkpoint; write report.json, report.md and PNG plots.")
    p.add_argument("--model", metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument("--data", metavar="FILE", required=True,
                   help="labelled JSON lines (.gz ok): flat, INSPIRE or arXiv records")
    p.add_argument("--output-dir", metavar="DIR", help="report directory (default: reports/NAME-VERSION)")
    p.add_argument("--sample-count", metavar="N", type=int, help="evaluate at most this many records")
    p.add_argument("--batch-size", metavar="N", type=int, default=64)
    p.add_argument("--device", metavar="DEVICE", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate_command)
