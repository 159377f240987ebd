"""``corestream-train train``: fit a linear, bag, transformer or hybrid model, tune thresholds on the most recent data,
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from config.cli import CommandError
from config.settings import Settings
from models.archs.base import ClassifierOutput
from models.archs.calibration import IDENTITY, Calibration
from models.archs.checkpoint import CONFIG_FILE, architecture, load_checkpoint, save_checkpoint
from models.archs.losses import classification_loss
from models.inference.device import autocast
from models.inference.predictor import score_logits, score_texts
from models.records.labels import CorenessProxy
from models.records.schema import CORENESS_LABELS, Record, RecordError
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import (
    DataError,
    category_vocabulary,
    fingerprint,
    held_out,
    known_categories,
    label_record,
    load_records,
    parse_training_line,
    recency_weights,
    split_records,
    time_split,
)
from trainer.evaluation.calibration import calibration_config, fit_calibration
from trainer.evaluation.card import model_card
from trainer.evaluation.metrics import category_calibration, category_metrics, coreness_calibration, coreness_metrics
from trainer.evaluation.thresholds import apply_thresholds, calibrated_grid, cross_fitted, tune_thresholds
from trainer.training.config import TrainConfig, TrainingError

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_COUNT = 2000
REFIT_ARCHS = ("linear", "bag")  # fast enough to train twice


MAX_RECORD_PASSES = 1_200_000  # linear's default epochs x training records, at most (2 epochs at least)


def scaled_epochs(epochs: int, records: int) -> int:
    """``linear``'s default epochs for ``records`` training records: 8 up to 150k records, then fewer, so that
    the SGD passes (and the time) grow linearly with the data from there: 3 at 336k, 2 from 600k."""
    return max(2, min(epochs, MAX_RECORD_PASSES // max(records, 1)))


def to_records(data: str | Path | Sequence[Record | dict] | None, sample_count: int | None, seed: int,
               proxy: CorenessProxy, progress: bool = False) -> list[Record]:
    """Labelled records from a JSONL path, a list of Records/dicts, or (None) a generated sample."""
    if data is None:
        data = generate_sample(sample_count or DEFAULT_SAMPLE_COUNT, seed)
    if isinstance(data, str | Path):
        return load_records(data, limit=sample_count, proxy=proxy, progress=progress)
    records = []
    for index, item in enumerate(data):
        try:
            record = item if isinstance(item, Record) else parse_training_line(item)
        except RecordError as exc:
            raise DataError(f"training record {index} is invalid: {exc}") from None
        records.append(label_record(record, proxy))
    return records[:sample_count] if sample_count else records


def category_targets(records: Sequence[Record], labels: Sequence[str], dtype: type = np.float32) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(records), len(labels)), dtype=dtype)
    for row, record in enumerate(records):
        for cat in record.categories:
            if cat in index:
                targets[row, index[cat]] = 1.0
    return targets


def coreness_targets(records: Sequence[Record]) -> np.ndarray:
    return np.array([CORENESS_LABELS.index(r.coreness) for r in records], dtype=np.int64)


def build_model(arch: str, num_categories: int, base_model: str | Path | None, max_seq_length: int | None,
                arch_params: dict[str, Any], records: Sequence[Record] = (), progress: bool = False
                ) -> torch.nn.Module:
    """A fresh model of ``arch`` (the transformer starts from ``base_model``, the linear model learns its
    vocabulary from the texts of the training ``records``, read once)."""
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
        return cls.from_texts((r.text for r in records), num_categories, progress=progress, total=len(records),
                              **params)
    return cls(num_categories, **params)


def init_head_biases(model: torch.nn.Module, coreness: torch.Tensor, categories: torch.Tensor,
                     known: torch.Tensor | None = None) -> None:
    """Start the heads at the training priors (log class frequencies), so that the first steps are not spent
    learning that most categories are absent and the encoder is not shaken by huge initial losses."""
    with torch.no_grad():
        model.coreness_head.bias.copy_(coreness_prior_logits(coreness))
        model.category_head.bias.copy_(category_prior_logits(categories, known))


def coreness_prior_logits(coreness: torch.Tensor) -> torch.Tensor:
    """Log of each coreness class's frequency (3,), add-one smoothed."""
    return torch.bincount(coreness, minlength=3).float().add(1).div(len(coreness) + 3).log()


