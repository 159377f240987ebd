"""Where the stream processor gets its model: a local checkpoint directory or ``registry://NAME@ENV``.

The processor calls :meth:`ModelSource.current` once per batch, so a new model is only ever swapped in
between batches.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import Settings
from streaming.metrics import set_model_info

if TYPE_CHECKING:
    from models.predictor import Predictor

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says why."""


class ModelSource:
    """Loads the configured model and hands out the live predictor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._predictor: Predictor | None = None
        self._dont_run_on: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def load(self) -> Predictor:
        """Load the configured model (first call) and return it."""
        with self._lock:
            if self._predictor is None:
                self._predictor = self._load_local(Path(self.settings.model.model))
                self._announce(self._predictor)
            return self._predictor

    def current(self) -> Predictor:
        """The predictor to use for the next batch."""
        return self._predictor if self._predictor is not None else self.load()

    def dont_run_on(self) -> frozenset[str]:
        """Record sources the live model must not classify."""
        return self._dont_run_on

    def start_reloading(self) -> None:
        """Start polling for new versions (no-op for a local checkpoint)."""

    def stop(self) -> None:
        """Stop polling."""

    def _load_local(self, path: Path) -> Predictor:
        from models.predictor import Predictor

        if not path.is_dir():
            raise ModelLoadError(f"model checkpoint directory not found: {path}")
        model = self.settings.model
        try:
            return Predictor.from_checkpoint(
                path, device=model.device, precision=model.precision, max_seq_length=model.max_seq_length,
                batch_size=model.inference_batch_size,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc

    @staticmethod
    def _announce(predictor: Predictor) -> None:
        info = predictor.info
        set_model_info(info.name, info.version, info.arch, predictor.device)
        log.info("model in service", extra={"model": info.name, "version": info.version, "device": predictor.device})
