"""Training loss: cross-entropy (coreness) + binary cross-entropy (categories), optionally focal."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.archs.base import ClassifierOutput


def bce(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0,
        sample_weight: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy summed over categories, averaged over the batch (so that many categories do not
    dilute the signal); with ``gamma`` > 0 the focal form (Lin et al. 2017), ``(1 - p_t) ** gamma`` * BCE.
    ``known`` (batch, C): 0 for the entries whose label is unknown (they add no loss)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        loss = (1 - torch.exp(-loss)) ** gamma * loss
    if known is not None:
        loss = loss * known
    loss = loss.sum(-1)
    return (loss if sample_weight is None else loss * sample_weight).mean()


def focal_ce(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Multi-class focal loss."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()


def classification_loss(output: ClassifierOutput, coreness: torch.Tensor, categories: torch.Tensor,
                        focal_gamma: float = 0.0, coreness_weight: torch.Tensor | None = None,
                        category_mask: torch.Tensor | None = None,
                        sample_weight: torch.Tensor | None = None,
                        category_known: torch.Tensor | None = None) -> torch.Tensor:
    """``coreness``: class indices (batch,); ``categories``: 0/1 floats (batch, C). ``focal_gamma`` 0 = plain.

    ``coreness_weight`` (3,): class weights of the coreness cross-entropy (plain loss only);
    ``category_mask`` (batch,): 0 for records whose categories must not train the category head;
    ``sample_weight`` (batch,): per-record weights of the category loss (e.g. recency);
    ``category_known`` (batch, C): 0 for single unknown labels of a record (see
    :func:`trainer.datasets.training_data.known_categories`)."""
    core_logits, cat_logits = output.coreness_logits.float(), output.category_logits.float()
    if focal_gamma > 0:
        core_loss = focal_ce(core_logits, coreness, focal_gamma)
    else:
        core_loss = F.cross_entropy(core_logits, coreness, weight=coreness_weight)
    if category_mask is not None:
        keep = category_mask.bool()
        if not keep.any():
            return core_loss
        cat_logits, categories = cat_logits[keep], categories[keep]
        sample_weight = None if sample_weight is None else sample_weight[keep]
        category_known = None if category_known is None else category_known[keep]
    return core_loss + bce(cat_logits, categories, focal_gamma, sample_weight, category_known)
