"""Per-class decision thresholds tuned on validation data (maximise each category's F1).

Thresholds are tuned on calibrated scores (:mod:`models.archs.calibration`) over :func:`calibrated_grid`: the points of
:data:`GRID` as the calibration maps them. Calibration is monotone, so the categories a record gets are the ones
the uncalibrated scores gave over :data:`GRID`: only their scores change. (Tuned over :data:`GRID` itself, the
calibrated scores' thresholds reach lower raw scores, and on the 2018 papers the full-data default model lost 1.6
points micro-F1, 0.574 -> 0.559: the grid's lower end, 0.05 on raw scores, had held 47 categories back.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import logit

from models.archs.calibration import Calibration

DEFAULT_THRESHOLD = 0.5
GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], *, min_positives: int = 1,
                    grid: np.ndarray = GRID, default: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """For each category the grid threshold with the best validation F1.

    A category with fewer than ``min_positives`` validation positives keeps ``default``; ties go to the
    threshold nearest ``default``.
    """
    targets = targets.astype(bool)
    thresholds: dict[str, float] = {}
    preference = -np.abs(grid - default)  # tie-breaker
    for c, label in enumerate(labels):
        y = targets[:, c]
        if y.sum() < min_positives:
            thresholds[label] = default
            continue
        predicted = probs[:, c][:, None] >= grid[None, :]
        tp = (predicted & y[:, None]).sum(0)
        fp = (predicted & ~y[:, None]).sum(0)
        fn = (~predicted & y[:, None]).sum(0)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.lexsort((preference, f1))[-1]
        thresholds[label] = float(grid[best])
    return thresholds


def calibrated_grid(calibration: Calibration, grid: np.ndarray = GRID) -> np.ndarray:
    """The points of ``grid`` (cut-offs on uncalibrated category scores) as ``calibration`` maps them."""
    return calibration.categories(logit(np.asarray(grid, dtype=np.float64))).astype(np.float64)


def apply_thresholds(probs: np.ndarray, thresholds: dict[str, float], labels: Sequence[str], *,
                     at_least_one: bool = False) -> np.ndarray:
    """0/1 predictions (n, C); with ``at_least_one``, a row with no category above its threshold gets its
    highest-scoring one (as :class:`models.inference.predictor.Predictor` does by default)."""
    cut = np.array([thresholds.get(label, DEFAULT_THRESHOLD) for label in labels], dtype=probs.dtype)
    predicted = (probs >= cut).astype(np.int8)
    if at_least_one and probs.shape[1]:
        empty = np.flatnonzero(predicted.sum(1) == 0)
        predicted[empty, probs[empty].argmax(1)] = 1
    return predicted


def cross_fitted(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], *,
                 at_least_one: bool = False, grid: np.ndarray = GRID) -> np.ndarray:
    """Thresholds tuned on the even rows applied to the odd rows and vice versa: 0/1 predictions (n, C) whose
    scores are not inflated by tuning on the rows they are measured on."""
    predicted = np.zeros(probs.shape, dtype=np.int8)
    rows = np.arange(len(probs))
    for tune_on, apply_to in ((rows % 2 == 0, rows % 2 == 1), (rows % 2 == 1, rows % 2 == 0)):
        thresholds = tune_thresholds(probs[tune_on], targets[tune_on], labels, grid=grid)
        predicted[apply_to] = apply_thresholds(probs[apply_to], thresholds, labels,
                                                 at_least_one=at_least_one)
    return predicted
