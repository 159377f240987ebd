"""``linear``: TF-IDF word uni+bigrams (a learned vocabulary) -> one sparse linear layer per head. The default.

No bottleneck: every vocabulary term has its own weight for every category (an ``EmbeddingBag(mode="sum")``
whose rows are the terms and whose columns are the 3 coreness logits and the category logits), fed with
sublinear TF-IDF weights (``1 + log tf`` times the term's IDF, L2-normalised) through ``per_sample_weights``.
The vocabulary is ``vocabulary.json`` (terms, in row order) beside the weights; IDFs are a buffer in
``model.safetensors``. Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import nn
from tqdm.auto import tqdm

from models.archs.base import ClassifierOutput
from models.archs.sparse_features import DocumentFrequencies, TermIndex, l2_normalised_bags

VOCABULARY_FILE = "vocabulary.json"
DEFAULT_MAX_TERMS = 300_000
DEFAULT_MIN_DF = 2


CHUNK = 1024  # texts featurised at once in training


def chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class EncodedTexts:
    """The :meth:`LinearClassifier.encode` output of many texts (CSR rows: text ``i``'s terms are
    ``ids[offsets[i]:offsets[i + 1]]``), from which batches of texts are cut by index."""

    ids: np.ndarray  # int32 vocabulary rows
    offsets: np.ndarray  # int64, one more than texts
    tf: np.ndarray  # float32 sublinear term frequencies

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The ``forward`` inputs of the texts at ``index``."""
        starts, lengths = self.offsets[index], self.offsets[index + 1] - self.offsets[index]
        bag_starts = np.zeros(len(index), dtype=np.int64)
        np.cumsum(lengths[:-1], out=bag_starts[1:])
        take = np.repeat(starts - bag_starts, lengths) + np.arange(int(lengths.sum()))
        return {"ids": torch.from_numpy(self.ids[take].astype(np.int64)), "offsets": torch.from_numpy(bag_starts),
                "tf": torch.from_numpy(self.tf[take])}


