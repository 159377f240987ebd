"""Classification metrics (scikit-learn) for the category (multi-label) and coreness (3-way) heads."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

AVERAGES = ("micro", "macro", "weighted", "samples")


def _both_classes(y_true: np.ndarray) -> np.ndarray:
    """Columns with at least one positive and one negative (where ROC-AUC is defined)."""
    positives = y_true.sum(0)
    return (positives > 0) & (positives < len(y_true))


def category_metrics(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray, labels: Sequence[str],
                     thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Multi-label metrics: F1/precision/recall for each average, Hamming loss, subset accuracy, ROC-AUC,
    mAP (over categories with positives) and a per-class table. Undefined values are None."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    out: dict[str, Any] = {"records": int(len(y_true)), "categories": len(labels)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for avg in AVERAGES:
            out[f"f1_{avg}"] = float(f1_score(y_true, y_pred, average=avg, zero_division=0))
            out[f"precision_{avg}"] = float(precision_score(y_true, y_pred, average=avg, zero_division=0))
            out[f"recall_{avg}"] = float(recall_score(y_true, y_pred, average=avg, zero_division=0))
    out["hamming_loss"] = float(hamming_loss(y_true, y_pred))
    out["subset_accuracy"] = float(accuracy_score(y_true, y_pred))
    defined = _both_classes(y_true)
    if defined.any():
        out["roc_auc_micro"] = float(roc_auc_score(y_true[:, defined], y_score[:, defined], average="micro"))
        out["roc_auc_macro"] = float(roc_auc_score(y_true[:, defined], y_score[:, defined], average="macro"))
    else:
        out["roc_auc_micro"] = out["roc_auc_macro"] = None
    has_pos = y_true.sum(0) > 0
    out["map"] = float(average_precision_score(y_true[:, has_pos], y_score[:, has_pos], average="macro")) \
        if has_pos.any() else None
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_class"] = [
        {"label": label, "support": int(support[c]), "precision": float(precision[c]), "recall": float(recall[c]),
         "f1": float(f1[c]),
         "average_precision": float(average_precision_score(y_true[:, c], y_score[:, c])) if has_pos[c] else None,
         "threshold": (thresholds or {}).get(label)}
        for c, label in enumerate(labels)
    ]
    return out


def coreness_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix (rows: true, columns: predicted)."""
    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                                     zero_division=0)
    present = [label for label in labels if label in set(y_true) | set(y_pred)]
    return {
        "records": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": [{"label": label, "support": int(support[i]), "precision": float(precision[i]),
                       "recall": float(recall[i]), "f1": float(f1[i])} for i, label in enumerate(labels)],
    }


# --------------------------------------------------------------------------- calibration

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)
SATURATED = 0.999  # a top score at or above this cannot be sorted by


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """The non-empty equal-width confidence bins: range, answers, mean confidence and share correct."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"lower": b / bins, "upper": (b + 1) / bins, "count": int((index == b).sum()),
             "confidence": float(confidence[index == b].mean()), "accuracy": float(correct[index == b].mean())}
            for b in np.unique(index)]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE: |share correct - mean confidence| per confidence bin, weighted by the bin's share of the answers
    (None without answers)."""
    if len(confidence) == 0:
        return None
    gaps = [b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(confidence, correct, bins)]
    return float(sum(gaps) / len(confidence))


def _calibration(confidence: np.ndarray, correct: np.ndarray, saturated: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"answers": int(len(confidence)), "ece": expected_calibration_error(confidence, correct),
                           "mean_confidence": float(np.mean(confidence)) if len(confidence) else None,
                           "accuracy": float(np.mean(correct)) if len(correct) else None}
    if saturated:
        out["saturated_share"] = float(np.mean(confidence >= SATURATED)) if len(confidence) else None
    out["bins"] = reliability_bins(confidence, correct) if len(confidence) else []
    return out


def coreness_calibration(y_true: Sequence[str], probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Calibration of the coreness answer: its score (the top one) against whether it is right; ``ece``,
    ``mean_confidence``, ``accuracy``, ``saturated_share`` (top score >= 0.999) and the reliability ``bins``."""
    probs = np.asarray(probs)
    truth = np.array([list(labels).index(label) for label in y_true], dtype=int)
    return _calibration(probs.max(1), probs.argmax(1) == truth)


def category_calibration(y_true: np.ndarray, probs: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Calibration of the category scores: ``top``, each record's best category (its score against whether the
    record has it; ``saturated_share``: best score >= 0.999), and ``returned``, every category a record is given
    (``predicted``; ``accuracy`` is then the precision)."""
    y_true, probs, predicted = np.asarray(y_true, dtype=bool), np.asarray(probs), np.asarray(predicted, dtype=bool)
    if probs.shape[1] == 0:
        none = np.zeros(0)
        return {"top": _calibration(none, none), "returned": _calibration(none, none, saturated=False)}
    top = probs.argmax(1)
    rows = np.arange(len(probs))
    return {"top": _calibration(probs[rows, top], y_true[rows, top]),
            "returned": _calibration(probs[predicted], y_true[predicted], saturated=False)}
