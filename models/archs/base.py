"""The architecture interface: what a model class offers (:class:`Classifier`), what its ``forward`` returns
(:class:`ClassifierOutput`), and the one registry from arch name to class (:data:`ARCHS`) that checkpoints, the
predictor and the trainer dispatch on.

Adding an architecture: a module here with an ``nn.Module`` that implements :class:`Classifier`, one line in
:data:`ARCHS` (or :func:`register_arch`), and its trainer (``trainer.training.config.TRAINERS``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self

import torch
from torch import nn


class ClassifierOutput(NamedTuple):
    coreness_logits: torch.Tensor  # (batch, 3)
    category_logits: torch.Tensor  # (batch, num_categories)


class Classifier(Protocol):
    """An architecture's model (an ``nn.Module``). Its checkpoint holds ``arch``, :meth:`arch_config` (merged
    into ``config.json``), the ``state_dict`` (``model.safetensors``) and what :meth:`save_extra` writes;
    :meth:`from_config` rebuilds the module from them, before the weights are loaded. A model built on a Hugging
    Face encoder may also offer ``text_encoder() -> (encoder, tokenizer)``, for another model to start from, and
    its ``encoder`` attribute is what the int8 runtime quantises (:func:`models.archs.runtime.apply_runtime`)."""

    arch: str  # the name it is registered under, recorded in the checkpoint
    num_categories: int
    max_seq_length: int  # the default input length (tokens or words) of :meth:`encode`

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path) -> Self:
        """An (untrained) model of a checkpoint's ``config.json``, with any files :meth:`save_extra` wrote."""
        ...

    def arch_config(self) -> dict[str, Any]:
        """The architecture's parameters, recorded in the checkpoint's ``config.json``."""
        ...

    def save_extra(self, out_dir: Path) -> None:
        """Write what the weights do not hold (a vocabulary, tokenizer files) beside them."""
        ...

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """The ``forward`` keyword inputs of a batch of texts."""
        ...

    def count_tokens(self, text: str) -> int:
        """About how many input tokens a text costs (the micro-batcher's token budget)."""
        ...

    def __call__(self, **inputs: torch.Tensor) -> ClassifierOutput: ...


class UnknownArchError(ValueError):
    """An arch name that no architecture is registered under."""


# arch name -> "module:Class", imported on first use (transformer and hybrid load `transformers`), or the class
ARCHS: dict[str, str | type[nn.Module]] = {
    "linear": "models.archs.linear:LinearClassifier",
    "bag": "models.archs.bag:BagClassifier",
    "transformer": "models.archs.transformer:TransformerClassifier",
    "hybrid": "models.archs.hybrid:HybridClassifier",
}


def register_arch(name: str, target: str | type[nn.Module]) -> None:
    """Register an architecture: its model class, or ``"module:Class"`` to import when first used."""
    ARCHS[name] = target


def architecture(name: str) -> type[nn.Module]:
    """The model class registered as ``name`` (:class:`UnknownArchError` if none is)."""
    if name not in ARCHS:
        raise UnknownArchError(f"unknown arch {name!r}: expected one of {', '.join(ARCHS)}")
    target = ARCHS[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    return target
