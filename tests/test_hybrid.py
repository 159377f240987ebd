"""The ``hybrid`` arch: frozen encoder + TF-IDF heads, embedding cache, checkpoint round trip, int8 runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from models.checkpoint import load_checkpoint
from models.embedding_cache import EmbeddingCache
from models.labels import CorenessProxy
from models.predictor import Predictor
from models.runtime import resolve_runtime
from models.sparse_features import TfidfFeaturizer, fit_vocabulary
from tests.test_models import _tiny_encoder
from trainer.sample import generate_sample
from trainer.train import to_records, train_model


def _tiny_encoder_with_weights(directory: Path, texts: list[str]) -> Path:
    """The tiny BERT of test_models with (seeded random) weights saved, so that its embeddings are reproducible."""
    _tiny_encoder(directory, texts)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(directory)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return generate_sample(300, seed=11)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, sample: list[dict]) -> Path:
    return _tiny_encoder_with_weights(tmp_path_factory.mktemp("tiny") / "bert",
                                      [r["title"] + " " + r["abstract"] for r in sample])


@pytest.mark.timeout(120)
def test_hybrid_trains_round_trips_and_predicts_without_its_base(tmp_path: Path, sample: list[dict],
                                                                 base: Path) -> None:
    private_base = shutil.copytree(base, tmp_path / "base")
    checkpoint = train_model(sample, arch="hybrid", base_model=private_base, output_dir=tmp_path / "hy",
                             cache_path=tmp_path / "cache.sqlite", epochs=3, max_seq_length=32, progress=False)
    shutil.rmtree(private_base)  # the checkpoint must be self-contained
    files = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" in files and "vocabulary.json" in files and "config.json" in files
    assert not [name for name in files if name.endswith((".bin", ".pkl", ".pt"))]
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["arch"] == "hybrid" and config["max_seq_length"] == 32
    assert config["sparse_features"] == len(json.loads((checkpoint / "vocabulary.json").read_text())["vocabulary"])

    model, _ = load_checkpoint(checkpoint)
    trained, _ = load_checkpoint(checkpoint)
    assert torch.equal(model.idf, trained.idf) and torch.equal(model.featurizer.idf, model.idf)
    assert not torch.equal(model.idf, torch.ones_like(model.idf))  # the real idf, not the rebuild's placeholder

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=4, max_seq_length=256)
    records = to_records(generate_sample(7, seed=12), None, 0, CorenessProxy.load())
    results = predictor.predict_batch(records)
    assert [r.id for r in results] == [r.id for r in records]
    assert predictor.info.arch == "hybrid"
    coreness, categories = predictor.predict_proba(records)
    assert coreness.shape == (7, 3) and categories.shape == (7, len(config["category_labels"]))
    np.testing.assert_allclose(coreness.sum(1), 1, atol=1e-5)
    for result in results:
        assert all(c.label in predictor.category_labels for c in result.categories)
    # the predictor caps the encoder at the trained length and gives the same scores batch by batch
    single = np.concatenate([predictor.predict_proba([r])[1] for r in records])
    np.testing.assert_allclose(single, categories, atol=1e-5)


@pytest.mark.timeout(120)
def test_second_training_reads_embeddings_from_the_cache(tmp_path: Path, sample: list[dict], base: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    first = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "a", cache_path=cache,
                        epochs=1, max_seq_length=32, progress=False)
    stats = json.loads((first / "config.json").read_text())["training"]
    assert stats["cache"]["misses"] > 0 and stats["cache"]["hits"] == 0
    second = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "b", cache_path=cache,
                         epochs=1, max_seq_length=32, progress=False)
    stats = json.loads((second / "config.json").read_text())["training"]
    assert stats["cache"]["misses"] == 0 and stats["cache"]["hits"] == stats["train_records"]
    assert stats["valid_cache"]["misses"] == 0
    # another truncation length is another key: nothing is reused across encoder settings
    third = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "c", cache_path=cache,
                        epochs=1, max_seq_length=16, progress=False)
    assert json.loads((third / "config.json").read_text())["training"]["cache"]["hits"] == 0


def test_cache_returns_stored_vectors_in_input_order(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def embedder(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    with EmbeddingCache(tmp_path / "c.sqlite", "enc", 8, 2) as cache:
        first = cache.embed(["aa", "b", "aa"], embedder)
    with EmbeddingCache(tmp_path / "c.sqlite", "enc", 8, 2) as cache:
        second = cache.embed(["b", "aaa", "aa"], embedder)
        assert (cache.hits, cache.misses) == (2, 1)
    assert calls == [["aa", "b"], ["aaa"]]
    np.testing.assert_array_equal(first, [[2, 2], [1, 0], [2, 2]])
    np.testing.assert_array_equal(second, [[1, 0], [3, 3], [2, 2]])


def test_tfidf_matches_sublinear_smooth_idf_and_unit_norm() -> None:
    texts = ["quark quark gluon", "gluon plasma", "quark plasma plasma plasma"]
    vocabulary, idf = fit_vocabulary(texts, max_features=100, min_df=1)
    assert vocabulary[:3] == ["gluon", "plasma", "quark"]  # each in 2 documents
    np.testing.assert_allclose(idf[0], np.log(4 / 3) + 1, rtol=1e-6)

    features = TfidfFeaturizer(vocabulary, idf).featurize(texts + ["unknown words only"])
    bag = torch.nn.EmbeddingBag(len(vocabulary), len(vocabulary), mode="sum")
    bag.weight.data = torch.eye(len(vocabulary))
    with torch.no_grad():
        dense = bag(features["sparse_ids"], features["sparse_offsets"], per_sample_weights=features["sparse_weights"])
    np.testing.assert_allclose(dense[:3].norm(dim=1), 1, rtol=1e-5)
    assert dense[3].abs().sum() == 0
    quark, gluon = vocabulary.index("quark"), vocabulary.index("gluon")
    assert dense[0, quark] / dense[0, gluon] == pytest.approx((1 + np.log(2)) * idf[quark] / idf[gluon], rel=1e-5)


def test_int8_runtime_quantises_the_encoder_on_cpu_only(tmp_path: Path, sample: list[dict], base: Path) -> None:
    assert resolve_runtime("auto", "cpu") == "int8" and resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("int8", "cuda:0") == "torch"
    with pytest.raises(ValueError, match="unknown runtime"):
        resolve_runtime("onnx", "cpu")
    checkpoint = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "hy",
                             cache_path=tmp_path / "cache.sqlite", epochs=1, max_seq_length=32, progress=False)
    plain = Predictor.from_checkpoint(checkpoint, device="cpu")
    int8 = Predictor.from_checkpoint(checkpoint, device="cpu", runtime="int8")
    assert plain.model.encoder.runtime == "torch" and int8.model.encoder.runtime == "int8"
    assert not any(type(m) is torch.nn.Linear for m in int8.model.encoder.modules())
    assert int8.model.encoder.encoder_id.split("-")[0] == plain.model.encoder.encoder_id.split("-")[0]
    records = to_records(generate_sample(5, seed=13), None, 0, CorenessProxy.load())
    assert [r.id for r in int8.predict_batch(records)] == [r.id for r in records]
    np.testing.assert_allclose(int8.predict_proba(records)[0], plain.predict_proba(records)[0], atol=0.1)
