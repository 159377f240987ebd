"""The architecture interface: every registered architecture has a model class and a trainer, an architecture
added through the two registries alone trains, saves, loads and predicts, and checkpoints written before the
layout change still load and predict the same."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models.archs import base
from models.archs.base import ClassifierOutput, architecture
from models.archs.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import to_records
from trainer.training import config as training_config
from trainer.training.config import ArchDefaults, TrainConfig
from trainer.training.train import StandardTrainer, train_model

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
CLASSIFIER_MEMBERS = ("from_config", "arch_config", "save_extra", "encode", "count_tokens", "forward")


def test_every_architecture_has_a_model_class_and_a_trainer() -> None:
    assert list(base.ARCHS) == list(training_config.TRAINERS) == ["linear", "bag", "transformer", "hybrid"]
    for name in base.ARCHS:
        cls = architecture(name)
        assert cls.arch == name and all(callable(getattr(cls, member, None)) for member in CLASSIFIER_MEMBERS), name
        registered = training_config.arch_trainer(name)
        assert registered.arch == name and isinstance(registered.defaults, ArchDefaults)
        assert callable(registered.train)


@pytest.mark.parametrize("arch", ["bag", "linear"])
def test_checkpoint_from_before_the_layout_change_predicts_the_same(arch: str) -> None:
    path = FIXTURES / f"v1-{arch}"
    expected = json.loads((FIXTURES / f"v1-{arch}.predictions.json").read_text())
    records = to_records(generate_sample(50, seed=123), None, 0, CorenessProxy.load())
    results = Predictor.from_checkpoint(path, device="cpu").predict_batch(records)
    assert [r.model.arch for r in results] == [arch] * 50
    got = [{"id": r.id, "coreness": r.coreness.label,
            "coreness_scores": [getattr(r.coreness.scores, k) for k in ("core", "non_core", "rejected")],
            "categories": [[c.label, c.score] for c in r.categories]} for r in results]
    assert [(g["id"], g["coreness"], [c for c, _ in g["categories"]]) for g in got] == \
        [(e["id"], e["coreness"], [c for c, _ in e["categories"]]) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["coreness_scores"] == pytest.approx(e["coreness_scores"], abs=1e-5)
        assert [s for _, s in g["categories"]] == pytest.approx([s for _, s in e["categories"]], abs=1e-5)


class HashedCountsClassifier(nn.Module):
    """A model defined outside the project: word counts in hashed buckets -> two linear heads."""

    arch = "hashed-counts"

    def __init__(self, num_categories: int, buckets: int = 64, max_seq_length: int = 256) -> None:
        super().__init__()
        self.num_categories, self.buckets, self.max_seq_length = num_categories, buckets, max_seq_length
        self.coreness_head = nn.Linear(buckets, 3)
        self.category_head = nn.Linear(buckets, num_categories)

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path) -> HashedCountsClassifier:
        return cls(len(config["category_labels"]), config["buckets"], config["max_seq_length"])

    def arch_config(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "max_seq_length": self.max_seq_length}

    def save_extra(self, out_dir: Path) -> None:
        (out_dir / "hashing.json").write_text(json.dumps({"hash": "crc32"}))

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        counts = torch.zeros(len(texts), self.buckets)
        for row, text in enumerate(texts):
            for word in text.lower().split()[: max_length or self.max_seq_length]:
                counts[row, zlib.crc32(word.encode()) % self.buckets] += 1
        return {"counts": torch.log1p(counts)}

    def count_tokens(self, text: str) -> int:
        return min(len(text.split()), self.max_seq_length)

    def forward(self, counts: torch.Tensor) -> ClassifierOutput:
        return ClassifierOutput(self.coreness_head(counts), self.category_head(counts))


class HashedCountsTrainer(StandardTrainer):
    arch = "hashed-counts"
    defaults = ArchDefaults(epochs=3, batch_size=32, learning_rate=1e-2, recency_half_life=0.0)


def test_an_architecture_added_through_the_registries_trains_saves_loads_and_predicts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.ARCHS, "hashed-counts", HashedCountsClassifier)
    monkeypatch.setitem(training_config.TRAINERS, "hashed-counts", HashedCountsTrainer)
    path = train_model(generate_sample(300, seed=3), arch="hashed-counts", output_dir=tmp_path / "model",
                       buckets=32, progress=False)

    config = read_checkpoint_config(path)
    assert (config["arch"], config["buckets"], config["training"]["epochs"]) == ("hashed-counts", 32, 3)
    assert config["training"]["refit_on_all_records"] and (path / "hashing.json").is_file()
    assert TrainConfig(arch="hashed-counts").resolved().batch_size == 32  # the trainer's defaults
    model, _ = load_checkpoint(path)
    assert isinstance(model, HashedCountsClassifier) and model.buckets == 32

    records = to_records(generate_sample(40, seed=4), None, 0, CorenessProxy.load())
    results = Predictor.from_checkpoint(path, device="cpu").predict_batch(records)
    assert [r.id for r in results] == [r.id for r in records]
    assert {r.model.arch for r in results} == {"hashed-counts"}
    assert all(r.categories and r.coreness.label in ("core", "non_core", "rejected") for r in results)
    agree = sum(r.coreness.label == record.coreness for r, record in zip(results, records, strict=True))
    assert agree > len(records) / 3  # it learned something: the sample's coreness follows its words

    monkeypatch.delitem(base.ARCHS, "hashed-counts")
    with pytest.raises(CheckpointError, match="unknown arch 'hashed-counts'"):
        load_checkpoint(path)