class HeadBias(nn.Module):
    """The bias of one head (the weights live in the shared sparse table)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class LinearClassifier(nn.Module):
    """One-vs-rest logistic regression (categories) and softmax regression (coreness) on TF-IDF features."""

    arch = "linear"

    def __init__(self, num_categories: int, terms: Sequence[str], idf: Sequence[float] | None = None,
                 input_dropout: float = 0.0, max_seq_length: int = 512, *, zero_weights: bool = True) -> None:
        super().__init__()
        if not terms:
            raise ValueError("the linear model needs a non-empty vocabulary")
        self.num_categories = num_categories
        self.terms = list(terms)
        self.index = TermIndex(self.terms)
        self.input_dropout = input_dropout
        self.max_seq_length = max_seq_length
        self.register_buffer("idf", torch.tensor(list(idf) if idf is not None else [1.0] * len(self.terms),
                                                 dtype=torch.float32))
        shape = (len(self.terms), 3 + num_categories)  # zeros to train; left unset when a checkpoint fills them
        self.weights = nn.EmbeddingBag(*shape, mode="sum", sparse=True,
                                       _weight=torch.zeros(shape) if zero_weights else torch.empty(shape))
        self.coreness_head = HeadBias(3)
        self.category_head = HeadBias(num_categories)

    @classmethod
    def from_texts(cls, texts: Iterable[str], num_categories: int, max_terms: int = DEFAULT_MAX_TERMS,
                   min_df: int = DEFAULT_MIN_DF, progress: bool = False, total: int | None = None,
                   **params: Any) -> LinearClassifier:
        """A fresh model whose vocabulary is learned from the training ``texts`` (read once, a chunk at a time)."""
        counter = DocumentFrequencies(params.get("max_seq_length", 512))
        for chunk in chunked(tqdm(texts, total=total, desc="vocabulary", unit="text", disable=not progress,
                                  mininterval=2), CHUNK):
            counter.add(chunk)
        terms, idf = counter.vocabulary(max_terms, min_df)
        if not terms:  # tiny data: every term once
            terms, idf = counter.vocabulary(max_terms, 1)
        return cls(num_categories, terms, idf.tolist(), **params)

    def encode_all(self, texts: Iterable[str], progress: bool = False, total: int | None = None) -> EncodedTexts:
        """:meth:`encode` of many texts, a chunk at a time, kept as compact arrays (CSR rows) to cut batches from:
        training featurises each text once, not once per epoch."""
        ids, offsets, tf = [], [np.zeros(1, dtype=np.int64)], []
        end = 0
        for chunk in chunked(tqdm(texts, total=total, desc="features", unit="text", disable=not progress,
                                  mininterval=2), CHUNK):
            rows, starts, counts = self.index.count(chunk, self.max_seq_length)
            ids.append(rows.astype(np.int32))
            tf.append(np.log(counts.astype(np.float32)) + 1.0)
            offsets.append(np.append(starts[1:], len(rows)) + end)
            end += len(rows)
        return EncodedTexts(np.concatenate(ids) if ids else np.zeros(0, np.int32), np.concatenate(offsets),
                            np.concatenate(tf) if tf else np.zeros(0, np.float32))

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path | None = None) -> LinearClassifier:
        if checkpoint_dir is None:
            raise ValueError("the linear model needs its checkpoint directory (vocabulary.json)")
        path = Path(checkpoint_dir) / VOCABULARY_FILE
        try:
            terms = json.loads(path.read_text(encoding="utf-8"))["terms"]
        except FileNotFoundError:
            raise ValueError(f"{path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a vocabulary file: {exc}") from None
        return cls(len(config["category_labels"]), terms, input_dropout=config.get("input_dropout", 0.0),
                   max_seq_length=config.get("max_seq_length", 512), zero_weights=False)

    def arch_config(self) -> dict[str, Any]:
        return {"vocabulary_size": len(self.terms), "input_dropout": self.input_dropout,
                "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Vocabulary ids of each text's terms (once each), their bag offsets, and sublinear term frequencies."""
        rows, offsets, counts = self.index.count(texts, max_length or self.max_seq_length)
        return {"ids": torch.from_numpy(rows), "offsets": torch.from_numpy(offsets),
                "tf": torch.from_numpy(np.log(counts.astype(np.float32)) + 1.0)}

    def count_tokens(self, text: str) -> int:
        # A record's text has single spaces (models/records/schema.py): its words are counted without splitting it.
        n = min(text.count(" ") + 1 if text else 0, self.max_seq_length)
        return max(1, 2 * n - 1)

    def save_extra(self, out_dir: Path) -> None:
        (out_dir / VOCABULARY_FILE).write_text(json.dumps({"terms": self.terms}, ensure_ascii=False))

    def bag_weights(self, ids: torch.Tensor, offsets: torch.Tensor, tf: torch.Tensor) -> torch.Tensor:
        """Each term's L2-normalised TF-IDF weight in its text (input dropout while training)."""
        weights = tf * self.idf[ids]
        if self.training and self.input_dropout > 0:
            weights = weights * torch.bernoulli(torch.full_like(weights, 1 - self.input_dropout))
        return l2_normalised_bags(weights, offsets)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, tf: torch.Tensor) -> ClassifierOutput:
        logits = self.weights(ids, offsets, per_sample_weights=self.bag_weights(ids, offsets, tf))
        return ClassifierOutput(logits[:, :3] + self.coreness_head.bias, logits[:, 3:] + self.category_head.bias)

    def sgd_step(self, ids: torch.Tensor, offsets: torch.Tensor, tf: torch.Tensor,
                 loss_of: Callable[[ClassifierOutput], torch.Tensor], learning_rate: float,
                 max_bias_grad_norm: float) -> torch.Tensor:
        """One plain SGD step on ``loss_of(self(...))``: the update of autograd + ``torch.optim.SGD`` with the
        biases' gradient clipped to ``max_bias_grad_norm``, in a few array operations. Autograd runs on the
        (batch, outputs) logits only. On CPU the batch is a scipy CSR matrix over its distinct terms: their rows
        of the table are read once, multiplied (forward and backward) and written back, 2-3x less work than
        an ``EmbeddingBag`` backward with a sparse gradient and a scatter-add per occurrence. Returns the loss."""
        table = self.weights.weight
        with torch.no_grad():
            weights = self.bag_weights(ids, offsets, tf)
            if table.device.type == "cpu":
                terms, column = np.unique(ids.numpy(), return_inverse=True)
                batch = csr_matrix((weights.numpy(), column.reshape(-1), np.append(offsets.numpy(), len(ids))),
                                   shape=(len(offsets), len(terms)))
                rows = table.numpy()[terms]
                logits = torch.from_numpy(np.asarray(batch @ rows))
            else:
                logits = self.weights(ids, offsets, per_sample_weights=weights)
        logits.requires_grad_(True)
        core_bias, cat_bias = self.coreness_head.bias, self.category_head.bias
        loss = loss_of(ClassifierOutput(logits[:, :3] + core_bias, logits[:, 3:] + cat_bias))
        # materialize: a batch of extra (coreness-only) records has no category loss, a zero gradient
        grad_logits, grad_core, grad_cat = torch.autograd.grad(loss, [logits, core_bias, cat_bias],
                                                               materialize_grads=True)
        with torch.no_grad():
            norm = torch.sqrt(grad_core.square().sum() + grad_cat.square().sum())
            scale = (max_bias_grad_norm / (norm + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_
            core_bias.sub_(grad_core * scale, alpha=learning_rate)
            cat_bias.sub_(grad_cat * scale, alpha=learning_rate)
            if table.device.type == "cpu":
                table.numpy()[terms] = rows - learning_rate * np.asarray(batch.T @ grad_logits.numpy())
            else:
                lengths = torch.diff(offsets, append=torch.tensor([len(ids)], device=offsets.device))
                bag = torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), lengths)
                table.index_add_(0, ids, grad_logits[bag] * weights[:, None], alpha=-learning_rate)
        return loss.detach()
