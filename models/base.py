"""What every architecture provides, so training and prediction need not know which one they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch


class ClassifierOutput(NamedTuple):
    coreness_logits: torch.Tensor  # (batch, 3)
    category_logits: torch.Tensor  # (batch, num_categories)


class TextClassifier(Protocol):
    """An ``nn.Module`` with a coreness head and a multi-label category head."""

    arch: str
    num_categories: int
    max_seq_length: int

    def arch_config(self) -> dict[str, Any]:
        """The parameters that rebuild this architecture (saved in config.json)."""

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of texts (keyword arguments of ``forward``)."""

    def count_tokens(self, text: str) -> int:
        """A cheap estimate of the number of input tokens of ``text``."""

    def save_extra(self, out_dir: Path) -> None:
        """Write files besides the weights (e.g. the tokenizer)."""

    def __call__(self, **inputs: torch.Tensor) -> ClassifierOutput: ...
