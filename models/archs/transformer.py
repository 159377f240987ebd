"""``transformer``: a Hugging Face encoder from a local path, mean pooling, coreness and category heads.

A checkpoint holds the encoder config (in ``config.json`` under ``encoder_config``), the tokenizer files and
all weights in one ``model.safetensors``, so it loads with no hub access and no base-model path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from models.archs.base import ClassifierOutput

log = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token embeddings, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)


def load_encoder(base_model: str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Encoder and tokenizer of a local Hugging Face model directory (config.json, tokenizer files and, normally,
    weights). A directory without weights gives a randomly initialised encoder of that config (tiny test models)."""
    base = Path(base_model)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base model {base} is not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    if any((base / name).exists() for name in WEIGHT_FILES + ("pytorch_model.bin",)):
        encoder = AutoModel.from_pretrained(str(base), local_files_only=True, use_safetensors=True)
    else:
        log.warning("base model %s has no weights: initialising the encoder randomly", base)
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(base), local_files_only=True))
    return encoder, tokenizer


def encoder_from_config(encoder_config: dict[str, Any], checkpoint_dir: Path) -> tuple[nn.Module,
                                                                                         PreTrainedTokenizerBase]:
    """An (untrained) encoder of ``encoder_config`` and the tokenizer saved in ``checkpoint_dir``."""
    encoder_config = dict(encoder_config)
    model_type = encoder_config.pop("model_type")
    encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **encoder_config))
    return encoder, AutoTokenizer.from_pretrained(str(checkpoint_dir), local_files_only=True)


def encoder_config_dict(encoder: nn.Module) -> dict[str, Any]:
    """The encoder's config as saved in a checkpoint (without paths and versions)."""
    encoder_config = encoder.config.to_dict()
    for key in ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"):
        encoder_config.pop(key, None)
    return encoder_config


class TransformerClassifier(nn.Module):
    """Encoder -> mean pooling -> dropout -> two linear heads."""

    arch = "transformer"

    def __init__(self, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, num_categories: int,
                 dropout: float = 0.1, max_seq_length: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.num_categories = num_categories
        self.dropout_p = dropout
        self.max_seq_length = max_seq_length
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.coreness_head = nn.Linear(hidden, 3)
        self.category_head = nn.Linear(hidden, num_categories)

    @classmethod
    def from_pretrained(cls, base_model: str | Path, num_categories: int, **params: Any) -> TransformerClassifier:
        """Start from a local encoder directory (config.json, tokenizer files and, normally, weights).

        A directory without weights gives a randomly initialised encoder of that config (tiny test models).
        """
        encoder, tokenizer = load_encoder(base_model)
        params.setdefault("max_seq_length", min(256, getattr(encoder.config, "max_position_embeddings", 512)))
        return cls(encoder, tokenizer, num_categories, **params)

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_dir: Path) -> TransformerClassifier:
        """Rebuild from a checkpoint: encoder config from ``config.json``, tokenizer files beside it."""
        encoder, tokenizer = encoder_from_config(config["encoder_config"], checkpoint_dir)
        return cls(encoder, tokenizer, len(config["category_labels"]), dropout=config.get("dropout", 0.1),
                   max_seq_length=config.get("max_seq_length", 256))

    def arch_config(self) -> dict[str, Any]:
        encoder_config = encoder_config_dict(self.encoder)
        return {"encoder_config": encoder_config, "dropout": self.dropout_p, "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length or self.max_seq_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def count_tokens(self, text: str) -> int:
        """Word pieces are about 1.3 per word in scientific English, plus [CLS] and [SEP]."""
        return min(self.max_seq_length, int(len(text.split()) * 1.3) + 2)

    def save_extra(self, out_dir: Path) -> None:
        self.tokenizer.save_pretrained(str(out_dir))

    def text_encoder(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """The (fine-tuned) encoder and its tokenizer, to start another model from."""
        return self.encoder, self.tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.dropout(mean_pool(hidden, attention_mask))
        return ClassifierOutput(self.coreness_head(pooled), self.category_head(pooled))
