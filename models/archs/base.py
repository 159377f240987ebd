"""What every architecture's ``forward`` returns, so training and prediction need not know which one they run."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ClassifierOutput(NamedTuple):
    coreness_logits: torch.Tensor  # (batch, 3)
    category_logits: torch.Tensor  # (batch, num_categories)
