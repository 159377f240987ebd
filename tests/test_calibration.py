"""Calibrated scores: temperature fitting, the checkpoint's ``calibration``, the predictor applying it, old
checkpoints loading as uncalibrated, and calibration on real papers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, softmax

from models.archs.calibration import DEFAULT_FLOOR, IDENTITY, Calibration
from models.archs.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config
from models.inference.predictor import Predictor, score_logits
from models.records.labels import CorenessProxy
from models.records.schema import CORENESS_LABELS
from tests.test_accuracy import _dated_sample, real_or_sample_split
from trainer.datasets.training_data import category_targets, time_split, to_records
from trainer.evaluation.calibration import fit_calibration, sigmoid_temperature, softmax_temperature
from trainer.evaluation.evaluate import evaluate_model
from trainer.evaluation.metrics import category_calibration, coreness_calibration, expected_calibration_error
from trainer.evaluation.thresholds import apply_thresholds, calibrated_grid, tune_thresholds
from trainer.training.train import train_model


def test_fitted_temperature_undoes_over_confident_logits() -> None:
    """Labels drawn from the true probabilities; logits 4x too large: the fitted temperature is ~4 and the
    calibration error drops."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(20_000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    assert softmax_temperature(4 * true_logits, labels) == pytest.approx(4, rel=0.1)
    over = softmax(4 * true_logits, axis=1)
    fixed = Calibration(coreness_temperature=softmax_temperature(4 * true_logits, labels)).coreness(4 * true_logits)
    assert expected_calibration_error(fixed.max(1), fixed.argmax(1) == labels) < 0.02
    assert expected_calibration_error(over.max(1), over.argmax(1) == labels) > 0.1

    pair_logits = rng.normal(-2, 2, size=(5_000, 8))
    targets = rng.random(pair_logits.shape) < expit(pair_logits)
    assert sigmoid_temperature(3 * pair_logits, targets) == pytest.approx(3, rel=0.1)
    known = np.ones(targets.shape)
    known[:, 0] = 0  # unknown pairs do not count, however wrong
    flipped = targets.copy()
    flipped[:, 0] = ~flipped[:, 0]
    assert sigmoid_temperature(3 * pair_logits, flipped, known) == pytest.approx(3, rel=0.1)
    assert sigmoid_temperature(pair_logits, np.zeros_like(targets)) == 1.0  # nothing to fit on
    # top_k: only each row's best pairs count (labels flipped elsewhere change nothing)
    best = np.argsort(-pair_logits, axis=1)[:, :2]
    outside = np.ones(targets.shape, dtype=bool)
    np.put_along_axis(outside, best, False, axis=1)
    scrambled = np.where(outside, ~targets, targets)
    assert sigmoid_temperature(3 * pair_logits, scrambled, top_k=2) == sigmoid_temperature(3 * pair_logits, targets,
                                                                                           top_k=2)


