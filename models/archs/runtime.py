"""Inference runtimes for transformer encoders: plain PyTorch (``torch``) or dynamic int8 quantisation (``int8``).

``int8`` replaces the encoder's ``nn.Linear`` layers by dynamically quantised ones
(``torch.ao.quantization.quantize_dynamic``): int8 weights, activations quantised per batch. CPU only; on
another device the model runs as is. ``auto`` is ``int8`` on CPU and ``torch`` elsewhere.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "torch", "int8")


def resolve_runtime(runtime: str, device: str) -> str:
    """The runtime that ``runtime`` means on ``device`` (``torch`` or ``int8``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    on_cpu = device.split(":")[0] == "cpu"
    if runtime == "auto":
        return "int8" if on_cpu else "torch"
    if runtime == "int8" and not on_cpu:
        log.warning("runtime int8 is for CPU; running %s in plain PyTorch", device)
        return "torch"
    return runtime


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """``module`` with its ``nn.Linear`` layers dynamically quantised to int8 (a new module; eval mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(module.eval(), {nn.Linear}, dtype=torch.qint8)


def apply_runtime(model: nn.Module, runtime: str, device: str) -> str:
    """Switch the encoder of ``model`` (attribute ``encoder``; a model without one is left alone) to ``runtime``
    in place; return the runtime in effect."""
    effective = resolve_runtime(runtime, device)
    encoder = getattr(model, "encoder", None)
    if effective == "int8" and encoder is not None:
        if hasattr(encoder, "set_runtime"):
            encoder.set_runtime("int8")
        else:
            model.encoder = quantize_linear_int8(encoder)
    return effective if encoder is not None else "torch"
