"""Batch prediction: records -> :class:`ClassificationResult` with a loaded checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import torch
from pydantic import TypeAdapter
from torch import nn

from models.archs.calibration import IDENTITY, Calibration
from models.archs.checkpoint import load_checkpoint
from models.archs.runtime import apply_runtime
from models.inference.device import autocast, autocast_dtype, resolve_device
from models.records.schema import CORENESS_LABELS, ClassificationResult, ModelInfo, Record

VALIDATE_RESULTS = TypeAdapter(list[ClassificationResult]).validate_python  # one call a batch: ~20% under one a result


def score_logits(model: nn.Module, texts: Sequence[str], *, batch_size: int = 64, device: str = "cpu",
                 dtype: torch.dtype | None = None, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw coreness logits (n, 3) and category logits (n, C), in the order of ``texts``.

    Texts are sorted by length so that each batch pads little, then put back in order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    coreness = np.zeros((len(texts), 3), dtype=np.float32)
    categories = np.zeros((len(texts), model.num_categories), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = model.encode([texts[i] for i in idx], max_length)
            out = model(**{key: value.to(device) for key, value in inputs.items()})
            coreness[idx] = out.coreness_logits.float().cpu().numpy()
            categories[idx] = out.category_logits.float().cpu().numpy()
    model.train(was_training)
    return coreness, categories


def score_texts(model: nn.Module, texts: Sequence[str], *, batch_size: int = 64, device: str = "cpu",
                dtype: torch.dtype | None = None, max_length: int | None = None,
                calibration: Calibration = IDENTITY) -> tuple[np.ndarray, np.ndarray]:
    """Coreness probabilities (n, 3) and category probabilities (n, C), in the order of ``texts``, through
    ``calibration`` (default: none)."""
    coreness, categories = score_logits(model, texts, batch_size=batch_size, device=device, dtype=dtype,
                                        max_length=max_length)
    return calibration.probabilities(coreness, categories)


class Predictor:
    """A checkpoint loaded for inference. ``predict_batch`` keeps the input order."""

    def __init__(self, model: nn.Module, config: dict, *, checkpoint_dir: Path, device: str, precision: str = "auto",
                 max_seq_length: int | None = None, batch_size: int = 64, name: str | None = None,
                 version: str | None = None, at_least_one_category: bool | None = None) -> None:
        self.model = model
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.dtype = autocast_dtype(device, precision)
        self.max_seq_length = max_seq_length or model.max_seq_length
        self.batch_size = batch_size
        self.info = ModelInfo(name=name or str(config["name"]), version=version or str(config["version"]),
                              arch=config["arch"])
        self.category_labels: list[str] = list(config["category_labels"])
        self.thresholds = np.array([float(config["thresholds"].get(label, 0.5)) for label in self.category_labels],
                                   dtype=np.float32)
        self.calibration = Calibration.from_config(config)  # identity for checkpoints without one
        self.dont_run_on: frozenset[str] = frozenset(config.get("dont_run_on", []))
        # A record with no category above its threshold gets its best one (None: the checkpoint's choice, else on).
        self.at_least_one_category = bool(config.get("at_least_one_category", True)
                                          if at_least_one_category is None else at_least_one_category)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", precision: str = "auto",
                        max_seq_length: int | None = None, batch_size: int = 64, name: str | None = None,
                        version: str | None = None, runtime: str = "torch",
                        at_least_one_category: bool | None = None) -> Predictor:
        device = resolve_device(device)
        model, config = load_checkpoint(path, device=device)
        apply_runtime(model, runtime, device)
        return cls(model, config, checkpoint_dir=Path(path), device=device, precision=precision,
                   max_seq_length=max_seq_length, batch_size=batch_size, name=name, version=version,
                   at_least_one_category=at_least_one_category)

    def predict_proba(self, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
        """Coreness (n, 3) and category (n, C) probabilities, calibrated by the checkpoint's temperatures."""
        return score_texts(self.model, [r.text for r in records], batch_size=self.batch_size, device=self.device,
                           dtype=self.dtype, max_length=self.max_seq_length, calibration=self.calibration)

    def predict_batch(self, records: Sequence[Record]) -> list[ClassificationResult]:
        if not records:
            return []
        coreness, categories = self.predict_proba(records)
        return self.results([record.id for record in records], coreness, categories)

    def count_tokens(self, record: Record) -> int:
        return min(self.model.count_tokens(record.text), self.max_seq_length)

    def result(self, record_id: str, coreness: np.ndarray, categories: np.ndarray) -> ClassificationResult:
        """The result for one record from its probabilities (a row of each :meth:`predict_proba` output)."""
        return self.results([record_id], coreness[None, :], categories[None, :])[0]

    def results(self, ids: Sequence[str], coreness: np.ndarray, categories: np.ndarray) -> list[ClassificationResult]:
        """The results for rows of :meth:`predict_proba` output: the categories above their thresholds (else the
        best one, if ``at_least_one_category``), highest first, ties in label order. numpy selects and orders the
        chosen categories of the whole batch (only those become Python values: a row holds every category's
        score), and the batch's results are validated in one call from plain values; one ``classified_at`` per
        batch. Each result's JSON (:attr:`ClassificationResult.json_bytes`) is written by orjson from the same
        plain values (the same bytes as pydantic's ``model_dump_json``; ~0.6 against ~3 us a result, measured)."""
        classified_at = datetime.now(UTC)
        labels, info = self.category_labels, self.info
        passed = categories >= self.thresholds
        if self.at_least_one_category and categories.shape[1]:
            none = ~passed.any(1)
            passed[none, categories[none].argmax(1)] = True
        rows, cols = np.nonzero(passed)
        scores = categories[rows, cols]
        order = np.lexsort((cols, -scores, rows))  # by row, then highest score, then label order
        chosen: list[list[dict]] = [[] for _ in ids]
        for row, col, score in zip(rows[order].tolist(), cols[order].tolist(), scores[order].tolist(), strict=True):
            chosen[row].append({"label": labels[col], "score": score})
        values = [
            {"id": record_id, "coreness": {"label": CORENESS_LABELS[core_best],
                                           "scores": dict(zip(CORENESS_LABELS, core, strict=True))},
             "categories": cats, "model": info, "classified_at": classified_at, "record_version": None}
            for record_id, core, core_best, cats in zip(ids, coreness.tolist(), coreness.argmax(1).tolist(), chosen,
                                                        strict=True)]
        results = VALIDATE_RESULTS(values)
        model = info.model_dump()

        def plain(value: object) -> dict:
            if value is info:
                return model
            raise TypeError(f"{type(value).__name__} is not JSON")

        for result, value in zip(results, values, strict=True):
            try:
                result.__dict__["json_bytes"] = orjson.dumps(value, default=plain, option=orjson.OPT_UTC_Z)
            except orjson.JSONEncodeError:  # noqa: SIM105 - a lone surrogate: json_bytes raises when a sink asks
                continue
        return results
