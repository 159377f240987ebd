"""Calibrated scores: each head's logits divided by its own temperature before the softmax / sigmoid.

A text model trained to convergence is over-confident: uncalibrated, ``linear`` gave 79-86 % of its answers a top
score >= 0.999 while being right 83 % of the time on newer papers. One temperature per head, fitted on the
time-later validation slice (:mod:`trainer.evaluation.calibration`), turns the scores into probabilities a
curator can sort by. Dividing logits by a positive constant keeps every arg-max and every category's ranking;
thresholds are tuned on the calibrated scores.

A temperature fitted on proxy labels still leaves a few percent of answers at >= 0.999 (the time-later slice's
clearest papers are all right), a certainty no label source here can vouch for: the proxy is not the curators'
decision, and a few thousand held-out records cannot confirm an error rate below 1 in 1000. So each head's
probabilities are mixed with a uniform guess at a small fixed weight, the ``floor`` (:data:`DEFAULT_FLOOR`): a
coreness score stays within [floor / 3, 1 - 2 floor / 3], a category score within [floor / 2, 1 - floor / 2].
The mixture is monotone, so it keeps every order a curator sorts by. The temperatures and the floor live in the
checkpoint's ``config.json`` (``calibration``); a checkpoint without them scores as before (temperature 1, no
floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, softmax

CONFIG_KEY = "calibration"
METHOD = "temperature"
DEFAULT_FLOOR = 0.003  # top coreness score <= 0.998: no label here vouches for fewer than 1 error in 1000


@dataclass(frozen=True)
class Calibration:
    """Temperatures of the coreness (softmax) and category (sigmoid) heads and the weight of the uniform guess
    mixed into both (``floor``); 1, 1, 0 is the identity."""

    coreness_temperature: float = 1.0
    category_temperature: float = 1.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("coreness_temperature", "category_temperature", "floor"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"calibration {name} must be a number, got {value!r}")
        if self.coreness_temperature <= 0 or self.category_temperature <= 0:
            raise ValueError(f"calibration temperatures must be positive, got {self.coreness_temperature} and "
                             f"{self.category_temperature}")
        if not 0 <= self.floor < 1:
            raise ValueError(f"calibration floor must be in [0, 1), got {self.floor}")

    def coreness(self, logits: np.ndarray) -> np.ndarray:
        """Coreness probabilities (n, 3) from the coreness head's logits."""
        probs = softmax(logits / np.float32(self.coreness_temperature), axis=-1)
        return probs if not self.floor else np.float32(1 - self.floor) * probs + np.float32(self.floor / 3)

    def categories(self, logits: np.ndarray) -> np.ndarray:
        """Category probabilities (n, C) from the category head's logits."""
        probs = expit(logits / np.float32(self.category_temperature))
        return probs if not self.floor else np.float32(1 - self.floor) * probs + np.float32(self.floor / 2)

    def probabilities(self, coreness_logits: np.ndarray, category_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both heads' probabilities from their logits."""
        return self.coreness(coreness_logits), self.categories(category_logits)

    def to_config(self) -> dict[str, Any]:
        return {"method": METHOD, "coreness_temperature": self.coreness_temperature,
                "category_temperature": self.category_temperature, "floor": self.floor}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Calibration:
        """The calibration of a checkpoint config (the identity when it has none: checkpoints before calibration).
        Raises ValueError for an unknown method or a temperature that is not a positive number."""
        section = config.get(CONFIG_KEY)
        if section is None:
            return cls()
        if not isinstance(section, dict) or section.get("method") != METHOD:
            raise ValueError(f"{CONFIG_KEY} must be an object with method {METHOD!r}, got {section!r}")
        return cls(section.get("coreness_temperature", 1.0), section.get("category_temperature", 1.0),
                   section.get("floor", 0.0))


IDENTITY = Calibration()
