"""``hybrid``: a frozen sentence encoder and TF-IDF n-grams side by side, linear heads on both.

Input of the heads: the encoder's mean-pooled, L2-normalised embedding of the first ``max_seq_length`` tokens
concatenated with the record's L2-normalised TF-IDF vector (word 1-2-grams over a fitted vocabulary). The
encoder is never trained, so embeddings can be cached (``models.archs.embedding_cache``) and the heads retrained in
seconds. A checkpoint holds the encoder config and tokenizer, ``vocabulary.json``, and in ``model.safetensors``
the encoder weights, the idf vector and the heads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from models.archs.base import ClassifierOutput
from models.archs.runtime import quantize_linear_int8
from models.archs.sparse_features import TfidfFeaturizer
from models.archs.transformer import encoder_config_dict, encoder_from_config, load_encoder, mean_pool

DEFAULT_MAX_SEQ_LENGTH = 128


class FrozenEncoder(nn.Module):
    """A Hugging Face encoder used as a fixed function: texts -> normalised mean-pooled embeddings."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.runtime = "torch"
        self._id: str | None = None
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def encoder_id(self) -> str:
        """sha256 of the weights (fp32) and the runtime: the identity of the embeddings this encoder gives."""
        if self._id is None:
            digest = hashlib.sha256()
            weights = self.model.state_dict()
            for key in sorted(weights):
                digest.update(key.encode())
                digest.update(weights[key].detach().float().cpu().contiguous().numpy().tobytes())
            self._id = digest.hexdigest()[:32]
        return f"{self._id}-{self.runtime}"

    def set_runtime(self, runtime: str) -> None:
        """Switch to ``int8`` (dynamic int8 Linear layers, CPU; for inference: not saved, not reversible)."""
        if runtime == self.runtime:
            return
        if runtime != "int8":
            raise ValueError(f"cannot switch a {self.runtime} encoder to {runtime!r}")
        _ = self.encoder_id  # hash the fp32 weights before they are replaced
        self.model = quantize_linear_int8(self.model)
        self.runtime = runtime

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length or self.max_seq_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden.float(), attention_mask), dim=-1)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, device: str = "cpu") -> np.ndarray:
        """Embeddings (n, dim) of ``texts``, batched by length (little padding), in input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = self.tokenize([texts[i] for i in idx])
            out[idx] = self(**{k: v.to(device) for k, v in inputs.items()}).cpu().numpy()
        self.model.train(was_training)
        return out


class HybridClassifier(nn.Module):
    """Frozen encoder embedding (dense) + TF-IDF vector (sparse) -> coreness (3) and category (C) logits.

    Each head is ``W_dense @ embedding + W_sparse @ tfidf + b``; ``W_sparse`` is an ``EmbeddingBag(mode="sum")``
    fed with the TF-IDF weights, so a record costs only its own n-grams.
    """

    arch = "hybrid"

    def __init__(self, encoder: FrozenEncoder, featurizer: TfidfFeaturizer, num_categories: int,
                 max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH) -> None:
        super().__init__()
        self.encoder = encoder
        self.featurizer = featurizer
        self.num_categories = num_categories
        self.max_seq_length = max_seq_length
        self.register_buffer("idf", featurizer.idf.clone())
        outputs = 3 + num_categories
        self.dense_head = nn.Linear(encoder.dim, outputs)
        self.sparse_head = nn.EmbeddingBag(len(featurizer), outputs, mode="sum", sparse=True)
        nn.init.zeros_(self.sparse_head.weight)

    @classmethod
    def from_pretrained(cls, base_model: str | Path, num_categories: int, vocabulary: list[str], idf: np.ndarray,
                        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, max_words: int = 512) -> HybridClassifier:
        model, tokenizer = load_encoder(base_model)
        return cls(FrozenEncoder(model, tokenizer, max_seq_length), TfidfFeaturizer(vocabulary, idf, max_words),
                   num_categories, max_seq_length)

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path) -> HybridClassifier:
        model, tokenizer = encoder_from_config(config["encoder_config"], checkpoint_dir)
        vocabulary, max_words = TfidfFeaturizer.read_vocabulary(checkpoint_dir)
        max_seq_length = int(config.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
        featurizer = TfidfFeaturizer(vocabulary, np.ones(len(vocabulary), dtype=np.float32), max_words)
        return cls(FrozenEncoder(model, tokenizer, max_seq_length), featurizer, len(config["category_labels"]),
                   max_seq_length)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.featurizer.idf = self.idf.detach().cpu().clone()  # the featurizer weighs with the checkpoint's idf
        return result

    def arch_config(self) -> dict[str, Any]:
        return {"encoder_config": encoder_config_dict(self.encoder.model),
                "max_seq_length": self.max_seq_length, "sparse_features": len(self.featurizer),
                "embedding_dim": self.encoder.dim}

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        length = min(max_length or self.max_seq_length, self.max_seq_length)  # as the heads were trained
        return {**self.encoder.tokenize(texts, length), **self.featurizer.featurize(texts)}

    def count_tokens(self, text: str) -> int:
        """Word pieces are about 1.3 per word in scientific English, plus [CLS] and [SEP]."""
        return min(self.max_seq_length, int(len(text.split()) * 1.3) + 2)

    def save_extra(self, out_dir: Path) -> None:
        self.encoder.tokenizer.save_pretrained(str(out_dir))
        self.featurizer.save(out_dir)

    def text_encoder(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """The frozen encoder and its tokenizer, to start another model from."""
        return self.encoder.model, self.encoder.tokenizer

    def heads(self, embeddings: torch.Tensor, sparse_ids: torch.Tensor, sparse_offsets: torch.Tensor,
              sparse_weights: torch.Tensor) -> ClassifierOutput:
        """Logits from precomputed embeddings (training from the cache) and TF-IDF inputs."""
        logits = self.dense_head(embeddings) + self.sparse_head(sparse_ids, sparse_offsets,
                                                                per_sample_weights=sparse_weights)
        return ClassifierOutput(logits[:, :3], logits[:, 3:])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sparse_ids: torch.Tensor,
                sparse_offsets: torch.Tensor, sparse_weights: torch.Tensor) -> ClassifierOutput:
        return self.heads(self.encoder(input_ids, attention_mask), sparse_ids, sparse_offsets, sparse_weights)
