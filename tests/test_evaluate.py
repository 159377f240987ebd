"""``corestream-train evaluate``: metrics match a case worked by hand; the CLI writes the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from trainer.cli import main
from trainer.datasets.sample import generate_sample, write_sample
from trainer.datasets.training_data import to_records
from trainer.evaluation.evaluate import build_report
from trainer.training.train import train_model


def test_metrics_match_a_case_worked_by_hand() -> None:
    # Categories a, b; threshold 0.5 each -> predictions [a], [a], [b], [a] for truths [a], [a b], [b], [].
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.6, 0.4], [0.3, 0.7], [0.8, 0.1]])
    coreness_probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    report = build_report(["core", "non_core", "rejected", "core"], coreness_probs, truth, probs, ["a", "b"],
                          {"a": 0.5, "b": 0.5})
    cats = report["categories"]
    # a: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 0.8;  b: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3.
    assert cats["per_class"][0]["f1"] == pytest.approx(0.8)
    assert cats["per_class"][1]["f1"] == pytest.approx(2 / 3)
    assert cats["f1_micro"] == pytest.approx(0.75)  # tp 3, fp 1, fn 1
    assert cats["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert cats["f1_weighted"] == pytest.approx((2 * 0.8 + 2 * 2 / 3) / 4)  # supports 2 and 2
    assert cats["f1_samples"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert cats["precision_micro"] == pytest.approx(0.75) and cats["recall_macro"] == pytest.approx(0.75)
    assert cats["hamming_loss"] == pytest.approx(2 / 8)
    assert cats["subset_accuracy"] == pytest.approx(0.5)
    # ROC-AUC a: 3 of 4 positive/negative pairs ordered right; b: 4 of 4.
    assert cats["roc_auc_macro"] == pytest.approx((0.75 + 1.0) / 2)
    # AP a: positives at ranks 1 and 3 -> 1/2 * 1 + 1/2 * 2/3; b: 1.
    assert cats["map"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    core = report["coreness"]
    assert core["accuracy"] == pytest.approx(0.75)
    assert core["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert core["macro_f1"] == pytest.approx((0.8 + 0 + 1) / 3)


def test_undefined_metrics_are_reported_as_none() -> None:
    report = build_report(["core"], np.array([[0.9, 0.05, 0.05]]), np.array([[0, 0]]), np.array([[0.1, 0.2]]),
                          ["a", "b"], {"a": 0.5, "b": 0.5})
    assert report["categories"]["roc_auc_micro"] is None and report["categories"]["map"] is None


@pytest.mark.timeout(120)
def test_evaluate_cli_writes_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = train_model(generate_sample(600, seed=21), output_dir=tmp_path / "model", arch="bag", epochs=3,
                        num_buckets=2**14, progress=False)
    data = write_sample(tmp_path / "test.jsonl", 200, seed=22)
    with data.open("a") as out:  # a category the model never saw, and a line that is not a record
        out.write(json.dumps({"id": "u1", "title": "Galaxies", "abstract": "Stars.", "categories": ["astro-ph.GA"]})
                  + "\n{broken\n")
    out_dir = tmp_path / "report"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--output-dir", str(out_dir),
                 "--no-progress"]) == 0
    assert "categories micro-F1" in capsys.readouterr().out
    for name in ("report.json", "report.md", "per_class_f1.png", "coreness_confusion.png"):
        assert (out_dir / name).stat().st_size > 0, name
    for png in ("per_class_f1.png", "coreness_confusion.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out_dir / "report.json").read_text())
    assert report["data"]["records"] == 201
    assert report["data"]["unknown_categories"] == {"astro-ph.GA": 1}

    # The report agrees with the predictor's own output on the same records.
    lines = [line for line in data.read_text().splitlines() if line != "{broken"]
    records = to_records(lines, None, 0, CorenessProxy.load())
    results = Predictor.from_checkpoint(model).predict_batch(records)
    accuracy = np.mean([res.coreness.label == rec.coreness for res, rec in zip(results, records, strict=True)])
    assert report["coreness"]["accuracy"] == pytest.approx(accuracy)
    assert np.array(report["coreness"]["confusion_matrix"]).sum() == 201
    support = {row["label"]: row["support"] for row in report["categories"]["per_class"]}
    assert support == {label: sum(label in r.categories for r in records) for label in support}
    assert report["categories"]["f1_micro"] > 0.5
    markdown = (out_dir / "report.md").read_text()
    assert "| f1 |" in markdown and "Confusion matrix" in markdown and "astro-ph.GA (1)" in markdown


def test_evaluate_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_sample(tmp_path / "d.jsonl", 5)
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(data)]) == 2
    assert "not found" in capsys.readouterr().err
