"""A model trained on the generated sample says so: in its model card, in ``classify`` and in ``serve``."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.archs.checkpoint import read_checkpoint_config
from models.records.schema import ClassificationResult
from models.registry.provenance import GENERATED_SAMPLE, generated_sample_warning, trained_on, training_source
from streaming.cli import main
from tests.servers import corestream_serve
from trainer.datasets.sample import generate_sample, write_sample
from trainer.training.train import train_model

TITLE = "Hilbert schemes of points on surfaces"
ABSTRACT = "We compute the cohomology ring of the Hilbert scheme of points on a smooth projective surface."


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prov") / "sample-model"
    return train_model(None, arch="bag", output_dir=out, sample_count=300, epochs=1, progress=False,
                       name="demo-like", version="1", device="cpu")


def test_the_card_names_the_training_data(sample_model: Path, tmp_path: Path) -> None:
    config = read_checkpoint_config(sample_model)
    assert training_source(config) == GENERATED_SAMPLE and trained_on(config) == "the generated sample"
    warning = generated_sample_warning(config)
    assert warning is not None and "demo-like@1 was trained on the generated sample" in warning

    data = write_sample(tmp_path / "papers.jsonl", 200, seed=3)
    from_file = read_checkpoint_config(train_model(data, arch="bag", output_dir=tmp_path / "file", epochs=1,
                                                   progress=False, device="cpu"))
    assert training_source(from_file) == str(data) and generated_sample_warning(from_file) is None

    class Named(list):
        source = "papers.jsonl (the 200 oldest)"

    named = read_checkpoint_config(train_model(Named(generate_sample(200, seed=4)), arch="bag", epochs=1,
                                               output_dir=tmp_path / "named", progress=False, device="cpu"))
    assert training_source(named) == "papers.jsonl (the 200 oldest)"
    assert trained_on(named) == "papers.jsonl (the 200 oldest)"
    assert trained_on({"name": "old", "version": "0"}) == "unknown data"  # a checkpoint from before model cards


def test_classify_warns_on_stderr_and_keeps_stdout_json(sample_model: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", TITLE, ABSTRACT, "--model", str(sample_model)]) == 0
    captured = capsys.readouterr()
    assert ClassificationResult.model_validate_json(captured.out).model.name == "demo-like"
    assert "warning: model demo-like@1 was trained on the generated sample" in captured.err
    assert "README.md" in captured.err


def test_classify_help_shows_the_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    assert "built in: artifacts/demo-model" in " ".join(capsys.readouterr().out.split())


@pytest.mark.timeout(120)
def test_serve_logs_a_warning_at_start(sample_model: Path) -> None:
    with corestream_serve(sample_model) as run:
        pass
    warnings = [line["msg"] for line in run.log_lines if line.get("level") == "WARNING"]
    assert any("demo-like@1 was trained on the generated sample" in msg for msg in warnings), run.stderr[-2000:]
