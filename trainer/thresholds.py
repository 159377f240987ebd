"""Per-class decision thresholds tuned on validation data (maximise each category's F1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def apply_thresholds(probs: np.ndarray, thresholds: dict[str, float], labels: Sequence[str]) -> np.ndarray:
    """0/1 predictions (n, C)."""
    cut = np.array([thresholds.get(label, DEFAULT_THRESHOLD) for label in labels], dtype=probs.dtype)
    return (probs >= cut).astype(np.int8)
