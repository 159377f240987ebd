"""What every architecture's fit shares: the priors its two heads' biases start at, the coreness class weights of
its loss, and what it reports (:class:`FitResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FitResult:
    """What one fit did: optimiser steps, epochs, seconds, and the coreness class weights of its loss."""

    steps: int
    epochs: int
    seconds: float
    coreness_weight: list[float]


def init_head_biases(model: torch.nn.Module, coreness: torch.Tensor, categories: torch.Tensor,
                     known: torch.Tensor | None = None) -> None:
    """Start the heads at the training priors (log class frequencies), so that the first steps are not spent
    learning that most categories are absent and the encoder is not shaken by huge initial losses."""
    with torch.no_grad():
        model.coreness_head.bias.copy_(coreness_prior_logits(coreness))
        model.category_head.bias.copy_(category_prior_logits(categories, known))


def coreness_prior_logits(coreness: torch.Tensor) -> torch.Tensor:
    """Log of each coreness class's frequency (3,), add-one smoothed."""
    return torch.bincount(coreness, minlength=3).float().add(1).div(len(coreness) + 3).log()


def category_prior_logits(categories: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Log-odds of each category's frequency (C,), over the records whose label for it is ``known``."""
    known = torch.ones_like(categories) if known is None else known
    prior = ((categories * known).sum(0) / known.sum(0)).nan_to_num(0.5).clamp(1e-4, 1 - 1e-4)  # 0/0: none known
    return torch.log(prior / (1 - prior))


def coreness_class_weights(coreness: torch.Tensor, power: float) -> torch.Tensor:
    """(n / (3 n_c)) ** ``power`` per coreness class (0: unweighted, 1: balanced), so that rare classes count."""
    counts = torch.bincount(coreness, minlength=3).float().clamp_min(1)
    return (counts.sum() / (3 * counts)).pow(power)
