"""Fit the score calibration (:class:`models.archs.calibration.Calibration`) on held-out logits.

Temperature scaling (Guo et al., 2017): for each head, the one temperature that minimises the negative
log-likelihood of the held-out labels (with the fixed ``floor`` of :mod:`models.archs.calibration` mixed in, as it will
be applied); the coreness head with the softmax cross-entropy, the category head with the binary cross-entropy
over each record's :data:`CATEGORY_TOP_K` best-scored categories (whose label is known): the scores a curator
sees. Over all ~150 pairs a record has, the near-certain negatives dominate the fit and leave the shown scores
over-confident; on the full training file's time-later slice (fitted on one half, measured on the other) the ECE
of the best category / every returned category / all pairs scored >= 0.05 was 0.118 / 0.099 / 0.060 fitted on all
pairs, 0.069 / 0.050 / 0.051 on the top 5 (top 3: 0.049 / 0.044 / 0.074; top 10: 0.089 / 0.069 / 0.028). One
parameter per head cannot overfit a validation slice of a few thousand records, and it keeps the arg-max and every
category's ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax

from models.archs.calibration import DEFAULT_FLOOR, Calibration
from models.records.schema import Record

LOG_T_BOUNDS = (np.log(0.05), np.log(200.0))
CATEGORY_TOP_K = 5


def _best_temperature(nll: Callable[[float], float]) -> float:
    """The temperature in (0.05, 200) minimising ``nll(temperature)`` (convex in 1 / T)."""
    result = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-4})
    return round(float(np.exp(result.x)), 4)


def softmax_temperature(logits: np.ndarray, targets: np.ndarray, floor: float = 0.0) -> float:
    """Temperature of a softmax head: ``logits`` (n, k), ``targets`` (n,) class indices; ``floor``: the weight
    of the uniform guess mixed in. 1.0 without records."""
    if len(targets) == 0:
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(targets))
    uniform = floor / logits.shape[1]
    return _best_temperature(lambda t: -np.log((1 - floor) * np.exp(log_softmax(logits / t, axis=1)[rows, targets])
                                               + uniform).mean())


def sigmoid_temperature(logits: np.ndarray, targets: np.ndarray, known: np.ndarray | None = None,
                        floor: float = 0.0, top_k: int | None = None) -> float:
    """Temperature of independent sigmoids: ``logits`` and 0/1 ``targets`` (n, C); ``known`` 0 drops a pair
    (a label the record leaves unknown); ``floor``: the weight of a coin flip mixed in; ``top_k``: only each
    record's ``top_k`` highest logits count. 1.0 without positives or negatives."""
    mask = np.ones(targets.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    if top_k is not None and top_k < logits.shape[1]:
        best = np.zeros(mask.shape, dtype=bool)
        np.put_along_axis(best, np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k], True, axis=1)
        mask = mask & best
    z = np.asarray(logits, dtype=np.float64)[mask]
    y = np.asarray(targets, dtype=bool)[mask]
    if not y.any() or y.all():
        return 1.0
    signed = np.where(y, z, -z)  # log p(label) = log sigmoid(+-z / T)
    return _best_temperature(lambda t: -np.log((1 - floor) * np.exp(log_expit(signed / t)) + floor / 2).mean())


def fit_calibration(coreness_logits: np.ndarray, coreness_targets: np.ndarray, category_logits: np.ndarray,
                    category_targets: np.ndarray, category_known: np.ndarray | None = None,
                    floor: float = DEFAULT_FLOOR, top_k: int | None = CATEGORY_TOP_K) -> Calibration:
    """Both heads' temperatures from held-out logits and labels (coreness as class indices, categories 0/1; the
    category head on each record's ``top_k`` best categories), with ``floor``."""
    return Calibration(softmax_temperature(coreness_logits, coreness_targets, floor),
                       sigmoid_temperature(category_logits, category_targets, category_known, floor, top_k), floor)


def calibration_config(calibration: Calibration, valid: Sequence[Record], split: str) -> dict[str, Any]:
    """The checkpoint's ``calibration`` section: the temperatures and the slice they were fitted on."""
    dated = split == "time" and any(getattr(r, "date", None) for r in valid)
    return {**calibration.to_config(), "records": len(valid),
            "fitted_on": ("most recent slice by date" if dated else "shuffled validation slice") if valid
            else "nothing (no validation records): identity"}
