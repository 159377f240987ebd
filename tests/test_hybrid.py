"""The ``hybrid`` arch: frozen encoder + TF-IDF heads, embedding cache, checkpoint round trip, int8 runtime, and
the training options it shares with the other archs (time-later split, real coreness labels, card, refit)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, MPNetConfig

from models.archs.checkpoint import load_checkpoint
from models.archs.embedding_cache import EmbeddingCache
from models.archs.hybrid import FrozenEncoder
from models.archs.runtime import resolve_runtime
from models.archs.sparse_features import TfidfFeaturizer, fit_vocabulary
from models.archs.transformer import load_encoder
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from models.records.schema import CORENESS_LABELS
from tests.test_accuracy import _coreness_file, _dated_sample, assert_beats_trivial_baselines, real_or_sample_split
from tests.test_models import _tiny_encoder
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import category_targets, held_out, load_records, to_records
from trainer.evaluation.metrics import category_metrics
from trainer.evaluation.thresholds import apply_thresholds
from trainer.training.train import train_model


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
    assert stats["cache"]["misses"] == 0
    assert stats["cache"]["hits"] == stats["train_records"] + stats["valid_records"]
    # another truncation length is another key: nothing is reused across encoder settings
    third = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "c", cache_path=cache,
                        epochs=1, max_seq_length=16, progress=False)
    assert json.loads((third / "config.json").read_text())["training"]["cache"]["hits"] == 0


@pytest.mark.timeout(180)
def test_hybrid_takes_the_fine_tuned_encoder_of_a_transformer_checkpoint(tmp_path: Path, sample: list[dict],
                                                                         base: Path) -> None:
    """``--base-model`` may name a trainer ``transformer`` checkpoint (fine-tuned on a GPU host): the hybrid freezes
    that encoder, read from the checkpoint's safetensors, and caches its embeddings under its own key."""
    tuned = train_model(sample, arch="transformer", base_model=base, output_dir=tmp_path / "tf", epochs=1,
                        max_seq_length=32, learning_rate=1e-3, progress=False)
    cache = tmp_path / "cache.sqlite"
    frozen = train_model(sample, arch="hybrid", base_model=base, output_dir=tmp_path / "frozen", epochs=1,
                         max_seq_length=32, cache_path=cache, progress=False)
    hybrid = train_model(sample, arch="hybrid", base_model=tuned, output_dir=tmp_path / "hy", epochs=1,
                         max_seq_length=32, cache_path=cache, progress=False)
    transformer_state = load_checkpoint(tuned)[0].encoder.state_dict()
    hybrid_model, config = load_checkpoint(hybrid)
    assert config["base_model"] == str(tuned)
    hybrid_state = hybrid_model.encoder.model.state_dict()
    assert hybrid_state.keys() == transformer_state.keys()
    assert all(torch.equal(hybrid_state[key], transformer_state[key]) for key in hybrid_state)
    base_state = load_checkpoint(frozen)[0].encoder.model.state_dict()
    assert any(not torch.equal(base_state[key], hybrid_state[key]) for key in base_state)  # fine-tuning moved it
    assert config["training"]["cache"]["hits"] == 0  # other weights, other embeddings
    # a hybrid checkpoint's encoder is reusable too; a checkpoint without an encoder is refused clearly
    again = train_model(sample, arch="hybrid", base_model=hybrid, output_dir=tmp_path / "again", epochs=1,
                        max_seq_length=32, cache_path=cache, progress=False)
    assert json.loads((again / "config.json").read_text())["training"]["cache"]["misses"] == 0
    linear = train_model(sample, output_dir=tmp_path / "linear", epochs=1, progress=False)
    with pytest.raises(ValueError, match="'linear' checkpoint: only transformer and hybrid"):
        train_model(sample, arch="hybrid", base_model=linear, output_dir=tmp_path / "bad", progress=False)


