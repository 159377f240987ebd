"""``corestream-train train``: fit a linear, bag, transformer or hybrid model, tune thresholds on the most recent data,
save a checkpoint with its model card. :func:`train_model` hands the run to the architecture's trainer
(:data:`trainer.training.config.TRAINERS`); this module holds the trainers of the architectures trained end to end
(:class:`StandardTrainer`: linear, bag, transformer; hybrid's is :mod:`trainer.training.hybrid`).

Standard data flow: records (file, list, or a generated sample) -> labelled records -> train/validation split (the most
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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from config.cli import CommandError
from config.settings import Settings
from models.archs.base import ClassifierOutput
from models.archs.calibration import IDENTITY
from models.archs.checkpoint import CONFIG_FILE, architecture, load_checkpoint, save_checkpoint
from models.archs.losses import classification_loss
from models.inference.device import autocast
from models.inference.predictor import score_texts
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
from trainer.evaluation.held_out import coreness_summary, evaluate_split
from trainer.training.config import ArchDefaults, TrainConfig, TrainingData, TrainingError
from trainer.training.heads import FitResult, coreness_class_weights, init_head_biases
from trainer.training.label_prior import load_label_prior

log = logging.getLogger(__name__)

MAX_RECORD_PASSES = 1_200_000  # linear's default epochs x training records, at most (2 epochs at least)


def scaled_epochs(epochs: int, records: int) -> int:
    """``linear``'s default epochs for ``records`` training records: 8 up to 150k records, then fewer, so that
    the SGD passes (and the time) grow linearly with the data from there: 3 at 336k, 2 from 600k."""
    return max(2, min(epochs, MAX_RECORD_PASSES // max(records, 1)))


def is_sparse(model: torch.nn.Module, param: torch.nn.Parameter) -> bool:
    return any(isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse and param is m.weight
               for m in model.modules())


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


def batch_source(model: torch.nn.Module, records: Sequence[Record], progress: bool
                 ) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
    """The model inputs of the records at an index array. ``linear`` featurises every text once, into compact
    arrays (:meth:`models.archs.linear.LinearClassifier.encode_all`); the others encode each batch as it comes."""
    if hasattr(model, "encode_all"):
        return model.encode_all((r.text for r in records), progress=progress, total=len(records)).batch
    texts = [r.text for r in records]
    return lambda index: model.encode([texts[i] for i in index.tolist()])


def prior_weights(records: Sequence[Record], opts: TrainConfig) -> np.ndarray:
    """Category-loss weights toward ``--label-prior``'s mix (all ones without it): see
    :mod:`trainer.training.label_prior`."""
    if not opts.label_prior:
        return np.ones(len(records), dtype=np.float32)
    return load_label_prior(str(opts.label_prior)).weights(records, opts.label_prior_power)


def fit(model: torch.nn.Module, records: Sequence[Record], extra_records: Sequence[Record], labels: Sequence[str],
        opts: TrainConfig, *, fresh: bool, trainer: StandardTrainer) -> FitResult:
    """Run ``opts.epochs`` epochs over ``records`` (both heads) and ``extra_records`` (real coreness labels: the
    coreness head only); a ``fresh`` model first gets its head biases at the training priors."""
    every = [*records, *extra_records]
    y_core = torch.from_numpy(coreness_targets(every))
    y_cats = torch.from_numpy(category_targets(every, labels, np.uint8))  # 0/1 bytes: a quarter of float32
    known = torch.from_numpy(known_categories(every, labels, np.uint8))
    cat_mask = torch.cat([torch.ones(len(records)), torch.zeros(len(extra_records))])
    recency = torch.cat([torch.from_numpy(recency_weights(records, opts.recency_half_life)
                                          * prior_weights(records, opts)), torch.ones(len(extra_records))])
    core_weight = coreness_class_weights(y_core, opts.coreness_weight_power).to(opts.device)
    if fresh:
        init_head_biases(model, y_core, y_cats[: len(records)].float(), known[: len(records)].float())
    model.to(opts.device)
    dense_params = [p for p in model.parameters() if p.requires_grad and not is_sparse(model, p)]
    started = time.monotonic()
    batch_inputs = batch_source(model, every, opts.progress)
    steps_per_epoch = math.ceil(len(every) / opts.batch_size)
    total_steps = min(opts.epochs * steps_per_epoch, opts.max_steps or opts.epochs * steps_per_epoch)
    optimizers = trainer.optimizers(model, opts)
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


def train_model(data: TrainingData, config: TrainConfig | None = None, **options: Any) -> Path:
    """Train (or resume) a model on ``data`` and save its checkpoint in ``config.output_dir``; return that path.

    ``data``: a JSONL / arXiv snapshot path, a list of Records or record dicts, or None for a generated sample
    of ``sample_count`` records. The options are a :class:`TrainConfig`, or its fields as keywords; other
    keywords are architecture parameters (e.g. ``embed_dim`` for bag, ``max_terms`` for linear). ``split``:
    ``time`` holds out the most recent ``valid_fraction`` by date (for threshold tuning and the checkpoint's
    metrics), ``random`` a shuffled one. ``extra_train``: files of records with real coreness labels (e.g. INSPIRE
    curator decisions); they train the coreness head only, and a stable ``extra_valid_fraction`` of them (by id) is
    held out and reported. ``coreness_weight_power``: coreness class weights (see
    :func:`trainer.training.heads.coreness_class_weights`). ``max_steps`` stops early (smoke tests). The run is
    the architecture's trainer's (:meth:`TrainConfig.trainer`).
    """
    config, arch_params = TrainConfig.split_options(options) if config is None else (config, options)
    return config.trainer().train(data, config, arch_params)


class StandardTrainer:
    """The training of an architecture fitted end to end by :func:`fit`: build a fresh model (or resume the
    checkpoint in the output directory), fit it, fit the calibration and tune the thresholds on the held-out
    slice, refit on all records (if :attr:`refit`), save. A subclass says how its model is built and optimised;
    the model has a ``coreness_head`` and a ``category_head`` with a ``bias`` (started at the training priors)."""

    arch: str
    defaults: ArchDefaults
    refit = True  # fast enough to train twice

    def epochs(self, config: TrainConfig, resolved: int, train_records: int) -> int:
        """The epochs to run, ``resolved`` being the option or the default."""
        return resolved

    def build(self, num_categories: int, opts: TrainConfig, arch_params: dict[str, Any],
              records: Sequence[Record]) -> torch.nn.Module:
        """A fresh model (``arch_params`` and ``--max-seq-length`` as its parameters)."""
        return architecture(self.arch)(num_categories, **self.params(opts, arch_params))

    def optimizers(self, model: torch.nn.Module, opts: TrainConfig) -> list[torch.optim.Optimizer]:
        """AdamW, the heads at 20x the rate, weight decay 0.01 (:func:`adam_optimizers`)."""
        return adam_optimizers(model, opts.learning_rate, weight_decay=0.01, head_lr_factor=20.0)

    def train(self, data: TrainingData, config: TrainConfig, arch_params: dict[str, Any]) -> Path:
        return train_standard(self, data, config, arch_params)

    @staticmethod
    def params(opts: TrainConfig, arch_params: dict[str, Any]) -> dict[str, Any]:
        params = dict(arch_params)
        if opts.max_seq_length:
            params["max_seq_length"] = opts.max_seq_length
        return params


class LinearTrainer(StandardTrainer):
    """``linear``: the vocabulary is learned from the training texts (read once); plain SGD."""

    arch = "linear"
    defaults = ArchDefaults(epochs=8, batch_size=64, learning_rate=4.0, recency_half_life=4.0)  # SGD, per record

    def epochs(self, config: TrainConfig, resolved: int, train_records: int) -> int:
        return resolved if config.epochs is not None else scaled_epochs(resolved, train_records)

    def build(self, num_categories: int, opts: TrainConfig, arch_params: dict[str, Any],
              records: Sequence[Record]) -> torch.nn.Module:
        return architecture(self.arch).from_texts((r.text for r in records), num_categories, progress=opts.progress,
                                                  total=len(records), **self.params(opts, arch_params))

    def optimizers(self, model: torch.nn.Module, opts: TrainConfig) -> list[torch.optim.Optimizer]:
        """Plain SGD, ``learning_rate`` per record (the batch-mean loss at ``learning_rate`` x batch size).
        Adaptive optimizers (Adam, Adagrad) give every weight steps of about the same size, so the countless tiny
        gradients of absent categories push all weights down and the model ends far from the logistic-regression
        optimum (bench: micro-F1 0.465 with SparseAdam, 0.535 with SGD)."""
        return [torch.optim.SGD(model.parameters(), lr=opts.learning_rate * opts.batch_size)]


class BagTrainer(StandardTrainer):
    """``bag``: hashed n-gram embeddings (SparseAdam) and heads (AdamW, no weight decay)."""

    arch = "bag"
    defaults = ArchDefaults(epochs=5, batch_size=64, learning_rate=5e-2, recency_half_life=0.0)

    def optimizers(self, model: torch.nn.Module, opts: TrainConfig) -> list[torch.optim.Optimizer]:
        return adam_optimizers(model, opts.learning_rate, weight_decay=0.0, head_lr_factor=1.0)


class TransformerTrainer(StandardTrainer):
    """``transformer``: fine-tunes a local Hugging Face encoder (``--base-model``); too slow to train twice."""

    arch = "transformer"
    defaults = ArchDefaults(epochs=2, batch_size=16, learning_rate=5e-5, recency_half_life=0.0)
    refit = False

    def build(self, num_categories: int, opts: TrainConfig, arch_params: dict[str, Any],
              records: Sequence[Record]) -> torch.nn.Module:
        if opts.base_model is None:
            raise TrainingError("--base-model PATH (a local Hugging Face encoder directory) is required for "
                                "arch 'transformer'")
        return architecture(self.arch).from_pretrained(opts.base_model, num_categories,
                                                       **self.params(opts, arch_params))


def train_standard(trainer: StandardTrainer, data: TrainingData, config: TrainConfig,
                   arch_params: dict[str, Any]) -> Path:
    """:func:`train_model` for an architecture of ``trainer`` (see :class:`StandardTrainer`)."""
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
    opts = replace(opts, epochs=trainer.epochs(config, opts.epochs, len(train_records)))

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
        model = trainer.build(len(labels), opts, arch_params, train_records)
    fitted = fit(model, train_records, extra_train_records, labels, opts, fresh=not resumed, trainer=trainer)

    score_batch = max(opts.batch_size, 64)
    calibration = IDENTITY
    tuning_records = load_label_prior(str(opts.label_prior)).tuning_slice(valid_records) if opts.label_prior \
        else valid_records
    if valid_records:  # calibration fitted and thresholds tuned on the held-out slice, before any refit
        valid_summary, thresholds, calibration = evaluate_split(model, tuning_records, labels, device=opts.device,
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
    if opts.refit and valid_records and not resumed and trainer.refit:
        # The thresholds and metrics above stay those of the held-out slice; the saved model also learns from
        # that slice, the papers nearest to what it will classify.
        log.info("refitting %s on all %d records", opts.arch, len(train_records) + len(valid_records))
        model = trainer.build(len(labels), opts, arch_params, train_records + valid_records)
        refit_seconds = fit(model, train_records + valid_records, extra_train_records, labels, opts,
                            fresh=True, trainer=trainer).seconds
    previous_training = previous.get("training", {})
    checkpoint_config = {
        "name": opts.name or previous.get("name") or f"corestream-{opts.arch}",
        "version": opts.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "coreness_labels": list(CORENESS_LABELS),
        "category_labels": labels,
        "thresholds": thresholds,
        "calibration": calibration_config(calibration, tuning_records, opts.split),
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
            "label_prior": str(opts.label_prior) if opts.label_prior else None,
            "label_prior_power": opts.label_prior_power if opts.label_prior else None,
            "threshold_records": len(tuning_records),
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
