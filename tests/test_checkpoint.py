"""Checkpoints: save -> load gives identical predictions; nothing is pickled; broken ones fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from models.archs.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import to_records
from trainer.training.train import train_model

PICKLE_MAGIC = b"\x80"  # pickle protocol 2+ opcode
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


@pytest.fixture(scope="module")
def bag_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(generate_sample(300, seed=7), arch="bag", output_dir=tmp_path_factory.mktemp("ck") / "bag",
                       epochs=2, num_buckets=2**12, progress=False)


@pytest.fixture
def broken(bag_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the checkpoint to damage."""
    return Path(shutil.copytree(bag_checkpoint, tmp_path / "broken"))


def _predictions(path: Path) -> list[dict]:
    records = to_records(generate_sample(40, seed=8), None, 0, CorenessProxy.load())
    return [r.model_dump(exclude={"classified_at"}) for r in Predictor.from_checkpoint(path).predict_batch(records)]


def test_round_trip_gives_identical_predictions(bag_checkpoint: Path, tmp_path: Path) -> None:
    model, config = load_checkpoint(bag_checkpoint)
    copy = save_checkpoint(model, {k: v for k, v in config.items() if k != "created_at"}, tmp_path / "copy")
    assert _predictions(copy) == _predictions(bag_checkpoint)
    assert read_checkpoint_config(copy)["thresholds"] == config["thresholds"]


def test_config_has_the_documented_keys(bag_checkpoint: Path) -> None:
    config = read_checkpoint_config(bag_checkpoint)
    for key in ("arch", "name", "version", "coreness_labels", "category_labels", "thresholds", "metrics",
                "data_fingerprint", "created_at", "num_buckets", "embed_dim"):
        assert key in config, key
    assert config["coreness_labels"] == ["core", "non_core", "rejected"]
    assert set(config["thresholds"]) == set(config["category_labels"])
    assert config["data_fingerprint"].startswith("sha256:")
    assert 0 <= config["metrics"]["valid"]["category_f1_micro"] <= 1


def test_checkpoint_holds_no_pickle(bag_checkpoint: Path) -> None:
    for path in bag_checkpoint.iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(PICKLE_MAGIC) and head != ZIP_MAGIC, path
    with safe_open(str(bag_checkpoint / "model.safetensors"), framework="pt") as weights:
        keys = set(weights.keys())
        assert all(weights.get_tensor(key).numel() > 0 for key in keys)
    model, _ = load_checkpoint(bag_checkpoint)
    assert keys == set(model.state_dict())


def test_truncated_weights_fail_clearly(broken: Path) -> None:
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(broken)


def test_garbage_weights_fail_clearly(broken: Path) -> None:
    (broken / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Predictor.from_checkpoint(broken)


def test_label_count_not_matching_the_weights_fails_clearly(broken: Path) -> None:
    config = json.loads((broken / "config.json").read_text())
    dropped = config["category_labels"].pop()
    config["thresholds"].pop(dropped)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match .*config.json.*size mismatch"):
        load_checkpoint(broken)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda d: _edit(d, lambda c: c.pop("thresholds")), "lacks required key.*thresholds"),
    (lambda d: _edit(d, lambda c: c.update(arch="lstm")), "unknown arch 'lstm'"),
    (lambda d: _edit(d, lambda c: c.pop("embed_dim")), "cannot rebuild the bag model.*embed_dim"),
])
def test_damaged_checkpoints_fail_clearly(broken: Path, damage, message: str) -> None:
    damage(broken)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(broken)


def test_missing_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "nope")


def _edit(directory: Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
