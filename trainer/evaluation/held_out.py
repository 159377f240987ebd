"""The held-out slice of a training run: fit the calibration and tune the thresholds on its scores, and summarise
the metrics that the checkpoint records (``metrics.valid``, ``metrics.extra_valid``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from models.archs.calibration import IDENTITY, Calibration
from models.inference.predictor import score_logits
from models.records.schema import CORENESS_LABELS, Record
from trainer.datasets.training_data import category_targets, coreness_targets, known_categories
from trainer.evaluation.calibration import fit_calibration
from trainer.evaluation.metrics import category_calibration, category_metrics, coreness_calibration, coreness_metrics
from trainer.evaluation.thresholds import apply_thresholds, calibrated_grid, cross_fitted, tune_thresholds


def coreness_summary(records: Sequence[Record], core_probs: np.ndarray) -> dict[str, Any]:
    """Coreness accuracy, macro-F1, per-class recall (with support) and calibration (ECE of the answer's score,
    share of answers scored >= 0.999) of predicted probabilities."""
    core = coreness_metrics([r.coreness for r in records],
                            [CORENESS_LABELS[i] for i in core_probs.argmax(1)], CORENESS_LABELS)
    calibration = coreness_calibration([r.coreness for r in records], core_probs, CORENESS_LABELS)
    return {"records": len(records), "coreness_accuracy": core["accuracy"], "coreness_macro_f1": core["macro_f1"],
            "coreness_recall": {row["label"]: row["recall"] for row in core["per_class"] if row["support"]},
            "coreness_support": {row["label"]: row["support"] for row in core["per_class"] if row["support"]},
            "coreness_ece": calibration["ece"], "coreness_mean_confidence": calibration["mean_confidence"],
            "coreness_saturated_share": calibration["saturated_share"]}


def evaluate_split(model: nn.Module, records: Sequence[Record], labels: Sequence[str], *, device: str,
                   batch_size: int, at_least_one: bool = True) -> tuple[dict[str, Any], dict[str, float], Calibration]:
    """Score ``records`` (the held-out slice) with ``model``; see :func:`held_out_summary`."""
    core_logits, cat_logits = score_logits(model, [r.text for r in records], batch_size=batch_size, device=device)
    return held_out_summary(records, labels, core_logits, cat_logits, at_least_one)


def held_out_summary(records: Sequence[Record], labels: Sequence[str], core_logits: np.ndarray,
                     cat_logits: np.ndarray, at_least_one: bool = True) -> tuple[dict[str, Any], dict[str, float],
                                                                                 Calibration]:
    """From a held-out slice's logits: the calibration fitted on them, per-class thresholds tuned on the
    calibrated scores (over :func:`trainer.evaluation.thresholds.calibrated_grid`), and the metrics with both
    (``category_f1_*_cross_fitted``: F1 with thresholds tuned on the other half of the records;
    ``*_uncalibrated``: calibration before it)."""
    y_true = category_targets(records, labels)
    known = known_categories(records, labels)
    calibration = fit_calibration(core_logits, coreness_targets(records), cat_logits, y_true, known)
    core_probs, cat_probs = calibration.probabilities(core_logits, cat_logits)
    grid = calibrated_grid(calibration)  # the same decisions as the uncalibrated scores over GRID
    thresholds = tune_thresholds(cat_probs, y_true, labels, grid=grid)
    predicted = apply_thresholds(cat_probs, thresholds, labels, at_least_one=at_least_one)
    cats = category_metrics(y_true, predicted, cat_probs, labels, thresholds)
    cat_calibration = category_calibration(y_true, cat_probs, predicted)
    raw = IDENTITY.probabilities(core_logits, cat_logits)
    summary = {
        **coreness_summary(records, core_probs),
        "coreness_ece_uncalibrated": coreness_calibration([r.coreness for r in records], raw[0],
                                                          CORENESS_LABELS)["ece"],
        "category_f1_micro": cats["f1_micro"], "category_f1_macro": cats["f1_macro"],
        "category_f1_samples": cats["f1_samples"], "category_roc_auc_micro": cats["roc_auc_micro"],
        "category_map": cats["map"],
        "category_top_ece": cat_calibration["top"]["ece"],
        "category_top_saturated_share": cat_calibration["top"]["saturated_share"],
        "category_returned_ece": cat_calibration["returned"]["ece"],
        "category_top_ece_uncalibrated": category_calibration(y_true, raw[1], predicted)["top"]["ece"],
    }
    if len(records) >= 4:
        fitted = category_metrics(y_true, cross_fitted(cat_probs, y_true, labels, at_least_one=at_least_one,
                                                       grid=grid), cat_probs, labels)
        summary["category_f1_micro_cross_fitted"] = fitted["f1_micro"]
        summary["category_f1_macro_cross_fitted"] = fitted["f1_macro"]
    return summary, thresholds, calibration
