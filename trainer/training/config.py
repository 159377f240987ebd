"""The training options, listed once: :class:`TrainConfig` feeds :func:`trainer.training.train.train_model` and
builds the ``corestream-train train`` flags (help text in each field's metadata, as HF's ``HfArgumentParser`` does).
The architectures an option can name are those of :data:`TRAINERS`: the training half of each architecture
(:class:`ArchTrainer`; the model half is :mod:`models.archs.base`), registered under the same name."""

from __future__ import annotations

import argparse
import importlib
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from models.inference.device import resolve_device
from models.records.schema import Record

DEFAULT_ARCH = "linear"
SPLITS = ("time", "random")
TrainingData = str | Path | Sequence[Record | dict] | None  # a file, records or record dicts, or (None) a sample


class TrainingError(ValueError):
    """Training cannot start: bad data, options or checkpoint."""


@dataclass(frozen=True)
class ArchDefaults:
    """An architecture's values for the options left unset (``None``) in :class:`TrainConfig`."""

    epochs: int
    batch_size: int
    learning_rate: float
    recency_half_life: float


class ArchTrainer(Protocol):
    """Trains one architecture: from data and options to a saved checkpoint."""

    arch: str
    defaults: ArchDefaults

    def train(self, data: TrainingData, config: TrainConfig, arch_params: dict[str, Any]) -> Path:
        """Train on ``data`` as ``config`` says (``arch_params``: the model's own parameters, e.g. ``embed_dim``),
        save the checkpoint in ``config.output_dir`` and return that path."""
        ...


# arch name -> "module:Class" (imported on first use: hybrid loads `transformers`), or the class; in the order
# the command line lists them
TRAINERS: dict[str, str | type[ArchTrainer]] = {
    "linear": "trainer.training.train:LinearTrainer",
    "bag": "trainer.training.train:BagTrainer",
    "transformer": "trainer.training.train:TransformerTrainer",
    "hybrid": "trainer.training.hybrid:HybridTrainer",
}


def register_trainer(name: str, target: str | type[ArchTrainer]) -> None:
    """Register the trainer of architecture ``name``: its class, or ``"module:Class"`` to import when first used."""
    TRAINERS[name] = target