def test_ece_matches_a_case_worked_by_hand() -> None:
    # bin [0.6, 0.667): 2 answers, mean 0.6, 1 right -> |0.5 - 0.6|; bin [0.933, 1]: 2 answers at 1.0, 1 right
    ece = expected_calibration_error(np.array([0.6, 0.6, 1.0, 1.0]), np.array([1, 0, 1, 0]))
    assert ece == pytest.approx((2 * 0.1 + 2 * 0.5) / 4)
    report = coreness_calibration(["core", "non_core"], np.array([[0.9, 0.1, 0.0], [0.9995, 0.0005, 0.0]]),
                                  CORENESS_LABELS)
    assert report["accuracy"] == 0.5 and report["saturated_share"] == 0.5 and report["answers"] == 2
    cats = category_calibration(np.array([[1, 0], [0, 0]]), np.array([[0.8, 0.3], [0.2, 0.6]]),
                                np.array([[1, 0], [0, 1]]))
    assert cats["top"]["accuracy"] == 0.5 and cats["returned"]["answers"] == 2
    assert cats["returned"]["ece"] == pytest.approx((abs(1 - 0.8) + abs(0 - 0.6)) / 2)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear model on a dated sample, held-out model kept (no refit), so that its validation slice is
    held out from what the saved model learned."""
    out = tmp_path_factory.mktemp("calibrated") / "model"
    return train_model(_dated_sample(800), output_dir=out, arch="linear", progress=False, epochs=3, refit=False)


def test_calibration_round_trips_and_the_predictor_applies_it(calibrated: Path) -> None:
    config = read_checkpoint_config(calibrated)
    section = config["calibration"]
    assert section["method"] == "temperature" and section["fitted_on"] == "most recent slice by date"
    assert section["records"] == config["training"]["valid_records"] == 80
    assert config["card"]["calibration"] == section
    predictor = Predictor.from_checkpoint(calibrated, device="cpu")
    assert predictor.calibration == Calibration.from_config(config) != IDENTITY
    records = to_records(_dated_sample(60, seed=11), None, 0, CorenessProxy.load())
    core_logits, cat_logits = score_logits(predictor.model, [r.text for r in records])
    core, cats = predictor.predict_proba(records)
    floor = section["floor"]
    assert floor == DEFAULT_FLOOR
    np.testing.assert_allclose(core, (1 - floor) * softmax(core_logits / section["coreness_temperature"], axis=1)
                               + floor / 3, rtol=1e-5)
    np.testing.assert_allclose(cats, (1 - floor) * expit(cat_logits / section["category_temperature"]) + floor / 2,
                               rtol=1e-5)
    assert core.max() <= 1 - 2 * floor / 3 + 1e-6 and cats.max() <= 1 - floor / 2 + 1e-6
    results = predictor.predict_batch(records)
    assert [r.coreness.scores.core for r in results] == pytest.approx(core[:, 0].tolist())

    # the thresholds are tuned on the calibrated scores of the validation slice
    _, valid = time_split(to_records(_dated_sample(800), None, 0, CorenessProxy.load()), 0.1)
    labels = predictor.category_labels
    y_valid = category_targets(valid, labels)
    assert config["thresholds"] == tune_thresholds(predictor.predict_proba(valid)[1], y_valid, labels,
                                                   grid=calibrated_grid(predictor.calibration))
    # over the calibrated grid, a record gets the same categories as the uncalibrated scores would give
    raw_logits = score_logits(predictor.model, [r.text for r in valid])[1]
    raw_thresholds = tune_thresholds(IDENTITY.categories(raw_logits), y_valid, labels)
    np.testing.assert_array_equal(apply_thresholds(predictor.predict_proba(records)[1], config["thresholds"], labels),
                                  apply_thresholds(IDENTITY.categories(cat_logits), raw_thresholds, labels))


def test_checkpoint_without_calibration_loads_uncalibrated(calibrated: Path, tmp_path: Path) -> None:
    old = Path(shutil.copytree(calibrated, tmp_path / "old"))
    config = json.loads((old / "config.json").read_text())
    del config["calibration"], config["card"]["calibration"]
    (old / "config.json").write_text(json.dumps(config))
    predictor = Predictor.from_checkpoint(old, device="cpu")
    assert predictor.calibration == IDENTITY
    records = to_records(_dated_sample(30, seed=12), None, 0, CorenessProxy.load())
    core_logits, cat_logits = score_logits(predictor.model, [r.text for r in records])
    core, cats = predictor.predict_proba(records)
    np.testing.assert_allclose(core, softmax(core_logits, axis=1), rtol=1e-5)
    np.testing.assert_allclose(cats, expit(cat_logits), rtol=1e-5, atol=1e-7)
    report = evaluate_model(old, _dated_sample(40, seed=13), output_dir=tmp_path / "report", progress=False)
    assert report["calibration"]["temperatures"] is None
    assert "has no calibration" in (tmp_path / "report" / "report.md").read_text()

    for bad in ({"method": "temperature", "coreness_temperature": -1.0}, {"method": "temperature", "floor": 1.5},
                {"method": "isotonic"}, "hot"):
        config["calibration"] = bad
        (old / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="calibration"):
            load_checkpoint(old)


@pytest.mark.timeout(600)
def test_calibration_on_real_papers(tmp_path: Path, shared_data: Path | None) -> None:
    """Trained on 6,000 real papers (its time-later tenth fits the temperatures), scored on 800 papers of 2018:
    the calibrated coreness scores are closer to the share of right answers than the raw ones, and not saturated.
    (The generated sample stands in without ../shared/data.)"""
    train, test = real_or_sample_split(shared_data)
    # the held-out model (no refit, half the time); the full-data figures with the refit are in docs/models.md
    model = train_model(train, output_dir=tmp_path / "m", arch="linear", progress=False, refit=False)
    predictor = Predictor.from_checkpoint(model, device="cpu")
    if shared_data is not None:  # real papers: the raw scores are over-confident
        assert predictor.calibration.coreness_temperature > 1 and predictor.calibration.category_temperature > 1
    report = evaluate_model(model, test, output_dir=tmp_path / "report", progress=False)
    calibrated = report["calibration"]["coreness"]
    core_logits, cat_logits = score_logits(predictor.model, [r.text for r in test])
    raw = coreness_calibration([r.coreness for r in test], IDENTITY.coreness(core_logits), CORENESS_LABELS)
    assert calibrated["accuracy"] == pytest.approx(raw["accuracy"])  # temperature keeps every answer
    assert calibrated["ece"] < raw["ece"] and calibrated["ece"] < 0.08
    assert calibrated["saturated_share"] <= 0.05 < raw["saturated_share"]
    labels = predictor.category_labels
    cats = report["calibration"]["categories"]
    raw_cats = IDENTITY.categories(cat_logits)
    rows = np.arange(len(test))
    raw_top = expected_calibration_error(raw_cats[rows, raw_cats.argmax(1)],
                                         category_targets(test, labels)[rows, raw_cats.argmax(1)])
    assert cats["top"]["saturated_share"] <= 0.05
    if shared_data is not None:  # (on the generated sample the raw scores are all right, and all near 1)
        assert cats["top"]["ece"] < raw_top
        assert predictor.config["metrics"]["valid"]["coreness_ece"] < predictor.config["metrics"]["valid"][
            "coreness_ece_uncalibrated"]
    predicted = apply_thresholds(predictor.predict_proba(test)[1], predictor.config["thresholds"], labels,
                                 at_least_one=True)
    assert cats["returned"]["answers"] == int(predicted.sum())
    assert (tmp_path / "report" / "calibration.png").is_file()
    assert "## Calibration" in (tmp_path / "report" / "report.md").read_text()
    assert "Scores: temperature scaling" in (tmp_path / "report" / "report.md").read_text()


def test_fit_calibration_fits_both_heads() -> None:
    rng = np.random.default_rng(1)
    core_logits = rng.normal(0, 1, size=(3_000, 3))
    core_true = np.array([rng.choice(3, p=p) for p in softmax(core_logits, axis=1)])
    cat_logits = rng.normal(-1, 1.5, size=(3_000, 5))
    cat_true = rng.random(cat_logits.shape) < expit(cat_logits)
    calibration = fit_calibration(5 * core_logits, core_true, 2 * cat_logits, cat_true, floor=0.0, top_k=None)
    assert calibration.coreness_temperature == pytest.approx(5, rel=0.15)
    assert calibration.category_temperature == pytest.approx(2, rel=0.15)
    with_floor = fit_calibration(5 * core_logits, core_true, 2 * cat_logits, cat_true)
    assert with_floor.floor == DEFAULT_FLOOR
    assert with_floor.coreness_temperature == pytest.approx(calibration.coreness_temperature, rel=0.1)
    assert with_floor.coreness(np.array([[100.0, 0.0, 0.0]])).max() == pytest.approx(1 - 2 * DEFAULT_FLOOR / 3)
