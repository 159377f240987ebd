"""``--label-prior``: importance weights move the training data's effective primary-category mix toward the
target's, and thresholds are tuned on the representative part of the time-later slice."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trainer.datasets.training_data import DatedRecord, load_records
from trainer.training.config import TrainConfig, TrainingError
from trainer.training.label_prior import MIN_TUNING_RECORDS, LabelPrior, primary_shares
from trainer.training.train import train_model


def _paper(number: int, categories: list[str], date: str = "2017-06-01") -> DatedRecord:
    return DatedRecord(id=f"p{number}", title=f"paper {number}", abstract="text", categories=categories, date=date)


def _weighted_shares(records: list[DatedRecord], weights: np.ndarray) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for record, weight in zip(records, weights, strict=True):
        totals[record.categories[0]] += float(weight)
    return {cat: value / sum(totals.values()) for cat, value in totals.items()}


def test_weights_move_the_effective_prior_to_the_target() -> None:
    # a harvest: 80% math.FA (cross-list heavy), 20% hep-th; the target: 10% math.FA, 90% hep-th
    train = [_paper(i, ["math.FA"] if i % 5 else ["hep-th", "math.FA"]) for i in range(1000)]
    target = [_paper(10_000 + i, ["math.FA"] if i % 10 == 0 else ["hep-th"]) for i in range(500)]
    prior = LabelPrior.from_records(target)
    full = prior.weights(train, 1.0)
    half = prior.weights(train, 0.5)
    assert full.mean() == pytest.approx(1.0) and full.dtype == np.float32
    assert np.all(prior.weights(train, 0.0) == 1.0)
    shares = {power: _weighted_shares(train, w)["hep-th"] for power, w in ((0, np.ones(len(train))), (0.5, half),
                                                                           (1, full))}
    assert shares[0] == pytest.approx(0.2)
    assert shares[0] < shares[0.5] < shares[1]  # P moves the mix part of the way, then all of it
    assert shares[1] == pytest.approx(primary_shares(target)["hep-th"], abs=0.01)


def test_a_primary_the_target_never_saw_is_clipped_not_zeroed() -> None:
    train = [_paper(i, ["math.GT"] if i % 2 else ["hep-th"]) for i in range(200)]
    prior = LabelPrior.from_records([_paper(1000 + i, ["hep-th"]) for i in range(100)])
    weights = prior.weights(train, 1.0)
    # hep-th: target share 1 / train share 0.5 = 2; math.GT: below 1/20, clipped to 1/20
    assert weights[1] / weights[0] == pytest.approx((1 / 20) / 2, rel=1e-3)


def test_priors_come_from_the_most_recent_year() -> None:
    old = [_paper(i, ["math.FA"], date="2010-01-01") for i in range(100)]
    recent = [_paper(100 + i, ["hep-th"], date="2017-06-01") for i in range(10)]
    assert set(primary_shares(old + recent)) == {"hep-th"}


def test_tuning_slice_is_the_representative_part() -> None:
    valid = [_paper(i, ["hep-th"]) for i in range(2 * MIN_TUNING_RECORDS)]
    prior = LabelPrior(frozenset(f"p{i}" for i in range(0, 2 * MIN_TUNING_RECORDS, 2)), {"hep-th": 1.0})
    assert [r.id for r in prior.tuning_slice(valid)] == [f"p{i}" for i in range(0, 2 * MIN_TUNING_RECORDS, 2)]
    few = LabelPrior(frozenset({"p0", "p2"}), {"hep-th": 1.0})
    assert len(few.tuning_slice(valid)) == len(valid)  # too few: the whole slice


def test_negative_power_is_refused() -> None:
    with pytest.raises(TrainingError):
        TrainConfig(label_prior="x", label_prior_power=-1).resolved()


def _lines(path: Path, every: int, limit: int) -> list[dict]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number % every == 0:
                rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
    return rows


@pytest.mark.timeout(120)
def test_training_with_a_label_prior_on_real_papers(tmp_path: Path, shared_data: Path | None) -> None:
    """A slice of the large file with the representative file as prior: thresholds are tuned on the validation
    papers that are in the prior, and the checkpoint says so. (Generated papers stand in without the data.)"""
    if shared_data is not None and (shared_data / "arxiv-train-large.jsonl.gz").exists():
        rows = _lines(shared_data / "arxiv-train-large.jsonl.gz", every=60, limit=6000)
    else:
        from trainer.datasets.sample import generate_sample

        days = np.datetime64("2010-01-01") + np.arange(6000)
        rows = [{**row, "date": str(day)} for row, day in zip(generate_sample(6000, 0), days, strict=True)]
    rows.sort(key=lambda row: row["date"])
    prior_rows = [row for number, row in enumerate(rows) if number % 6]  # five sixths: "the representative part"
    prior_file = tmp_path / "prior.jsonl.gz"
    data_file = tmp_path / "data.jsonl.gz"
    for path, chosen in ((prior_file, prior_rows), (data_file, rows)):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in chosen)
    path = train_model(data_file, output_dir=tmp_path / "m", arch="linear", progress=False, epochs=1, refit=False,
                       label_prior=prior_file, min_category_count=2)
    config = json.loads((path / "config.json").read_text())
    training = config["training"]
    prior_ids = {r.id for r in load_records(prior_file)}
    assert training["label_prior"] == str(prior_file) and training["label_prior_power"] == 0.0
    assert training["valid_records"] == 600
    assert training["threshold_records"] == sum(1 for r in load_records(data_file)[-600:] if r.id in prior_ids)
    assert training["threshold_records"] == 500
    assert config["calibration"]["records"] == training["threshold_records"]


def test_hybrid_refuses_a_label_prior(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="label-prior"):
        train_model(None, arch="hybrid", label_prior=tmp_path / "prior.jsonl", output_dir=tmp_path / "m")
