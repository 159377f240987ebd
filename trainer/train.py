"""``corestream-train train``: fit a linear, bag or transformer model, tune thresholds on the most recent data,
save a checkpoint with its model card.

Data flow: records (file, list, or a generated sample) -> labelled records -> train/validation split (the most
recent slice by date, or shuffled) -> category vocabulary (min count) -> (+ extra records with real INSPIRE
coreness labels) -> epochs of class-weighted CE + BCE (or focal) -> validation probabilities -> per-class
thresholds -> metrics (time-later slice, held-out real INSPIRE labels) -> checkpoint. An existing checkpoint in
the output directory is resumed (same labels, more epochs) unless ``from_scratch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from config.cli import CommandError
from config.settings import Settings
from models.checkpoint import CONFIG_FILE, architecture, load_checkpoint, save_checkpoint
from models.device import autocast, resolve_device
from models.labels import CorenessProxy
from models.losses import classification_loss
from models.predictor import score_texts
from models.records import CORENESS_LABELS, Record, RecordError
from trainer.card import model_card
from trainer.data import (
    DataError,
    category_vocabulary,
    fingerprint,
    held_out,
    label_record,
    load_records,
    parse_training_line,
    split_records,
    time_split,
)
from trainer.metrics import category_metrics, coreness_metrics
from trainer.sample import generate_sample
from trainer.thresholds import apply_thresholds, cross_fitted, tune_thresholds

log = logging.getLogger(__name__)

DEFAULT_ARCH = "linear"
DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 8, "batch_size": 64, "learning_rate": 1e-1},
    "bag": {"epochs": 5, "batch_size": 64, "learning_rate": 5e-2},
    "transformer": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-5},
}
DEFAULT_SAMPLE_COUNT = 2000


class TrainingError(ValueError):
    """Training cannot start: bad data, options or checkpoint."""


def to_records(data: str | Path | Sequence[Record | dict] | None, sample_count: int | None, seed: int,
               proxy: CorenessProxy) -> list[Record]:
    """Labelled records from a JSONL path, a list of Records/dicts, or (None) a generated sample."""
    if data is None:
        data = generate_sample(sample_count or DEFAULT_SAMPLE_COUNT, seed)
    if isinstance(data, str | Path):
        return load_records(data, limit=sample_count, proxy=proxy)
    records = []
    for index, item in enumerate(data):
        try:
            record = item if isinstance(item, Record) else parse_training_line(item)
        except RecordError as exc:
            raise DataError(f"training record {index} is invalid: {exc}") from None
        records.append(label_record(record, proxy))
    return records[:sample_count] if sample_count else records


def category_targets(records: Sequence[Record], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(records), len(labels)), dtype=np.float32)
    for row, record in enumerate(records):
        for cat in record.categories:
            if cat in index:
                targets[row, index[cat]] = 1.0
    return targets


def coreness_targets(records: Sequence[Record]) -> np.ndarray:
    return np.array([CORENESS_LABELS.index(r.coreness) for r in records], dtype=np.int64)


def build_model(arch: str, num_categories: int, base_model: str | Path | None, max_seq_length: int | None,
                arch_params: dict[str, Any], texts: Sequence[str] = ()) -> torch.nn.Module:
    """A fresh model of ``arch`` (the transformer starts from ``base_model``, the linear model learns its
    vocabulary from the training ``texts``)."""
    cls = architecture(arch)
    params = dict(arch_params)
    if max_seq_length:
        params["max_seq_length"] = max_seq_length
    if arch == "transformer":
        if base_model is None:
            raise TrainingError("--base-model PATH (a local Hugging Face encoder directory) is required for "
                                "arch 'transformer'")
        return cls.from_pretrained(base_model, num_categories, **params)
    if hasattr(cls, "from_texts"):
        return cls.from_texts(texts, num_categories, **params)
    return cls(num_categories, **params)


def init_head_biases(model: torch.nn.Module, coreness: torch.Tensor, categories: torch.Tensor) -> None:
    """Start the heads at the training priors (log class frequencies), so that the first steps are not spent
    learning that most categories are absent and the encoder is not shaken by huge initial losses."""
    with torch.no_grad():
        core_prior = torch.bincount(coreness, minlength=3).float().add(1).div(len(coreness) + 3)
        model.coreness_head.bias.copy_(core_prior.log())
        cat_prior = categories.float().mean(0).clamp(1e-4, 1 - 1e-4)
        model.category_head.bias.copy_(torch.log(cat_prior / (1 - cat_prior)))


def is_sparse(model: torch.nn.Module, param: torch.nn.Parameter) -> bool:
    return any(isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse and param is m.weight
               for m in model.modules())


def make_optimizers(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                    head_lr_factor: float = 1.0) -> list[torch.optim.Optimizer]:
    """AdamW for dense parameters (the heads at ``head_lr_factor`` x the rate, so that fresh heads on a pretrained
    encoder learn quickly), SparseAdam for sparse embeddings (the bag's hashed n-gram table)."""
    sparse = {id(p) for p in model.parameters() if is_sparse(model, p)}
    heads, body = [], []
    for name, param in model.named_parameters():
        if id(param) not in sparse and param.requires_grad:
            (heads if name.split(".")[0].endswith("_head") else body).append(param)
    groups = [{"params": heads, "lr": learning_rate * head_lr_factor}] + ([{"params": body}] if body else [])
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam([p for p in model.parameters() if id(p) in sparse], lr=learning_rate))
    return optimizers


