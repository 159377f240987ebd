"""What a checkpoint was trained on, read back from its model card (``config.json`` ``card.data.source``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The card's source for a model trained on trainer.datasets.sample's generated records (no real paper in them).
GENERATED_SAMPLE = "generated sample"


def training_source(config: Mapping[str, Any]) -> str | None:
    """The training data named in the checkpoint's model card (a file, ``generated sample``), or None."""
    data = (config.get("card") or {}).get("data") or {}
    return data.get("source")


def trained_on(config: Mapping[str, Any]) -> str:
    """The training data in words: ``the generated sample``, a file name, or ``unknown data``."""
    source = training_source(config)
    return f"the {source}" if source == GENERATED_SAMPLE else source or "unknown data"


def trained_on_generated_sample(config: Mapping[str, Any]) -> bool:
    return training_source(config) == GENERATED_SAMPLE


def generated_sample_warning(config: Mapping[str, Any]) -> str | None:
    """A plain warning when the model was trained on the generated sample, else None."""
    if not trained_on_generated_sample(config):
        return None
    return (f"model {config.get('name')}@{config.get('version')} was trained on the generated sample (random word "
            "salad in 10 made-up topics), not on real papers: its answers on real records mean nothing. For a real "
            "model see README.md, 'The demo model, and a real model'.")
