"""Calibrated scores: each head's logits divided by its own temperature before the softmax / sigmoid.

A text model trained to convergence is over-confident: uncalibrated, ``linear`` gave 79-86 % of its answers a top
score >= 0.999 while being right 83 % of the time on newer papers. One temperature per head, fitted on the
time-later validation slice (:mod:`trainer.calibration`), turns the scores into probabilities a curator can sort
by. Dividing logits by a positive constant keeps every arg-max and every category's ranking; thresholds are tuned
on the calibrated scores. The temperatures live in the checkpoint's ``config.json`` (``calibration``); a
checkpoint without them scores as before (temperature 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, softmax

CONFIG_KEY = "calibration"
METHOD = "temperature"


@dataclass(frozen=True)
class Calibration:
    """Temperatures of the coreness (softmax) and category (sigmoid) heads; 1.0 is the identity."""

    coreness_temperature: float = 1.0
    category_temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("coreness_temperature", "category_temperature"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"calibration {name} must be a positive number, got {value!r}")

    @property
    def identity(self) -> bool:
        return self.coreness_temperature == 1.0 and self.category_temperature == 1.0

    def coreness(self, logits: np.ndarray) -> np.ndarray:
        """Coreness probabilities (n, 3) from the coreness head's logits."""
        return softmax(logits / np.float32(self.coreness_temperature), axis=-1)

    def categories(self, logits: np.ndarray) -> np.ndarray:
        """Category probabilities (n, C) from the category head's logits."""
        return expit(logits / np.float32(self.category_temperature))

    def probabilities(self, coreness_logits: np.ndarray, category_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both heads' probabilities from their logits."""
        return self.coreness(coreness_logits), self.categories(category_logits)

    def to_config(self) -> dict[str, Any]:
        return {"method": METHOD, "coreness_temperature": self.coreness_temperature,
                "category_temperature": self.category_temperature}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Calibration:
        """The calibration of a checkpoint config (the identity when it has none: checkpoints before calibration).
        Raises ValueError for an unknown method or a temperature that is not a positive number."""
        section = config.get(CONFIG_KEY)
        if section is None:
            return cls()
        if not isinstance(section, dict) or section.get("method") != METHOD:
            raise ValueError(f"{CONFIG_KEY} must be an object with method {METHOD!r}, got {section!r}")
        return cls(section.get("coreness_temperature", 1.0), section.get("category_temperature", 1.0))


IDENTITY = Calibration()