def coreness_summary(records: Sequence[Record], core_probs: np.ndarray) -> dict[str, Any]:
    """Coreness accuracy, macro-F1 and per-class recall (with support) of predicted probabilities."""
    core = coreness_metrics([r.coreness for r in records],
                            [CORENESS_LABELS[i] for i in core_probs.argmax(1)], CORENESS_LABELS)
    return {"records": len(records), "coreness_accuracy": core["accuracy"], "coreness_macro_f1": core["macro_f1"],
            "coreness_recall": {row["label"]: row["recall"] for row in core["per_class"] if row["support"]},
            "coreness_support": {row["label"]: row["support"] for row in core["per_class"] if row["support"]}}


def evaluate_split(model: torch.nn.Module, records: Sequence[Record], labels: Sequence[str], *, device: str,
                   batch_size: int, tune: bool, thresholds: dict[str, float] | None = None,
                   at_least_one: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Metrics of ``model`` on ``records``; with ``tune``, thresholds are tuned on them first, and the summary
    also has ``category_f1_*_cross_fitted``: F1 with thresholds tuned on the other half of the records."""
    core_probs, cat_probs = score_texts(model, [r.text for r in records], batch_size=batch_size, device=device)
    y_true = category_targets(records, labels)
    if tune:
        thresholds = tune_thresholds(cat_probs, y_true, labels)
    thresholds = thresholds or {}
    predicted = apply_thresholds(cat_probs, thresholds, labels, at_least_one=at_least_one)
    cats = category_metrics(y_true, predicted, cat_probs, labels, thresholds)
    summary = {
        **coreness_summary(records, core_probs),
        "category_f1_micro": cats["f1_micro"], "category_f1_macro": cats["f1_macro"],
        "category_f1_samples": cats["f1_samples"], "category_roc_auc_micro": cats["roc_auc_micro"],
        "category_map": cats["map"],
    }
    if tune and len(records) >= 4:
        fitted = category_metrics(y_true, cross_fitted(cat_probs, y_true, labels, at_least_one=at_least_one),
                                  cat_probs, labels)
        summary["category_f1_micro_cross_fitted"] = fitted["f1_micro"]
        summary["category_f1_macro_cross_fitted"] = fitted["f1_macro"]
    return summary, thresholds


def coreness_class_weights(coreness: torch.Tensor, power: float) -> torch.Tensor:
    """(n / (3 n_c)) ** ``power`` per coreness class (0: unweighted, 1: balanced), so that rare classes count."""
    counts = torch.bincount(coreness, minlength=3).float().clamp_min(1)
    return (counts.sum() / (3 * counts)).pow(power)


def train_model(
    data: str | Path | Sequence[Record | dict] | None,
    *,
    arch: str = DEFAULT_ARCH,
    output_dir: str | Path,
    epochs: int | None = None,
    batch_size: int | None = None,
    base_model: str | Path | None = None,
    sample_count: int | None = None,
    from_scratch: bool = False,
    seed: int = 0,
    progress: bool = True,
    valid_fraction: float = 0.1,
    split: str = "time",
    extra_train: Sequence[str | Path] = (),
    extra_valid_fraction: float = 0.2,
    coreness_weight_power: float = 0.5,
    at_least_one_category: bool = True,
    min_category_count: int = 5,
    learning_rate: float | None = None,
    focal_gamma: float = 0.0,
    max_seq_length: int | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    **arch_params: Any,
) -> Path:
    """Train (or resume) a model on ``data`` and save its checkpoint in ``output_dir``; return that path.

    ``data``: a JSONL / arXiv snapshot path, a list of Records or record dicts, or None for a generated sample
    of ``sample_count`` records. ``split``: ``time`` holds out the most recent ``valid_fraction`` by date (for
    threshold tuning and the checkpoint's metrics), ``random`` a shuffled one. ``extra_train``: files of records
    with real coreness labels (e.g. INSPIRE curator decisions); they train the coreness head only, and a stable
    ``extra_valid_fraction`` of them (by id) is held out and reported. ``coreness_weight_power``: coreness
    class weights (see :func:`coreness_class_weights`). ``max_steps`` stops early (smoke tests). Extra keyword
    arguments are architecture parameters (e.g. ``embed_dim`` for bag, ``max_terms`` for linear).
    """
    if arch == "hybrid":
        from trainer.train_hybrid import train_model_hybrid

        return train_model_hybrid(data, output_dir=output_dir, epochs=epochs, batch_size=batch_size,
                                  base_model=base_model, sample_count=sample_count, seed=seed,
                                  valid_fraction=valid_fraction, min_category_count=min_category_count,
                                  learning_rate=learning_rate, max_seq_length=max_seq_length, device=device,
                                  name=name, version=version, **arch_params)
    if arch not in DEFAULTS:
        raise TrainingError(f"unknown arch {arch!r}: expected one of {', '.join(DEFAULTS)}")
    defaults = DEFAULTS[arch]
    epochs = defaults["epochs"] if epochs is None else epochs
    batch_size = batch_size or defaults["batch_size"]
    learning_rate = learning_rate or defaults["learning_rate"]
    if epochs < 0 or batch_size < 1 or learning_rate <= 0 or focal_gamma < 0 or coreness_weight_power < 0:
        raise TrainingError("epochs must be >= 0, batch size >= 1, learning rate > 0, focal gamma >= 0 and "
                            "coreness weight power >= 0")
    if split not in ("time", "random"):
        raise TrainingError(f"split must be 'time' or 'random', got {split!r}")
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    device = resolve_device(device)

    proxy = CorenessProxy.load()
    records = to_records(data, sample_count, seed, proxy)
    train_records, valid_records = (time_split if split == "time" else split_records)(records, valid_fraction, seed)
    extra_train_records, extra_valid_records = [], []
    for extra in extra_train:
        fit, check = held_out(load_records(extra, proxy=proxy), extra_valid_fraction)
        extra_train_records += fit
        extra_valid_records += check
    if not train_records:
        raise TrainingError(f"need at least 2 records to train, got {len(records)}")

    resumed = (output_dir / CONFIG_FILE).exists() and not from_scratch
    previous: dict[str, Any] = {}
    if resumed:
        model, previous = load_checkpoint(output_dir, device="cpu")
        if previous["arch"] != arch:
            raise TrainingError(f"{output_dir} holds a {previous['arch']} checkpoint, not {arch}: pass --from-scratch "
                                "or another --output-dir")
        labels = list(previous["category_labels"])
        log.info("resuming %s from %s (%d epochs so far)", arch, output_dir,
                 previous.get("training", {}).get("epochs_total", 0))
    else:
        labels = category_vocabulary(train_records, min_category_count)
        if not labels:
            raise TrainingError(f"no category occurs {min_category_count} times in {len(train_records)} training "
                                "records: lower --min-category-count or add data")
        model = build_model(arch, len(labels), base_model, max_seq_length, arch_params,
                            [r.text for r in train_records])
    texts = [r.text for r in train_records + extra_train_records]
    y_core = torch.from_numpy(coreness_targets(train_records + extra_train_records))
    y_cats = torch.from_numpy(category_targets(train_records + extra_train_records, labels))
    cat_mask = torch.cat([torch.ones(len(train_records)), torch.zeros(len(extra_train_records))])
    core_weight = coreness_class_weights(y_core, coreness_weight_power).to(device)
    if not resumed:
        init_head_biases(model, y_core, y_cats[: len(train_records)])
    model.to(device)
    dense_params = [p for p in model.parameters() if p.requires_grad and not is_sparse(model, p)]
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total_steps = min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)
    optimizers = make_optimizers(model, learning_rate, weight_decay=0.0 if arch in ("bag", "linear") else 0.01,
                                 head_lr_factor=1.0 if arch in ("bag", "linear") else 20.0)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.05, 1 - step / max(1, total_steps)))
                  for opt in optimizers]
    amp_dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    step, epochs_run = 0, 0
    model.train()
    with tqdm(total=total_steps, desc=f"train {arch}", unit="batch", disable=not progress) as bar:
        for epoch in range(epochs):
            if step >= total_steps:
                break
            order = torch.randperm(len(texts), generator=generator)
            for start in range(0, len(order), batch_size):
                if step >= total_steps:
                    break
                idx = order[start:start + batch_size]
                inputs = model.encode([texts[i] for i in idx])
                with autocast(device, amp_dtype):
                    output = model(**{key: value.to(device) for key, value in inputs.items()})
                loss = classification_loss(output, y_core[idx].to(device), y_cats[idx].to(device), focal_gamma,
                                           core_weight, cat_mask[idx].to(device))
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(dense_params, 5.0)
                for opt, sched in zip(optimizers, schedulers, strict=True):
                    opt.step()
                    sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            epochs_run += 1
    train_seconds = time.monotonic() - started

    score_batch = max(batch_size, 64)
    if valid_records:
        valid_summary, thresholds = evaluate_split(model, valid_records, labels, device=device,
                                                   batch_size=score_batch, tune=True,
                                                   at_least_one=at_least_one_category)
    else:
        valid_summary, thresholds = {}, {label: 0.5 for label in labels}
    metrics: dict[str, Any] = {"valid": valid_summary}
    if extra_valid_records:
        core_probs, _ = score_texts(model, [r.text for r in extra_valid_records], batch_size=score_batch,
                                    device=device)
        metrics["extra_valid"] = coreness_summary(extra_valid_records, core_probs)
    previous_training = previous.get("training", {})
    config = {
        "name": name or previous.get("name") or f"corestream-{arch}",
        "version": version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "coreness_labels": list(CORENESS_LABELS),
        "category_labels": labels,
        "thresholds": thresholds,
        "at_least_one_category": at_least_one_category,
        "metrics": metrics,
        "data_fingerprint": fingerprint(records + extra_train_records),
        "base_model": str(base_model) if base_model else previous.get("base_model"),
        "training": {
            "epochs": epochs_run, "steps": step,
            "epochs_total": previous_training.get("epochs_total", 0) + epochs_run,
            "resumed": resumed, "batch_size": batch_size, "learning_rate": learning_rate,
            "focal_gamma": focal_gamma, "seed": seed, "valid_fraction": valid_fraction, "split": split,
            "coreness_weight_power": coreness_weight_power, "coreness_class_weights": core_weight.tolist(),
            "min_category_count": min_category_count, "train_records": len(train_records),
            "valid_records": len(valid_records), "extra_train_records": len(extra_train_records),
            "extra_valid_records": len(extra_valid_records), "train_seconds": round(train_seconds, 2),
            "device": device,
        },
    }
    config["card"] = model_card(data, extra_train, train_records, valid_records, extra_train_records,
                                extra_valid_records, labels, metrics, split)
    if "dont_run_on" in previous:
        config["dont_run_on"] = previous["dont_run_on"]
    path = save_checkpoint(model.cpu(), config, output_dir)
    log.info("saved %s checkpoint to %s", arch, path, extra={"metrics": valid_summary})
    return path


# --------------------------------------------------------------------------- CLI


def _train_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        path = train_model(
            args.data, arch=args.arch, output_dir=args.output_dir, epochs=args.epochs, batch_size=args.batch_size,
            base_model=args.base_model, sample_count=args.sample_count, from_scratch=args.from_scratch,
            seed=args.seed, progress=not args.no_progress, valid_fraction=args.valid_fraction, split=args.split,
            extra_train=args.extra_train or (), extra_valid_fraction=args.extra_valid_fraction,
            coreness_weight_power=args.coreness_weight_power,
            at_least_one_category=not args.allow_no_category,
            min_category_count=args.min_category_count, learning_rate=args.learning_rate,
            focal_gamma=args.focal_gamma, max_seq_length=args.max_seq_length, device=args.device, name=args.name,
            version=args.version,
        )
    except (ValueError, OSError) as exc:  # TrainingError, DataError, CheckpointError, bad device
        raise CommandError(str(exc)) from None
    config = json.loads((path / CONFIG_FILE).read_text())
    print(f"saved {config['arch']} model {config['name']}@{config['version']} to {path}")
    print(json.dumps({"metrics": config["metrics"], "training": config["training"]}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a linear, bag or transformer model and save a checkpoint",
                              description="Train a model; resumes from the checkpoint in --output-dir unless "
                                          "--from-scratch. Without --data, trains on a generated sample.")
    p.add_argument("--data", metavar="FILE", help="JSON lines (.gz ok): flat, INSPIRE or arXiv-snapshot records "
                                  "(default: a generated sample of --sample-count records)")
    p.add_argument("--arch", choices=[*DEFAULTS, "hybrid"], default=DEFAULT_ARCH,
                   help="linear (TF-IDF, the default), bag (hashed embeddings), transformer, or hybrid (frozen "
                        "sentence encoder + TF-IDF, heads only; default base: MiniLM-L6)")
    p.add_argument("--extra-train", metavar="FILE", action="append",
                   help="records with real coreness labels (e.g. an INSPIRE coreness file or a `dataset --from-es` "
                        "build); train the coreness head only; repeatable")
    p.add_argument("--extra-valid-fraction", metavar="F", type=float, default=0.2,
                   help="share of the --extra-train records held out (by id) and reported (default: %(default)s)")
    p.add_argument("--split", choices=["time", "random"], default="time",
                   help="validation slice: the most recent records by date, or a shuffled one (default: %(default)s)")
    p.add_argument("--coreness-weight-power", metavar="P", type=float, default=0.5,
                   help="coreness class weights (n / 3 n_class) ** P; 0 = unweighted, 1 = balanced "
                        "(default: %(default)s)")
    p.add_argument("--allow-no-category", action="store_true",
                   help="let a record have no category when none passes its threshold (default: its best one)")
    p.add_argument("--base-model", metavar="DIR", help="local Hugging Face encoder directory (arch transformer)")
    p.add_argument("--output-dir", metavar="DIR", default="artifacts/model",
                   help="checkpoint directory (default: %(default)s)")
    p.add_argument("--epochs", metavar="N", type=int, help="linear: 8, bag: 5, transformer: 2")
    p.add_argument("--batch-size", metavar="N", type=int, help="linear: 64, bag: 64, transformer: 16")
    p.add_argument("--learning-rate", metavar="LR", type=float, help="linear: 1e-1, bag: 5e-2, transformer: 5e-5")
    p.add_argument("--sample-count", metavar="N", type=int, help="use at most this many records")
    p.add_argument("--valid-fraction", metavar="F", type=float, default=0.1,
                   help="validation share: the most recent records (default: %(default)s)")
    p.add_argument("--min-category-count", metavar="N", type=int, default=5,
                   help="keep categories seen at least this often in training data (default: %(default)s)")
    p.add_argument("--focal-gamma", metavar="G", type=float, default=0.0, help="focal loss gamma; 0 = plain CE + BCE")
    p.add_argument("--max-seq-length", metavar="N", type=int, help="tokens (transformer) or words (bag) per record")
    p.add_argument("--seed", metavar="N", type=int, default=0)
    p.add_argument("--device", metavar="DEVICE", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--name", metavar="NAME", help="model name (default: corestream-ARCH)")
    p.add_argument("--version", metavar="VERSION", help="model version (default: a UTC timestamp)")
    p.add_argument("--from-scratch", action="store_true", help="ignore an existing checkpoint in --output-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)