@pytest.mark.timeout(120)
def test_hybrid_freezes_an_mpnet_encoder(tmp_path: Path, sample: list[dict], base: Path) -> None:
    """Another encoder family than BERT (MPNet, the family of ``scripts/fetch_mpnet.sh``'s all-mpnet-base-v2):
    the checkpoint rebuilds it from its own config and gives the base encoder's embeddings exactly."""
    mpnet = shutil.copytree(base, tmp_path / "mpnet", ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(mpnet)
    torch.manual_seed(0)
    AutoModel.from_config(MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                      pad_token_id=tokenizer.pad_token_id)).save_pretrained(mpnet)
    checkpoint = train_model(sample, arch="hybrid", base_model=mpnet, output_dir=tmp_path / "hy", epochs=1,
                             max_seq_length=32, cache_path=tmp_path / "cache.sqlite", progress=False)
    texts = [r["title"] + " " + r["abstract"] for r in sample[:8]]
    expected = FrozenEncoder(*load_encoder(mpnet), 32).embed(texts)
    shutil.rmtree(mpnet)
    model, config = load_checkpoint(checkpoint)
    assert config["encoder_config"]["model_type"] == "mpnet" and model.encoder.dim == 32
    np.testing.assert_allclose(model.encoder.embed(texts), expected, atol=1e-6)
    results = Predictor.from_checkpoint(checkpoint, device="cpu").predict_batch(
        to_records(generate_sample(3, seed=13), None, 0, CorenessProxy.load()))
    assert len(results) == 3 and all(r.categories for r in results)


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
    assert calls == [["b", "aa"], ["aaa"]]  # only the missing texts, shortest first (batches of one length)
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


def _predicted_coreness(checkpoint: Path, records: list) -> np.ndarray:
    return Predictor.from_checkpoint(checkpoint, device="cpu").predict_proba(records)[0].argmax(1)


