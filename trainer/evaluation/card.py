"""The model card saved in every checkpoint (``config.json`` ``card``) and shown in evaluation reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.records.schema import Record
from models.registry.provenance import GENERATED_SAMPLE

LIMITS = [
    "Coreness is learned mostly from a proxy of arXiv categories (config/coreness_proxy.yaml), not from INSPIRE "
    "curators' decisions, except for records given with real labels (--extra-train).",
    "Real INSPIRE decisions available for training are heavily skewed to core; non-core recall is the weak point "
    "and rejected is almost never learned from real labels.",
    "Categories are those seen often enough in the training data; newer arXiv categories cannot be predicted.",
    "Thresholds are tuned on the most recent slice of the training data; data much later than training drifts.",
    "Inputs are title and abstract only, in English.",
]


def _dates(records: Sequence[Record]) -> dict[str, str | None]:
    dates = sorted(d for r in records if (d := getattr(r, "date", None)))
    return {"first": dates[0] if dates else None, "last": dates[-1] if dates else None,
            "undated": len(records) - len(dates)}


def _label_sources(records: Sequence[Record]) -> dict[str, int]:
    return dict(Counter(r.coreness for r in records))


def model_card(data: Any, extra_train: Sequence[str | Path], train: Sequence[Record], valid: Sequence[Record],
               extra_fit: Sequence[Record], extra_check: Sequence[Record], labels: Sequence[str],
               metrics: dict[str, Any], split: str, refit: bool = False,
               calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """What data, which labels, metrics on the time-later slice and on held-out real labels (calibration error
    included), the score calibration, known limits. ``refit``: the saved model was trained again on training +
    validation records after thresholds were tuned; ``calibration``: the checkpoint's ``calibration`` section."""
    source = (str(data) if isinstance(data, str | Path) else GENERATED_SAMPLE if data is None
              else getattr(data, "source", "in-memory"))  # a list of records may name where it came from
    card: dict[str, Any] = {
        "data": {"source": source, "train_records": len(train), "train_dates": _dates(train),
                 "valid_records": len(valid), "valid_dates": _dates(valid),
                 "valid_split": "most recent slice by date" if split == "time" and _dates(valid)["first"]
                 else "shuffled", "refit_on_all_records": refit},
        "labels": {"categories": len(labels),
                   "coreness": "real labels where the record has one, else the arXiv-category proxy",
                   "coreness_train_counts": _label_sources(list(train) + list(extra_fit))},
        "metrics": {"time_later_valid": metrics.get("valid", {})},
        "calibration": calibration,
        "limits": LIMITS,
    }
    if extra_train:
        card["data"]["extra_train"] = [str(path) for path in extra_train]
        card["data"]["extra_train_records"] = len(extra_fit)
        card["data"]["extra_held_out_records"] = len(extra_check)
        card["labels"]["extra_train"] = "real coreness labels (coreness head only)"
        card["metrics"]["real_coreness_held_out"] = metrics.get("extra_valid", {})
    return card


def card_markdown(card: dict[str, Any] | None) -> list[str]:
    """Markdown lines of a model card (nothing when the checkpoint has none)."""
    if not card:
        return []
    data, labels, metrics = card["data"], card["labels"], card["metrics"]
    valid = metrics.get("time_later_valid", {})
    lines = ["## Model card", "",
             f"* Data: {data['source']}, {data['train_records']} training records "
             f"({data['train_dates']['first']} .. {data['train_dates']['last']}); validation: "
             f"{data['valid_records']} records, {data['valid_split']} "
             f"({data['valid_dates']['first']} .. {data['valid_dates']['last']})."
             + (" After tuning thresholds and measuring on it, the saved model was trained again on training and "
                "validation records together." if data.get("refit_on_all_records") else "")]
    if "extra_train" in data:
        lines.append(f"* Real coreness labels: {', '.join(data['extra_train'])}: {data['extra_train_records']} "
                     f"for training, {data['extra_held_out_records']} held out.")
    lines.append(f"* Labels: {labels['categories']} categories; coreness: {labels['coreness']} "
                 f"(training counts {labels['coreness_train_counts']}).")
    if valid:
        lines.append(f"* Time-later validation: category micro-F1 {valid.get('category_f1_micro', 0):.4f} "
                     f"(thresholds tuned on it; {valid.get('category_f1_micro_cross_fitted', 0):.4f} cross-fitted), "
                     f"macro-F1 {valid.get('category_f1_macro', 0):.4f} "
                     f"({valid.get('category_f1_macro_cross_fitted', 0):.4f}), coreness accuracy "
                     f"{valid.get('coreness_accuracy', 0):.4f}, recall {valid.get('coreness_recall')}.")
    real = metrics.get("real_coreness_held_out")
    if real:
        lines.append(f"* Held-out real coreness labels: accuracy {real['coreness_accuracy']:.4f}, recall per class "
                     f"{real['coreness_recall']} (support {real['coreness_support']})"
                     + (f", calibration error (ECE) {real['coreness_ece']:.4f}" if real.get("coreness_ece") is not None
                        else "") + ".")
    lines += calibration_lines(card.get("calibration"), valid)
    lines += ["* Known limits:"] + [f"  * {limit}" for limit in card["limits"]] + [""]
    return lines


def calibration_lines(calibration: dict[str, Any] | None, valid: dict[str, Any]) -> list[str]:
    """The card's line on score calibration (none for cards written before it)."""
    if not calibration:
        return []
    line = (f"* Scores: temperature scaling, coreness {calibration['coreness_temperature']}, categories "
            f"{calibration['category_temperature']}, fitted on the {calibration['fitted_on']} "
            f"({calibration['records']} records), a uniform guess mixed in at weight {calibration.get('floor', 0)}")
    if valid.get("coreness_ece") is not None:
        line += (f"; there the coreness calibration error (ECE) is {valid['coreness_ece']:.4f} "
                 f"({valid.get('coreness_ece_uncalibrated', float('nan')):.4f} uncalibrated), "
                 f"{valid.get('coreness_saturated_share', 0):.1%} of answers score >= 0.999, best-category ECE "
                 f"{valid.get('category_top_ece', float('nan')):.4f}")
    return [line + "."]
