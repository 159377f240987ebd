"""``corestream-train train``: data in, checkpoint out; resume, from-scratch, bad data and bad options."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from models.archs.checkpoint import read_checkpoint_config
from trainer.cli import main
from trainer.datasets.sample import write_sample
from trainer.datasets.training_data import load_records, split_records

FAST = ["--epochs", "1", "--no-progress", "--min-category-count", "2"]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A generated sample plus lines that cannot be used: they are counted, never fatal."""
    path = write_sample(tmp_path / "sample.jsonl", 300, seed=11)
    with path.open("a") as out:
        out.write("{not json\n")
    with path.open("ab") as out:
        out.write(b'{"id": "latin1", "title": "Caf\xe9", "abstract": "x", "categories": ["hep-th"]}\n')
    with path.open("a") as out:
        out.write(json.dumps({"id": "x1", "title": 42}) + "\n")
        out.write(json.dumps({"id": "x2", "title": "No labels at all", "abstract": "Nothing to learn."}) + "\n")
        out.write("\n")
        out.write(json.dumps({"control_number": 7, "titles": [{"title": "Branes"}], "core": True}) + "\n")
    return path


def test_train_cli_writes_a_checkpoint_and_prints_metrics(data_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["train", "--data", str(data_file), "--output-dir", str(out), "--version", "v1", *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"saved linear model corestream-linear@v1 to {out}" in printed  # linear: the default arch
    assert '"coreness_accuracy"' in printed
    config = read_checkpoint_config(out)
    assert config["version"] == "v1"
    # 300 sample records + the INSPIRE record with a real label; 4 bad lines are skipped (and logged).
    assert config["training"]["train_records"] + config["training"]["valid_records"] == 301
    assert config["training"]["epochs_total"] == 1


def test_train_resumes_unless_from_scratch(data_file: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "model")
    assert main(["train", "--data", str(data_file), "--output-dir", out, *FAST]) == 0
    first = read_checkpoint_config(out)
    assert main(["train", "--data", str(data_file), "--output-dir", out, *FAST]) == 0
    resumed = read_checkpoint_config(out)
    assert resumed["training"]["resumed"] and resumed["training"]["epochs_total"] == 2
    assert resumed["category_labels"] == first["category_labels"]
    assert main(["train", "--data", str(data_file), "--output-dir", out, "--from-scratch", *FAST]) == 0
    fresh = read_checkpoint_config(out)
    assert not fresh["training"]["resumed"] and fresh["training"]["epochs_total"] == 1


def test_validation_split_is_fixed_by_the_seed(data_file: Path) -> None:
    records = load_records(data_file)
    ids = lambda split: [r.id for r in split]  # noqa: E731
    assert ids(split_records(records, 0.2, seed=3)[1]) == ids(split_records(records, 0.2, seed=3)[1])
    assert ids(split_records(records, 0.2, seed=3)[1]) != ids(split_records(records, 0.2, seed=4)[1])


def test_train_without_data_uses_a_generated_sample(tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert main(["train", "--sample-count", "200", "--output-dir", str(out), *FAST]) == 0
    assert read_checkpoint_config(out)["training"]["train_records"] == 180


def test_focal_loss_option_trains(data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert main(["train", "--data", str(data_file), "--output-dir", str(out), "--focal-gamma", "2", *FAST]) == 0
    assert read_checkpoint_config(out)["training"]["focal_gamma"] == 2.0


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent.jsonl"], "data file not found"),
    (["--arch", "transformer"], "--base-model PATH"),
    (["--min-category-count", "100000"], "no category occurs 100000 times"),
    (["--epochs", "-1"], "epochs must be >= 0"),
])
def test_bad_options_give_one_clear_error(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--sample-count", "50", "--output-dir", str(tmp_path / "m"), "--no-progress", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unusable_data_file_is_an_error_naming_the_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n" + json.dumps({"id": 1, "title": "T", "abstract": "A"}) + "\n")
    assert main(["train", "--data", str(bad), "--output-dir", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no usable records" in err and "invalid_json" in err and "unlabelled" in err


def test_truncated_gzip_is_a_clear_error(data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gz = tmp_path / "data.jsonl.gz"
    gz.write_bytes(gzip.compress(data_file.read_bytes())[:2000])
    assert main(["train", "--data", str(gz), "--output-dir", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "is truncated or not valid gzip" in capsys.readouterr().err


def test_resume_refuses_another_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(["train", "--sample-count", "100", "--output-dir", str(out), *FAST]) == 0
    assert main(["train", "--sample-count", "100", "--output-dir", str(out), "--arch", "transformer",
                 "--base-model", str(tmp_path), *FAST]) == 2
    assert "holds a linear checkpoint" in capsys.readouterr().err