def arch_trainer(name: str) -> ArchTrainer:
    """The trainer registered as ``name`` (:class:`TrainingError` if none is)."""
    if name not in TRAINERS:
        raise TrainingError(f"unknown arch {name!r}: expected one of {', '.join(TRAINERS)}")
    target = TRAINERS[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
    return target()


def option(default: Any, help: str | None = None, **cli: Any) -> Any:  # noqa: A002 - argparse's name
    """A dataclass field with its command-line flag's ``help`` and other ``add_argument`` keywords (``metavar``,
    ``choices``; ``flag`` names a flag other than ``--field-name``; ``cli=False`` keeps it off the command line)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """Every training option, with its default. ``None`` for epochs, batch size and learning rate means the
    architecture's default (its trainer's ``defaults``)."""

    arch: str = option(DEFAULT_ARCH, "linear (TF-IDF, the default), bag (hashed embeddings), transformer, or "
                       "hybrid (frozen sentence encoder + TF-IDF, heads only; default base: MiniLM-L6)",
                       choices=list(TRAINERS))
    extra_train: tuple[str | Path, ...] = option((), "records with real coreness labels (e.g. an INSPIRE coreness "
                                                 "file or a `dataset --from-es` build); train the coreness head "
                                                 "only; repeatable", metavar="FILE")
    extra_valid_fraction: float = option(0.2, "share of the --extra-train records held out (by id) and reported "
                                         "(default: %(default)s)", metavar="F")
    split: str = option("time", "validation slice: the most recent records by date, or a shuffled one "
                        "(default: %(default)s)", choices=list(SPLITS))
    coreness_weight_power: float = option(0.5, "coreness class weights (n / 3 n_class) ** P; 0 = unweighted, "
                                          "1 = balanced (default: %(default)s)", metavar="P")
    at_least_one_category: bool = option(True, "let a record have no category when none passes its threshold "
                                         "(default: its best one)", flag="--allow-no-category")
    refit: bool = option(True, "keep the model trained without the validation slice (default for linear, bag and "
                         "hybrid: after tuning thresholds on it, train again on all records; the reported metrics stay "
                         "those of the held-out slice)", flag="--no-refit")
    base_model: str | Path | None = option(None, "local Hugging Face encoder directory (arch transformer; "
                                           "hybrid: MiniLM-L6 by default, or a transformer checkpoint's "
                                           "fine-tuned encoder)", metavar="DIR")
    output_dir: str | Path = option("artifacts/model", "checkpoint directory (default: %(default)s)", metavar="DIR")
    epochs: int | None = option(None, "linear: 8, bag: 5, transformer: 2, hybrid: 8", metavar="N")
    batch_size: int | None = option(None, "linear: 64, bag: 64, transformer: 16, hybrid: 64", metavar="N")
    learning_rate: float | None = option(None, "linear and hybrid: 4 (SGD, per record), bag: 5e-2, "
                                         "transformer: 5e-5", metavar="LR")
    recency_half_life: float | None = option(None, "years: a paper's category loss weighs half as much per this "
                                             "many years before the most recent one; 0 = all equal (linear and "
                                             "hybrid: 4, bag and transformer: 0)", metavar="YEARS")
    label_prior: str | Path | None = option(None, "records whose category mix new submissions follow (e.g. the "
                                            "representative arxiv-train inside arxiv-train-large): thresholds and "
                                            "calibration are tuned on the validation records that are in it, and "
                                            "papers are weighted by --label-prior-power "
                                            "(trainer/training/label_prior.py)",
                                            metavar="FILE")
    label_prior_power: float = option(0.0, "with --label-prior: category-loss weight (target / training share of "
                                      "the paper's primary category) ** P; 0 = none (thresholds only: chosen on "
                                      "the time-later slice), 1 = full importance weights (default: %(default)s)",
                                      metavar="P")
    sample_count: int | None = option(None, "use at most this many records", metavar="N")
    valid_fraction: float = option(0.1, "validation share: the most recent records (default: %(default)s)",
                                   metavar="F")
    min_category_count: int = option(5, "keep categories seen at least this often in training data "
                                     "(default: %(default)s)", metavar="N")
    focal_gamma: float = option(0.0, "focal loss gamma; 0 = plain CE + BCE", metavar="G")
    max_seq_length: int | None = option(None, "tokens (transformer) or words (bag) per record", metavar="N")
    seed: int = option(0, metavar="N")
    device: str = option("auto", "auto (cuda > mps > cpu), cpu, cuda, mps", metavar="DEVICE")
    name: str | None = option(None, "model name (default: corestream-ARCH)", metavar="NAME")
    version: str | None = option(None, "model version (default: a UTC timestamp)", metavar="VERSION")
    from_scratch: bool = option(False, "ignore an existing checkpoint in --output-dir")
    progress: bool = option(True, "no progress bar", flag="--no-progress")
    max_steps: int | None = option(None, "stop after this many steps (smoke tests)", cli=False)

    @classmethod
    def split_options(cls, options: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        """Keyword options -> (the config, the rest: architecture parameters such as ``embed_dim``)."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in options.items() if k in names})
        return config, {k: v for k, v in options.items() if k not in names}

    def trainer(self) -> ArchTrainer:
        """The trainer of :attr:`arch` (:data:`TRAINERS`)."""
        return arch_trainer(self.arch)

    def resolved(self) -> TrainConfig:
        """The architecture's defaults filled in, the device resolved and the options checked
        (:class:`TrainingError`)."""
        defaults = self.trainer().defaults
        epochs = defaults.epochs if self.epochs is None else self.epochs
        batch_size = self.batch_size or defaults.batch_size
        learning_rate = self.learning_rate or defaults.learning_rate
        half_life = defaults.recency_half_life if self.recency_half_life is None else self.recency_half_life
        if (epochs < 0 or batch_size < 1 or learning_rate <= 0 or self.focal_gamma < 0
                or self.coreness_weight_power < 0 or half_life < 0 or self.label_prior_power < 0):
            raise TrainingError("epochs must be >= 0, batch size >= 1, learning rate > 0, focal gamma >= 0, "
                                "coreness weight power >= 0, recency half-life >= 0 and label prior power >= 0")
        if self.split not in SPLITS:
            raise TrainingError(f"split must be 'time' or 'random', got {self.split!r}")
        return replace(self, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                       recency_half_life=half_life,
                       output_dir=Path(self.output_dir), device=resolve_device(self.device))

    # ------------------------------------------------------------------ command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (``--field-name`` unless the field names another); a bool field is a switch that
        flips its default; a tuple field is a repeatable flag."""
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            meta = dict(f.metadata)
            if not meta.pop("cli", True):
                continue
            flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
            kind = _base_type(hints[f.name])
            kwargs: dict[str, Any] = {"dest": f.name, **meta}
            if kind is bool:
                kwargs["action"] = "store_false" if f.default else "store_true"
            elif kind is tuple:
                kwargs["action"] = "append"
            else:
                kwargs["default"] = None if f.default is MISSING else f.default
                if kind in (int, float):
                    kwargs["type"] = kind
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of parsed command-line arguments (see :meth:`add_arguments`)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("cli", True)}
        values["extra_train"] = tuple(values["extra_train"] or ())  # argparse's append starts from None
        return cls(**values)


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int, ``tuple[...]`` -> tuple; a union of several types (``str | Path``) -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0])
    return typing.get_origin(hint) or hint
