"""The training half of an architecture: the :class:`ArchTrainer` interface, and the one registry from arch name
to trainer (:data:`TRAINERS`) that ``corestream-train train`` dispatches on. The model half is
:mod:`models.archs.base`; the two are registered under the same name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from models.records.schema import Record
    from trainer.training.config import TrainConfig

TrainingData = str | Path | Sequence["Record | dict"] | None  # a file, records or record dicts, or a sample


@dataclass(frozen=True)
class ArchDefaults:
    """An architecture's values for the options left unset (``None``) in :class:`TrainConfig`."""

    epochs: int
    batch_size: int
    learning_rate: float
    recency_half_life: float


@dataclass
class FitResult:
    """What one fit did: optimiser steps, epochs, seconds, and the coreness class weights of its loss."""

    steps: int
    epochs: int
    seconds: float
    coreness_weight: list[float]


class ArchTrainer(Protocol):
    """Trains one architecture: from data and options to a saved checkpoint (its path)."""

    arch: str
    defaults: ArchDefaults

    def train(self, data: TrainingData, config: TrainConfig, arch_params: dict[str, Any]) -> Path:
        """Train on ``data`` as ``config`` says (``arch_params``: the model's own parameters, e.g. ``embed_dim``),
        save the checkpoint in ``config.output_dir`` and return that path."""
        ...


# arch name -> "module:Class" (imported on first use: hybrid loads `transformers`), or the class; in the order
# the command line lists them
TRAINERS: dict[str, str | type[ArchTrainer]] = {
    "linear": "trainer.training.train:LinearTrainer",
    "bag": "trainer.training.train:BagTrainer",
    "transformer": "trainer.training.train:TransformerTrainer",
    "hybrid": "trainer.training.hybrid:HybridTrainer",
}


def register_trainer(name: str, target: str | type[ArchTrainer]) -> None:
    """Register the trainer of architecture ``name``: its class, or ``"module:Class"`` to import when first used."""
    TRAINERS[name] = target


def arch_trainer(name: str) -> ArchTrainer:
    """The trainer registered as ``name`` (``KeyError`` if none is)."""
    target = TRAINERS[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
    return target()