def category_prior_logits(categories: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Log-odds of each category's frequency (C,), over the records whose label for it is ``known``."""
    known = torch.ones_like(categories) if known is None else known
    prior = ((categories * known).sum(0) / known.sum(0)).nan_to_num(0.5).clamp(1e-4, 1 - 1e-4)  # 0/0: none known
    return torch.log(prior / (1 - prior))


def is_sparse(model: torch.nn.Module, param: torch.nn.Parameter) -> bool:
    return any(isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse and param is m.weight
               for m in model.modules())


def make_optimizers(arch: str, model: torch.nn.Module, learning_rate: float,
                    batch_size: int) -> list[torch.optim.Optimizer]:
    """The optimizers of ``arch``.

    ``linear``: plain SGD, ``learning_rate`` per record (the batch-mean loss at ``learning_rate`` x batch size).
    Adaptive optimizers (Adam, Adagrad) give every weight steps of about the same size, so the countless tiny
    gradients of absent categories push all weights down and the model ends far from the logistic-regression
    optimum (bench: micro-F1 0.465 with SparseAdam, 0.535 with SGD). ``bag`` and ``transformer``: see
    :func:`adam_optimizers`."""
    if arch == "linear":
        return [torch.optim.SGD(model.parameters(), lr=learning_rate * batch_size)]
    dense = arch not in ("bag",)
    return adam_optimizers(model, learning_rate, weight_decay=0.01 if dense else 0.0,
                           head_lr_factor=20.0 if dense else 1.0)


def adam_optimizers(model: torch.nn.Module, learning_rate: float, weight_decay: float,
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
    """Coreness accuracy, macro-F1, per-class recall (with support) and calibration (ECE of the answer's score,
    share of answers scored >= 0.999) of predicted probabilities."""
    core = coreness_metrics([r.coreness for r in records],
                            [CORENESS_LABELS[i] for i in core_probs.argmax(1)], CORENESS_LABELS)
    calibration = coreness_calibration([r.coreness for r in records], core_probs, CORENESS_LABELS)
    return {"records": len(records), "coreness_accuracy": core["accuracy"], "coreness_macro_f1": core["macro_f1"],
            "coreness_recall": {row["label"]: row["recall"] for row in core["per_class"] if row["support"]},
            "coreness_support": {row["label"]: row["support"] for row in core["per_class"] if row["support"]},
            "coreness_ece": calibration["ece"], "coreness_mean_confidence": calibration["mean_confidence"],
            "coreness_saturated_share": calibration["saturated_share"]}


def evaluate_split(model: torch.nn.Module, records: Sequence[Record], labels: Sequence[str], *, device: str,
                   batch_size: int, at_least_one: bool = True) -> tuple[dict[str, Any], dict[str, float], Calibration]:
    """Score ``records`` (the held-out slice) with ``model``; see :func:`held_out_summary`."""
    core_logits, cat_logits = score_logits(model, [r.text for r in records], batch_size=batch_size, device=device)
    return held_out_summary(records, labels, core_logits, cat_logits, at_least_one)


def held_out_summary(records: Sequence[Record], labels: Sequence[str], core_logits: np.ndarray,
                     cat_logits: np.ndarray, at_least_one: bool = True) -> tuple[dict[str, Any], dict[str, float],
                                                                                 Calibration]:
    """From a held-out slice's logits: the calibration fitted on them, per-class thresholds tuned on the
    calibrated scores (over :func:`trainer.evaluation.thresholds.calibrated_grid`), and the metrics with both
    (``category_f1_*_cross_fitted``: F1 with thresholds tuned on the other half of the records;
    ``*_uncalibrated``: calibration before it)."""
    y_true = category_targets(records, labels)
    known = known_categories(records, labels)
    calibration = fit_calibration(core_logits, coreness_targets(records), cat_logits, y_true, known)
    core_probs, cat_probs = calibration.probabilities(core_logits, cat_logits)
    grid = calibrated_grid(calibration)  # the same decisions as the uncalibrated scores over GRID
    thresholds = tune_thresholds(cat_probs, y_true, labels, grid=grid)
    predicted = apply_thresholds(cat_probs, thresholds, labels, at_least_one=at_least_one)
    cats = category_metrics(y_true, predicted, cat_probs, labels, thresholds)
    cat_calibration = category_calibration(y_true, cat_probs, predicted)
    raw = IDENTITY.probabilities(core_logits, cat_logits)
    summary = {
        **coreness_summary(records, core_probs),
        "coreness_ece_uncalibrated": coreness_calibration([r.coreness for r in records], raw[0],
                                                          CORENESS_LABELS)["ece"],
        "category_f1_micro": cats["f1_micro"], "category_f1_macro": cats["f1_macro"],
        "category_f1_samples": cats["f1_samples"], "category_roc_auc_micro": cats["roc_auc_micro"],
        "category_map": cats["map"],
        "category_top_ece": cat_calibration["top"]["ece"],
        "category_top_saturated_share": cat_calibration["top"]["saturated_share"],
        "category_returned_ece": cat_calibration["returned"]["ece"],
        "category_top_ece_uncalibrated": category_calibration(y_true, raw[1], predicted)["top"]["ece"],
    }
    if len(records) >= 4:
        fitted = category_metrics(y_true, cross_fitted(cat_probs, y_true, labels, at_least_one=at_least_one,
                                                       grid=grid), cat_probs, labels)
        summary["category_f1_micro_cross_fitted"] = fitted["f1_micro"]
        summary["category_f1_macro_cross_fitted"] = fitted["f1_macro"]
    return summary, thresholds, calibration


def coreness_class_weights(coreness: torch.Tensor, power: float) -> torch.Tensor:
    """(n / (3 n_c)) ** ``power`` per coreness class (0: unweighted, 1: balanced), so that rare classes count."""
    counts = torch.bincount(coreness, minlength=3).float().clamp_min(1)
    return (counts.sum() / (3 * counts)).pow(power)


def batch_source(model: torch.nn.Module, records: Sequence[Record], progress: bool
                 ) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
    """The model inputs of the records at an index array. ``linear`` featurises every text once, into compact
    arrays (:meth:`models.archs.linear.LinearClassifier.encode_all`); the others encode each batch as it comes."""
    if hasattr(model, "encode_all"):
        return model.encode_all((r.text for r in records), progress=progress, total=len(records)).batch
    texts = [r.text for r in records]
    return lambda index: model.encode([texts[i] for i in index.tolist()])


@dataclass
class FitResult:
    steps: int
    epochs: int
    seconds: float
    coreness_weight: list[float]


def fit(model: torch.nn.Module, records: Sequence[Record], extra_records: Sequence[Record], labels: Sequence[str],
        opts: TrainConfig, *, fresh: bool) -> FitResult:
    """Run ``opts.epochs`` epochs over ``records`` (both heads) and ``extra_records`` (real coreness labels: the
    coreness head only); a ``fresh`` model first gets its head biases at the training priors."""
    every = [*records, *extra_records]
    y_core = torch.from_numpy(coreness_targets(every))
    y_cats = torch.from_numpy(category_targets(every, labels, np.uint8))  # 0/1 bytes: a quarter of float32
    known = torch.from_numpy(known_categories(every, labels, np.uint8))
    cat_mask = torch.cat([torch.ones(len(records)), torch.zeros(len(extra_records))])
    recency = torch.cat([torch.from_numpy(recency_weights(records, opts.recency_half_life)),
                         torch.ones(len(extra_records))])
    core_weight = coreness_class_weights(y_core, opts.coreness_weight_power).to(opts.device)
    if fresh:
        init_head_biases(model, y_core, y_cats[: len(records)].float(), known[: len(records)].float())
    model.to(opts.device)
    dense_params = [p for p in model.parameters() if p.requires_grad and not is_sparse(model, p)]
    started = time.monotonic()
    batch_inputs = batch_source(model, every, opts.progress)
    steps_per_epoch = math.ceil(len(every) / opts.batch_size)
    total_steps = min(opts.epochs * steps_per_epoch, opts.max_steps or opts.epochs * steps_per_epoch)
    optimizers = make_optimizers(opts.arch, model, opts.learning_rate, opts.batch_size)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.05, 1 - step / max(1, total_steps)))
                  for opt in optimizers]
    amp_dtype = torch.bfloat16 if opts.device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    generator = torch.Generator().manual_seed(opts.seed)
    step, epochs_run = 0, 0
    model.train()
    threads = torch.get_num_threads()
    if hasattr(model, "sgd_step") and opts.device == "cpu":  # small ops: 2 threads cost 5x more CPU under load
        torch.set_num_threads(1)
    with tqdm(total=total_steps, desc=f"train {opts.arch}", unit="batch", disable=not opts.progress) as bar:
        for epoch in range(opts.epochs):
            if step >= total_steps:
                break
            order = torch.randperm(len(every), generator=generator)
            for start in range(0, len(order), opts.batch_size):
                if step >= total_steps:
                    break
                idx = order[start:start + opts.batch_size]
                inputs = {key: value.to(opts.device) for key, value in batch_inputs(idx.numpy()).items()}

                def loss_of(output: ClassifierOutput, idx: torch.Tensor = idx) -> torch.Tensor:
                    return classification_loss(output, y_core[idx].to(opts.device),
                                               y_cats[idx].to(opts.device, torch.float32), opts.focal_gamma,
                                               core_weight, cat_mask[idx].to(opts.device),
                                               recency[idx].to(opts.device),
                                               known[idx].to(opts.device, torch.float32))

                if hasattr(model, "sgd_step"):  # linear: the same SGD update, without sparse gradient tensors
                    rate = opts.learning_rate * opts.batch_size * max(0.05, 1 - step / max(1, total_steps))
                    loss = model.sgd_step(**inputs, loss_of=loss_of, learning_rate=rate, max_bias_grad_norm=5.0)
                else:
                    with autocast(opts.device, amp_dtype):
                        output = model(**inputs)
                    loss = loss_of(output)
                    for opt in optimizers:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(dense_params, 5.0)
                    for opt, sched in zip(optimizers, schedulers, strict=True):
                        opt.step()
                        sched.step()
                step += 1
                bar.update(1)
                if step % 50 == 1:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", refresh=False)
            epochs_run += 1
    torch.set_num_threads(threads)
    return FitResult(step, epochs_run, time.monotonic() - started, core_weight.tolist())