@pytest.mark.timeout(240)
def test_hybrid_honours_split_extra_labels_card_and_refit(tmp_path: Path, base: Path) -> None:
    data = _dated_sample(300, seed=3)
    # real decisions that contradict the proxy of their categories (the sample is mostly proxy-core)
    rows = [{**{k: v for k, v in r.items() if k != "coreness"}, "id": f"x{i}",
             "label": "non_core" if i % 2 else "rejected", "year": 2015} for i, r in enumerate(generate_sample(150, 5))]
    extra = _coreness_file(tmp_path / "labels.jsonl.gz", rows)
    common = {"arch": "hybrid", "base_model": base, "cache_path": tmp_path / "cache.sqlite", "epochs": 6,
              "max_seq_length": 32, "progress": False}
    held = train_model(data, output_dir=tmp_path / "held", extra_train=[extra], refit=False, **common)
    refit = train_model(data, output_dir=tmp_path / "refit", extra_train=[extra], **common)
    plain = train_model(data, output_dir=tmp_path / "plain", **common)
    config = json.loads((held / "config.json").read_text())
    training, card, metrics = config["training"], config["card"], config["metrics"]

    # the most recent 10% by date tunes the thresholds and gives the metrics, at least one category per record
    assert training["split"] == "time" and training["valid_records"] == 30 and config["at_least_one_category"]
    assert card["data"]["valid_split"] == "most recent slice by date"
    assert card["data"]["train_dates"]["last"] < card["data"]["valid_dates"]["first"]
    assert {"category_f1_micro_cross_fitted", "category_f1_macro_cross_fitted", "coreness_recall"} <= set(
        metrics["valid"])
    valid = to_records(data, None, 0, CorenessProxy.load())[-30:]
    labels = config["category_labels"]
    probs = Predictor.from_checkpoint(held, device="cpu").predict_proba(valid)[1]
    predicted = apply_thresholds(probs, config["thresholds"], labels, at_least_one=True)
    assert predicted.sum(1).min() >= 1
    expected = category_metrics(category_targets(valid, labels), predicted, probs, labels)["f1_micro"]
    assert metrics["valid"]["category_f1_micro"] == pytest.approx(expected, abs=1e-6)
    assert card["metrics"]["time_later_valid"] == metrics["valid"] and card["limits"]

    # the extra records train the coreness head (class-weighted) and their held-out part is reported
    fit, check = held_out(load_records(extra), 0.2)
    assert {r.coreness for r in fit} == {"non_core", "rejected"}
    assert training["extra_train_records"] == len(fit) and training["extra_valid_records"] == len(check)
    assert metrics["extra_valid"]["records"] == len(check)
    assert {"non_core", "rejected"} <= set(metrics["extra_valid"]["coreness_recall"])
    assert card["metrics"]["real_coreness_held_out"] == metrics["extra_valid"]
    assert card["data"]["extra_train_records"] == len(fit)
    weights = training["coreness_class_weights"]
    assert weights[0] < weights[1] and weights[0] < weights[2]
    core = CORENESS_LABELS.index("core")
    assert (_predicted_coreness(held, fit) != core).mean() > (_predicted_coreness(plain, fit) != core).mean() + 0.3
    plain_config = json.loads((plain / "config.json").read_text())
    assert "extra_valid" not in plain_config["metrics"] and plain_config["training"]["extra_train_records"] == 0

    # refit: same thresholds and held-out metrics, heads trained again on train + validation records
    refit_config = json.loads((refit / "config.json").read_text())
    assert not training["refit_on_all_records"] and not card["data"]["refit_on_all_records"]
    assert refit_config["training"]["refit_on_all_records"] and refit_config["card"]["data"]["refit_on_all_records"]
    assert refit_config["thresholds"] == config["thresholds"] and refit_config["metrics"] == metrics
    # and the calibration fitted on the held-out slice, which the predictor applies
    assert config["calibration"]["method"] == "temperature" and config["calibration"]["records"] == 30
    assert refit_config["calibration"] == config["calibration"] == card["calibration"]
    assert Predictor.from_checkpoint(refit, device="cpu").calibration.coreness_temperature == pytest.approx(
        config["calibration"]["coreness_temperature"])
    assert refit_config["training"]["cache"]["misses"] == 0  # the embeddings of the first run were reused
    held_model, refit_model = load_checkpoint(held)[0], load_checkpoint(refit)[0]
    assert not torch.equal(held_model.dense_head.weight, refit_model.dense_head.weight)
    valid_only = set(refit_model.featurizer.vocabulary) - set(held_model.featurizer.vocabulary)
    assert valid_only  # the refit's TF-IDF vocabulary also learned from the validation texts


@pytest.mark.timeout(120)
def test_hybrid_random_split_is_shuffled(tmp_path: Path, base: Path) -> None:
    checkpoint = train_model(_dated_sample(200, seed=4), arch="hybrid", base_model=base, split="random",
                             output_dir=tmp_path / "hy", cache_path=tmp_path / "cache.sqlite", epochs=1,
                             max_seq_length=32, progress=False, refit=False)
    card = json.loads((checkpoint / "config.json").read_text())["card"]
    assert card["data"]["valid_split"] == "shuffled"
    assert card["data"]["train_dates"]["last"] > card["data"]["valid_dates"]["first"]


@pytest.mark.timeout(600)
def test_hybrid_heads_learn_on_real_data(tmp_path: Path, shared_data: Path | None) -> None:
    """The heads (SGD on both halves) learn: with a tiny random encoder the TF-IDF half must carry them."""
    train, test = real_or_sample_split(shared_data)
    base = _tiny_encoder_with_weights(tmp_path / "bert", [r.text for r in train[:500]])
    model = train_model(train, output_dir=tmp_path / "m", arch="hybrid", base_model=base, progress=False,
                        cache_path=tmp_path / "cache.sqlite", max_seq_length=32)
    assert_beats_trivial_baselines(Predictor.from_checkpoint(model, device="cpu"), train, test)
