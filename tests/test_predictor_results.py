"""Predictor.results: the categories above their thresholds, highest first (ties in label order), the best one when
none passes (if the checkpoint says so), and the coreness label with its scores."""

from __future__ import annotations

import numpy as np
import pytest

from models.inference.predictor import Predictor
from tests.helpers_stream import tiny_model_dir


def test_results_rank_categories_break_ties_by_label_order_and_fall_back_to_the_best() -> None:
    predictor = Predictor.from_checkpoint(tiny_model_dir(), device="cpu")
    labels = predictor.category_labels
    assert len(labels) >= 5
    predictor.thresholds = np.full(len(labels), 0.5, dtype=np.float32)
    coreness = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], dtype=np.float32)
    categories = np.full((3, len(labels)), 0.1, dtype=np.float32)
    categories[0, [3, 1, 2]] = [0.9, 0.6, 0.9]  # 2 and 3 tie
    categories[1, 4] = 0.3  # none passes: the best one
    categories[2, 0] = 0.5  # at the threshold passes

    predictor.at_least_one_category = True
    out = predictor.results(["a", "b", "c"], coreness, categories)
    assert [r.id for r in out] == ["a", "b", "c"]
    assert [r.coreness.label for r in out] == ["non_core", "core", "rejected"]
    assert [[c.label for c in r.categories] for r in out] == [[labels[2], labels[3], labels[1]], [labels[4]],
                                                              [labels[0]]]
    assert [c.score for c in out[0].categories] == pytest.approx([0.9, 0.9, 0.6])
    assert out[0].coreness.scores.model_dump() == pytest.approx({"core": 0.1, "non_core": 0.7, "rejected": 0.2})
    assert len({r.classified_at for r in out}) == 1 and out[0].model.name == predictor.info.name
    assert predictor.result("a", coreness[0], categories[0]).model_dump(exclude={"classified_at"}) == \
        out[0].model_dump(exclude={"classified_at"})

    predictor.at_least_one_category = False
    assert predictor.results(["b"], coreness[1:2], categories[1:2])[0].categories == []
