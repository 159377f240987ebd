"""The ``linear`` model, the at-least-one-category fallback, the time-later split, real coreness labels
and the model card."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from models.archs.checkpoint import CheckpointError, load_checkpoint
from models.archs.linear import LinearClassifier
from models.archs.losses import classification_loss
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from models.records.schema import Record
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import (
    DatedRecord,
    bare_archives,
    category_targets,
    category_vocabulary,
    decimal_year,
    held_out,
    known_categories,
    load_records,
    parse_training_line,
    recency_weights,
    time_split,
    to_records,
)
from trainer.evaluation.evaluate import evaluate_model
from trainer.evaluation.thresholds import apply_thresholds
from trainer.training.train import train_model


def _dated_sample(n: int, seed: int = 0) -> list[dict]:
    """Generated records with dates, one a day from 2010-01-01 (so the most recent are the last ones)."""
    days = np.datetime64("2010-01-01") + np.arange(n)
    return [{**row, "date": str(day)} for row, day in zip(generate_sample(n, seed), days, strict=True)]


@pytest.fixture(scope="module")
def linear_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("linear") / "model"
    return train_model(_dated_sample(800), output_dir=out, arch="linear", progress=False, epochs=3)


def test_linear_round_trips(linear_checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((linear_checkpoint / "config.json").read_text())
    assert config["arch"] == "linear" and config["at_least_one_category"] is True
    assert (linear_checkpoint / "vocabulary.json").is_file()
    model, _ = load_checkpoint(linear_checkpoint)
    assert isinstance(model, LinearClassifier) and len(model.terms) == config["vocabulary_size"]
    records = to_records(generate_sample(50, seed=7), None, 0, CorenessProxy.load())
    first = Predictor.from_checkpoint(linear_checkpoint, device="cpu").predict_proba(records)
    second = Predictor.from_checkpoint(linear_checkpoint, device="cpu").predict_proba(records)
    np.testing.assert_array_equal(first[1], second[1])
    broken = tmp_path / "broken"
    shutil.copytree(linear_checkpoint, broken)
    (broken / "vocabulary.json").unlink()
    with pytest.raises(CheckpointError, match="vocabulary.json is missing"):
        load_checkpoint(broken)


def test_every_record_gets_a_category_unless_disabled(linear_checkpoint: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict"
    shutil.copytree(linear_checkpoint, strict)
    config = json.loads((strict / "config.json").read_text())
    config["thresholds"] = {label: 2.0 for label in config["category_labels"]}  # above any probability
    (strict / "config.json").write_text(json.dumps(config))
    records = to_records(generate_sample(20, seed=3), None, 0, CorenessProxy.load())
    predictor = Predictor.from_checkpoint(strict, device="cpu")
    _, probs = predictor.predict_proba(records)
    results = predictor.predict_batch(records)
    assert [[c.label for c in r.categories] for r in results] == [[config["category_labels"][int(p.argmax())]]
                                                                  for p in probs]
    off = Predictor.from_checkpoint(strict, device="cpu", at_least_one_category=False)
    assert all(r.categories == [] for r in off.predict_batch(records))
    config["at_least_one_category"] = False
    (strict / "config.json").write_text(json.dumps(config))
    assert all(r.categories == [] for r in Predictor.from_checkpoint(strict, device="cpu").predict_batch(records))

    scores = np.array([[0.1, 0.3], [0.6, 0.2]], dtype=np.float32)
    assert apply_thresholds(scores, {"a": 0.5, "b": 0.5}, ["a", "b"], at_least_one=True).tolist() == [[0, 1], [1, 0]]
    assert apply_thresholds(scores, {"a": 0.5, "b": 0.5}, ["a", "b"]).tolist() == [[0, 0], [1, 0]]


def test_validation_is_the_most_recent_slice(linear_checkpoint: Path) -> None:
    records = to_records(_dated_sample(100), None, 0, CorenessProxy.load())
    undated = to_records(generate_sample(10, seed=9), None, 0, CorenessProxy.load())
    train, valid = time_split(records[::-1] + undated, 0.1)
    assert sorted(r.date for r in valid) == sorted(r.date for r in records)[-11:]  # 10% of 110 records
    assert max(r.date for r in train if r.date) < min(r.date for r in valid)
    assert {r.id for r in undated} <= {r.id for r in train}
    card = json.loads((linear_checkpoint / "config.json").read_text())["card"]
    assert card["data"]["valid_split"] == "most recent slice by date"
    assert card["data"]["train_dates"]["last"] < card["data"]["valid_dates"]["first"]
    valid_metrics = card["metrics"]["time_later_valid"]
    assert {"category_f1_micro", "category_f1_micro_cross_fitted", "coreness_recall"} <= set(valid_metrics)
    assert card["limits"]


def _coreness_file(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def test_real_coreness_labels_train_the_coreness_head(tmp_path: Path, shared_data: Path | None) -> None:
    row = {"id": "42", "title": "A detector", "abstract": "Calorimeter tests.", "label": "non_core",
           "arxiv_categories": ["physics.ins-det"], "year": 2016}
    record = parse_training_line(json.dumps(row).encode())
    assert (record.coreness, record.categories, record.date) == ("non_core", ["physics.ins-det"], "2016")
    # An INSPIRE-coreness-shaped file: real decisions that contradict the proxy of their categories.
    rows = [{**r, "id": f"x{i}", "label": "non_core" if i % 2 else "rejected", "year": 2015}
            for i, r in enumerate(generate_sample(200, seed=5))]
    extra = [_coreness_file(tmp_path / "labels.jsonl.gz", rows)]
    if shared_data is not None:
        extra.append(shared_data / "inspire-coreness.jsonl.gz")
    checkpoint = train_model(_dated_sample(400), output_dir=tmp_path / "m", progress=False, epochs=2,
                             extra_train=extra)
    config = json.loads((checkpoint / "config.json").read_text())
    fit, check = held_out(load_records(extra[0]), 0.2)
    assert 0 < len(check) < len(fit)
    assert config["training"]["extra_train_records"] >= len(fit)
    real = config["metrics"]["extra_valid"]
    assert real["records"] >= len(check) and {"non_core", "rejected"} <= set(real["coreness_recall"])
    assert config["card"]["metrics"]["real_coreness_held_out"] == real
    weights = config["training"]["coreness_class_weights"]
    assert weights[0] < weights[1] and weights[0] < weights[2]  # core is the majority: the rare classes count more

    # Their categories do not train the category head: a masked record adds only its coreness loss.
    logits = torch.zeros(2, 3), torch.zeros(2, 4)
    from models.archs.base import ClassifierOutput
    output = ClassifierOutput(*logits)
    core, cats = torch.tensor([0, 1]), torch.ones(2, 4)
    masked = classification_loss(output, core, cats, category_mask=torch.tensor([1.0, 0.0]))
    plain = classification_loss(output, core, cats)
    assert masked.item() == pytest.approx(plain.item())  # same mean per kept record
    only_core = classification_loss(output, core, cats, category_mask=torch.zeros(2))
    assert only_core.item() == pytest.approx(np.log(3))


def test_evaluation_report_carries_the_model_card(linear_checkpoint: Path, tmp_path: Path) -> None:
    evaluate_model(linear_checkpoint, _dated_sample(60, seed=4), output_dir=tmp_path, progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "## Model card" in report and "Time-later validation" in report and "Known limits" in report


def real_or_sample_split(shared_data: Path | None) -> tuple[list[Record], list[Record]]:
    """6,000 training papers and 800 papers of 2018 (else the generated sample)."""
    proxy = CorenessProxy.load()
    if shared_data is not None:
        return (load_records(shared_data / "arxiv-train.jsonl.gz", limit=6000, proxy=proxy),
                load_records(shared_data / "arxiv-valid-2018.jsonl.gz", limit=800, proxy=proxy))
    return to_records(_dated_sample(2000, seed=1), None, 0, proxy), to_records(generate_sample(400, seed=2), None, 0,
                                                                                 proxy)


@pytest.mark.timeout(600)
def test_linear_beats_trivial_baselines_on_real_data(tmp_path: Path, shared_data: Path | None) -> None:
    train, test = real_or_sample_split(shared_data)
    model = train_model(train, output_dir=tmp_path / "m", arch="linear", progress=False)
    assert_beats_trivial_baselines(Predictor.from_checkpoint(model, device="cpu"), train, test)


def assert_beats_trivial_baselines(predictor: Predictor, train: list[Record], test: list[Record]) -> None:
    """Every record gets a category; category micro-F1 > the most common category set + 0.2; coreness accuracy >
    the majority class + 0.05."""
    labels = predictor.category_labels
    results = predictor.predict_batch(test)
    assert all(r.categories for r in results)
    y_true = category_targets(test, labels)
    y_pred = category_targets([Record(id=r.id, title="t", abstract="a", categories=[c.label for c in r.categories])
                               for r in results], labels)
    sets = [tuple(sorted(c for c in r.categories if c in labels)) for r in train]
    common = category_targets([Record(id="b", title="t", abstract="a", categories=list(max(set(sets),
                                                                                          key=sets.count)))], labels)
    baseline = f1_score(y_true, np.tile(common, (len(test), 1)), average="micro", zero_division=0)
    assert f1_score(y_true, y_pred, average="micro", zero_division=0) > baseline + 0.2
    majority = max({r.coreness for r in train}, key=[r.coreness for r in train].count)
    accuracy = np.mean([res.coreness.label == r.coreness for res, r in zip(results, test, strict=True)])
    assert accuracy > np.mean([r.coreness == majority for r in test]) + 0.05


@pytest.mark.timeout(900)
def test_demo_and_compose_bootstrap_train_on_real_papers_when_given(tmp_path: Path, moto_server) -> None:
    import os
    import subprocess

    import boto3

    from streaming.apps.demo import ensure_model, real_split
    from tests.test_compose import SERVICES

    data = _coreness_file(tmp_path / "papers.jsonl.gz", _dated_sample(300, seed=8))
    train, held_out = real_split(data, 200, 100)  # the demo holds out the 100 most recent papers
    config = ensure_model(tmp_path / "demo", False, train, len(train))
    assert config["arch"] == "linear" and config["training"]["train_records"] + config["training"][
        "valid_records"] == 200
    last_trained = config["card"]["data"]["valid_dates"]["last"]
    assert last_trained == max(paper.date for paper in train) < min(paper.date for paper in held_out)

    bucket = "bootstrap-real"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url).create_bucket(Bucket=bucket)
    command = SERVICES["model-bootstrap"]["command"][0].replace("$$", "$").replace(
        "/tmp/bootstrap-model", str(tmp_path / "model"))
    env = {**os.environ, "CORESTREAM_REGISTRY__ENDPOINT_URL": moto_server.endpoint_url,
           "CORESTREAM_REGISTRY__BUCKET": bucket, "CORESTREAM_MODEL__DEVICE": "cpu",
           "BOOTSTRAP_DATA": str(data)}
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "saved linear model" in result.stdout and "\"train_records\": 270" in result.stdout  # not the sample


def test_recency_weights_halve_per_half_life() -> None:
    records = [DatedRecord(id=str(i), title="t", abstract="a", date=date)
               for i, date in enumerate(["2017-01-01", "2013-01-01", "2009-01-01", None, "2017"])]
    weights = recency_weights(records, 4.0)
    dated = weights[[0, 1, 2, 4]]
    assert dated.mean() == pytest.approx(1.0)
    assert weights[0] / weights[1] == pytest.approx(2.0, rel=1e-3) and weights[1] / weights[2] == pytest.approx(
        2.0, rel=1e-3)
    assert weights[3] == pytest.approx(weights[0])  # undated: as the most recent
    assert recency_weights(records, 0.0).tolist() == [1.0] * 5
    assert decimal_year("2016-07-02") == pytest.approx(2016.5, abs=0.01) and decimal_year("n/a") is None


def test_refit_trains_the_saved_model_on_the_validation_slice_too(tmp_path: Path) -> None:
    rows = _dated_sample(300, seed=6)
    for row in rows[-20:]:  # the most recent 20 papers (the validation slice is the last 30) share a new term
        row["abstract"] += " zyxwvut"
    refit = train_model(rows, output_dir=tmp_path / "refit", arch="linear", progress=False, epochs=2)
    held = train_model(rows, output_dir=tmp_path / "held", arch="linear", progress=False, epochs=2, refit=False)
    refit_config, held_config = (json.loads((path / "config.json").read_text()) for path in (refit, held))
    assert refit_config["training"]["refit_on_all_records"] and not held_config["training"]["refit_on_all_records"]
    assert refit_config["training"]["valid_records"] == 30
    assert "zyxwvut" in load_checkpoint(refit)[0].terms and "zyxwvut" not in load_checkpoint(held)[0].terms
    # Thresholds and metrics come from the held-out run in both: the same numbers.
    assert refit_config["metrics"] == held_config["metrics"] and refit_config["thresholds"] == held_config["thresholds"]
    assert refit_config["card"]["data"]["refit_on_all_records"] is True


def test_bare_archive_labels_leave_its_subject_classes_unknown(tmp_path: Path) -> None:
    """Old papers filed under a bare archive (``astro-ph``, before arXiv split it) neither train its subject
    classes as negatives nor become a category of their own."""
    records = [Record(id="a", title="t", abstract="a", categories=["astro-ph", "hep-ph"]),
               Record(id="b", title="t", abstract="a", categories=["astro-ph", "astro-ph.CO"]),
               Record(id="c", title="t", abstract="a", categories=["astro-ph.GA"])]
    assert bare_archives(["astro-ph", "astro-ph.GA", "hep-ph", "math"]) == {"astro-ph"}
    labels = category_vocabulary(records)
    assert "astro-ph" not in labels and {"astro-ph.CO", "astro-ph.GA", "hep-ph"} <= set(labels)
    known = known_categories(records, labels)
    unknown = {labels[i] for i in np.flatnonzero(known[0] == 0)}
    assert unknown == {"astro-ph.CO", "astro-ph.GA"}
    assert known[1:].all()  # a paper with a subject class of its own: every label is known
    # Unknown entries add no loss.
    from models.archs.base import ClassifierOutput
    output = ClassifierOutput(torch.zeros(1, 3), torch.tensor([[5.0, -5.0]]))
    loss = classification_loss(output, torch.tensor([0]), torch.zeros(1, 2), category_known=torch.tensor([[0.0, 1.0]]))
    assert loss.item() == pytest.approx(np.log(3) + float(torch.nn.functional.softplus(torch.tensor(-5.0))))

    # End to end: the oldest half of the astro-ph.CO papers filed under bare astro-ph.
    rows = _dated_sample(800, seed=8)
    for row in rows[:400]:
        row["categories"] = ["astro-ph" if c == "astro-ph.CO" else c for c in row["categories"]]
    control = [{**row, "categories": ["astroph" if c == "astro-ph" else c for c in row["categories"]]} for row in rows]
    options = {"arch": "linear", "progress": False, "epochs": 3, "recency_half_life": 0.0}
    bare = train_model(rows, output_dir=tmp_path / "bare", **options)
    naive = train_model(control, output_dir=tmp_path / "naive", **options)  # an unrelated label: CO negatives
    assert "astro-ph" not in json.loads((bare / "config.json").read_text())["category_labels"]
    assert "astroph" in json.loads((naive / "config.json").read_text())["category_labels"]
    test = [r for r in to_records(generate_sample(300, seed=9), None, 0, CorenessProxy.load())
            if "astro-ph.CO" in r.categories]

    def co_probability(path: Path) -> float:
        predictor = Predictor.from_checkpoint(path, device="cpu")
        return float(predictor.predict_proba(test)[1][:, predictor.category_labels.index("astro-ph.CO")].mean())

    assert co_probability(bare) > co_probability(naive) + 0.2  # measured: 0.87 against 0.33
