"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and (transformer) tokenizer files.

Nothing is ever pickled or unpickled. Anything missing, corrupt or inconsistent raises :class:`CheckpointError`
with a message that names the file and the problem.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.archs import base
from models.archs.calibration import Calibration

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REQUIRED_KEYS = ("arch", "name", "version", "coreness_labels", "category_labels", "thresholds")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing, corrupt, or not matching its config)."""


def architecture(arch: str) -> type[nn.Module]:
    """The model class registered as ``arch`` (:data:`models.archs.base.ARCHS`)."""
    try:
        return base.architecture(arch)
    except base.UnknownArchError as exc:
        raise CheckpointError(str(exc)) from None


def save_checkpoint(model: nn.Module, config: dict[str, Any], out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` and ``config`` (plus the model's arch params) to ``out_dir``, replacing it atomically."""
    out_dir = Path(out_dir)
    full = {"arch": model.arch, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **config, **model.arch_config()}
    missing = [key for key in REQUIRED_KEYS if key not in full]
    if missing:
        raise ValueError(f"checkpoint config lacks {', '.join(missing)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "arch": model.arch})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        else:
            model.save_extra(staging)
        (staging / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}-old-{datetime.now(UTC):%Y%m%d%H%M%S%f}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed and checked ``config.json`` of the checkpoint at ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} not found (expected a directory with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE})")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{config_path} lacks required key(s): {', '.join(missing)}")
    architecture(config["arch"])
    labels = config["category_labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise CheckpointError(f"{config_path}: category_labels must be a list of strings")
    if list(config["coreness_labels"]) != ["core", "non_core", "rejected"]:
        raise CheckpointError(f"{config_path}: coreness_labels must be [core, non_core, rejected], "
                              f"got {config['coreness_labels']}")
    unknown = set(config["thresholds"]) - set(labels)
    if unknown:
        raise CheckpointError(f"{config_path}: thresholds for unknown categories {sorted(unknown)}")
    try:
        Calibration.from_config(config)  # none (older checkpoints): the identity
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    return config


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of the checkpoint at ``path`` (in eval mode, on ``device``) and return it with its config."""
    path = Path(path)
    config = read_checkpoint_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated: {exc}") from None
    try:
        model = architecture(config["arch"]).from_config(config, path)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot rebuild the {config['arch']} model of {path} from its config: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())  # one line: "size mismatch for category_head.weight: ..."
        raise CheckpointError(f"{weights} does not match {path / CONFIG_FILE}: {detail}") from None
    return model.to(device).eval(), config