def train_model(data: str | Path | Sequence[Record | dict] | None, config: TrainConfig | None = None,
                **options: Any) -> Path:
    """Train (or resume) a model on ``data`` and save its checkpoint in ``config.output_dir``; return that path.

    ``data``: a JSONL / arXiv snapshot path, a list of Records or record dicts, or None for a generated sample
    of ``sample_count`` records. The options are a :class:`TrainConfig`, or its fields as keywords; other
    keywords are architecture parameters (e.g. ``embed_dim`` for bag, ``max_terms`` for linear). ``split``:
    ``time`` holds out the most recent ``valid_fraction`` by date (for threshold tuning and the checkpoint's
    metrics), ``random`` a shuffled one. ``extra_train``: files of records with real coreness labels (e.g. INSPIRE
    curator decisions); they train the coreness head only, and a stable ``extra_valid_fraction`` of them (by id) is
    held out and reported. ``coreness_weight_power``: coreness class weights (see
    :func:`coreness_class_weights`). ``max_steps`` stops early (smoke tests).
    """
    config, arch_params = TrainConfig.split_options(options) if config is None else (config, options)
    if config.arch == "hybrid":
        from trainer.training.hybrid import train_model_hybrid

        return train_model_hybrid(data, config, **arch_params)
    opts = config.resolved()
    torch.manual_seed(opts.seed)

    proxy = CorenessProxy.load()
    records = to_records(data, opts.sample_count, opts.seed, proxy, opts.progress)
    split = time_split if opts.split == "time" else split_records
    train_records, valid_records = split(records, opts.valid_fraction, opts.seed)
    extra_train_records, extra_valid_records = [], []
    for extra in opts.extra_train:
        kept, check = held_out(load_records(extra, proxy=proxy), opts.extra_valid_fraction)
        extra_train_records += kept
        extra_valid_records += check
    if not train_records:
        raise TrainingError(f"need at least 2 records to train, got {len(records)}")
    if config.epochs is None and opts.arch == "linear":
        opts = replace(opts, epochs=scaled_epochs(opts.epochs, len(train_records)))

    resumed = (opts.output_dir / CONFIG_FILE).exists() and not opts.from_scratch
    previous: dict[str, Any] = {}
    if resumed:
        model, previous = load_checkpoint(opts.output_dir, device="cpu")
        if previous["arch"] != opts.arch:
            raise TrainingError(f"{opts.output_dir} holds a {previous['arch']} checkpoint, not {opts.arch}: pass "
                                "--from-scratch or another --output-dir")
        labels = list(previous["category_labels"])
        log.info("resuming %s from %s (%d epochs so far)", opts.arch, opts.output_dir,
                 previous.get("training", {}).get("epochs_total", 0))
    else:
        labels = category_vocabulary(train_records, opts.min_category_count)
        if not labels:
            raise TrainingError(f"no category occurs {opts.min_category_count} times in {len(train_records)} training "
                                "records: lower --min-category-count or add data")
        model = build_model(opts.arch, len(labels), opts.base_model, opts.max_seq_length, arch_params,
                            train_records, opts.progress)
    fitted = fit(model, train_records, extra_train_records, labels, opts, fresh=not resumed)

    score_batch = max(opts.batch_size, 64)
    calibration = IDENTITY
    if valid_records:  # calibration fitted and thresholds tuned on the held-out slice, before any refit
        valid_summary, thresholds, calibration = evaluate_split(model, valid_records, labels, device=opts.device,
                                                                batch_size=score_batch,
                                                                at_least_one=opts.at_least_one_category)
    else:
        valid_summary, thresholds = {}, {label: 0.5 for label in labels}
    metrics: dict[str, Any] = {"valid": valid_summary}
    if extra_valid_records:
        core_probs, _ = score_texts(model, [r.text for r in extra_valid_records], batch_size=score_batch,
                                    device=opts.device, calibration=calibration)
        metrics["extra_valid"] = coreness_summary(extra_valid_records, core_probs)
    refit_seconds = None
    if opts.refit and valid_records and not resumed and opts.arch in REFIT_ARCHS:
        # The thresholds and metrics above stay those of the held-out slice; the saved model also learns from
        # that slice, the papers nearest to what it will classify.
        log.info("refitting %s on all %d records", opts.arch, len(train_records) + len(valid_records))
        model = build_model(opts.arch, len(labels), opts.base_model, opts.max_seq_length, arch_params,
                            train_records + valid_records, opts.progress)
        refit_seconds = fit(model, train_records + valid_records, extra_train_records, labels, opts,
                            fresh=True).seconds
    previous_training = previous.get("training", {})
    checkpoint_config = {
        "name": opts.name or previous.get("name") or f"corestream-{opts.arch}",
        "version": opts.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "coreness_labels": list(CORENESS_LABELS),
        "category_labels": labels,
        "thresholds": thresholds,
        "calibration": calibration_config(calibration, valid_records, opts.split),
        "at_least_one_category": opts.at_least_one_category,
        "metrics": metrics,
        "data_fingerprint": fingerprint(records + extra_train_records),
        "base_model": str(opts.base_model) if opts.base_model else previous.get("base_model"),
        "training": {
            "epochs": fitted.epochs, "steps": fitted.steps,
            "epochs_total": previous_training.get("epochs_total", 0) + fitted.epochs,
            "resumed": resumed, "batch_size": opts.batch_size, "learning_rate": opts.learning_rate,
            "focal_gamma": opts.focal_gamma,
            "recency_half_life": opts.recency_half_life, "seed": opts.seed, "valid_fraction": opts.valid_fraction,
            "split": opts.split,
            "coreness_weight_power": opts.coreness_weight_power, "coreness_class_weights": fitted.coreness_weight,
            "min_category_count": opts.min_category_count, "train_records": len(train_records),
            "valid_records": len(valid_records), "extra_train_records": len(extra_train_records),
            "extra_valid_records": len(extra_valid_records), "train_seconds": round(fitted.seconds, 2),
            "refit_on_all_records": refit_seconds is not None,
            "refit_seconds": None if refit_seconds is None else round(refit_seconds, 2), "device": opts.device,
        },
    }
    checkpoint_config["card"] = model_card(data, opts.extra_train, train_records, valid_records,
                                           extra_train_records, extra_valid_records, labels, metrics, opts.split,
                                           refit=refit_seconds is not None,
                                           calibration=checkpoint_config["calibration"])
    if "dont_run_on" in previous:
        checkpoint_config["dont_run_on"] = previous["dont_run_on"]
    path = save_checkpoint(model.cpu(), checkpoint_config, opts.output_dir)
    log.info("saved %s checkpoint to %s", opts.arch, path, extra={"metrics": valid_summary})
    return path


# --------------------------------------------------------------------------- CLI


def _train_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        path = train_model(args.data, TrainConfig.from_args(args))
    except (ValueError, OSError) as exc:  # TrainingError, DataError, CheckpointError, bad device
        raise CommandError(str(exc)) from None
    config = json.loads((path / CONFIG_FILE).read_text())
    print(f"saved {config['arch']} model {config['name']}@{config['version']} to {path}")
    print(json.dumps({"metrics": config["metrics"], "training": config["training"]}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a linear, bag, transformer or hybrid model and save a checkpoint",
                              description="Train a model; resumes from the checkpoint in --output-dir unless "
                                          "--from-scratch. Without --data, trains on a generated sample.")
    p.add_argument("--data", metavar="FILE", help="JSON lines (.gz ok): flat, INSPIRE or arXiv-snapshot records "
                                  "(default: a generated sample of --sample-count records)")
    TrainConfig.add_arguments(p)
    p.set_defaults(func=_train_command)
