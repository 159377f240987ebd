"""Where the stream processor gets its model: a local checkpoint directory or ``registry://NAME@ENV``.

A registry model is downloaded to ``settings.model.cache_dir/NAME/VERSION`` and every file's sha256 is checked
against the manifest before anything is loaded (a cached copy too, on every load). The URI's name and
environment, and every name, version and file path the registry returns, follow the registry naming rule
(:mod:`models.registry.names`); anything else is refused before a path is built.
With ``reload_interval_s > 0`` a background thread polls the
alias; a new version is downloaded, verified and loaded in the background and handed over by :meth:`current`,
which the processor calls once per batch, so a swap only ever happens between batches.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from config.settings import Settings
from models.registry.s3 import S3Error
from models.registry.store import (
    REGISTRY_SCHEME,
    IntegrityError,
    Manifest,
    ModelRegistry,
    RegistryError,
    parse_registry_uri,
)

if TYPE_CHECKING:
    from models.inference.predictor import Predictor

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says why."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    dont_run_on: frozenset[str]
    manifest: Manifest | None = None  # None for a local checkpoint

    @property
    def version(self) -> str:
        return self.predictor.info.version


class ModelSourceHooks(Protocol):
    """What a model source reports as it works (the stream processor turns it into metrics)."""

    def in_service(self, name: str, version: str, arch: str, device: str) -> None:
        """A model version became the live one."""

    def reloaded(self, ok: bool) -> None:
        """A hot reload finished: swapped in (``ok``) or failed, keeping the old model."""


class NoHooks:
    """The default: reports go nowhere."""

    def in_service(self, name: str, version: str, arch: str, device: str) -> None:
        pass

    def reloaded(self, ok: bool) -> None:
        pass


class ModelSource:
    """Loads the configured model, hands out the live predictor and hot-reloads registry aliases."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None,
                 hooks: ModelSourceHooks | None = None) -> None:
        self.settings = settings
        self.hooks: ModelSourceHooks = hooks or NoHooks()
        self.uri = settings.model.model
        self.ref: tuple[str, str] | None = None
        self._uri_error: str | None = None  # raised by load(), where the caller expects ModelLoadError
        if self.uri.startswith(REGISTRY_SCHEME):
            try:
                self.ref = parse_registry_uri(self.uri)
            except RegistryError as exc:
                self._uri_error = str(exc)
        self.registry = registry or (ModelRegistry(settings.registry) if self.ref else None)
        self._live: LoadedModel | None = None
        self._pending: LoadedModel | None = None
        self._rejected: str | None = None  # a version that failed verification: not retried until the alias moves
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what the processor calls

    def load(self) -> Predictor:
        """Load the configured model (first call only) and return the live predictor."""
        with self._lock:
            if self._live is None:
                if self._uri_error:
                    raise ModelLoadError(self._uri_error)
                self._live = self._load_registry() if self.ref else self._load_local(Path(self.uri))
                self._announce(self._live)
            return self._live.predictor

    def current(self) -> Predictor:
        """The predictor for the next batch; swaps in a reloaded model if one is ready."""
        if self._live is None:
            return self.load()
        if self._pending is not None:
            with self._lock:
                if self._pending is not None:
                    old, self._live, self._pending = self._live, self._pending, None
                    self.hooks.reloaded(True)
                    log.info("model swapped", extra={"old_version": old.version, "new_version": self._live.version})
                    self._announce(self._live)
        return self._live.predictor

    def dont_run_on(self) -> frozenset[str]:
        """Record sources the live model must not classify."""
        return self._live.dont_run_on if self._live else frozenset()

    @property
    def manifest(self) -> Manifest | None:
        """The registry manifest of the live model (None for a local checkpoint or before loading)."""
        return self._live.manifest if self._live else None

    def start_reloading(self) -> None:
        """Poll the registry alias every ``reload_interval_s`` in a daemon thread (registry models only)."""
        interval = self.settings.model.reload_interval_s
        if self.ref is None or interval <= 0 or self._thread is not None:
            return
        self.load()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(interval,), name="model-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a reload in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ reloading

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_for_update()

    def check_for_update(self) -> bool:
        """Look at the alias once; load a new version in the background. True if one is ready to swap in."""
        assert self.ref is not None and self.registry is not None
        name, env = self.ref
        try:
            manifest = self.registry.resolve(name, env)
            latest = self._pending or self._live
            if latest is not None and manifest.version == latest.version:
                self._refresh_metadata(manifest)
                return False
            if manifest.version == self._rejected:
                return False
            log.info("new model version in the registry", extra={"model": name, "env": env,
                                                                  "version": manifest.version})
            loaded = self._load_manifest(manifest)
        except Exception as exc:  # noqa: BLE001 - the reload thread must survive anything and keep the old model
            if isinstance(exc, ModelLoadError | IntegrityError):
                self._rejected = getattr(exc, "version", None) or self._rejected
            self.hooks.reloaded(False)
            log.error("model reload failed; keeping the current model", extra={"model": name, "env": env,
                                                                               "error": str(exc)})
            return False
        with self._lock:
            self._pending = loaded
        return True

    def _refresh_metadata(self, manifest: Manifest) -> None:
        """Apply a changed ``dont_run_on`` list of the version in service without reloading it."""
        with self._lock:
            for slot in ("_pending", "_live"):
                loaded: LoadedModel | None = getattr(self, slot)
                if loaded is not None and loaded.version == manifest.version:
                    sources = frozenset(manifest.metadata.dont_run_on) | loaded.predictor.dont_run_on
                    if sources != loaded.dont_run_on:
                        log.info("dont_run_on changed", extra={"version": manifest.version, "sources": sorted(sources)})
                        setattr(self, slot, dataclasses.replace(loaded, dont_run_on=sources, manifest=manifest))

    # ------------------------------------------------------------------ loading

    def _load_registry(self) -> LoadedModel:
        assert self.ref is not None and self.registry is not None
        name, env = self.ref
        try:
            manifest = self.registry.resolve(name, env)
        except (RegistryError, S3Error) as exc:
            raise ModelLoadError(f"cannot load {self.uri}: {exc}") from None
        return self._load_manifest(manifest)

    def _load_manifest(self, manifest: Manifest) -> LoadedModel:
        assert self.registry is not None
        device = self._device()
        if manifest.metadata.require_gpu and not device.startswith("cuda"):
            raise _version_error(
                manifest,
                f"{manifest.name} {manifest.version} requires a GPU (require_gpu) but would run on {device}; "
                f"run it on a GPU host or `corestream-train metadata {manifest.name} {manifest.version} "
                "--no-require-gpu`",
            )
        try:
            name = self.ref[0] if self.ref else manifest.name  # the checked name, never one taken from a document
            path, manifest = self.registry.download(name, manifest.version, self.settings.model.cache_dir)
        except IntegrityError as exc:
            raise _version_error(manifest, f"cannot load {self.uri}: {exc}") from None
        except (RegistryError, S3Error) as exc:
            raise ModelLoadError(f"cannot load {self.uri}: {exc}") from None
        predictor = self._predictor(path, name=manifest.name, version=manifest.version)
        sources = frozenset(manifest.metadata.dont_run_on) | predictor.dont_run_on
        return LoadedModel(predictor=predictor, dont_run_on=sources, manifest=manifest)

    def _load_local(self, path: Path) -> LoadedModel:
        if not path.is_dir():
            raise ModelLoadError(f"model checkpoint directory not found: {path} (set CORESTREAM_MODEL__MODEL to a "
                                 "checkpoint directory or registry://NAME@ENV)")
        predictor = self._predictor(path)
        return LoadedModel(predictor=predictor, dont_run_on=predictor.dont_run_on)

    def _predictor(self, path: Path, name: str | None = None, version: str | None = None) -> Predictor:
        from models.inference.predictor import Predictor

        model = self.settings.model
        try:
            return Predictor.from_checkpoint(
                path, device=model.device, precision=model.precision, max_seq_length=model.max_seq_length,
                batch_size=model.inference_batch_size, name=name, version=version, runtime=model.runtime,
                at_least_one_category=model.at_least_one_category,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc

    def _device(self) -> str:
        from models.inference.device import resolve_device

        try:
            return resolve_device(self.settings.model.device)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None

    def _announce(self, loaded: LoadedModel) -> None:
        info, device = loaded.predictor.info, loaded.predictor.device
        self.hooks.in_service(info.name, info.version, info.arch, device)
        log.info("model in service", extra={"model": info.name, "version": info.version, "device": device,
                                            "dont_run_on": sorted(loaded.dont_run_on)})


def _version_error(manifest: Manifest, message: str) -> ModelLoadError:
    """A load error that is permanent for this version (the reload thread does not retry it)."""
    error = ModelLoadError(message)
    error.version = manifest.version  # type: ignore[attr-defined]
    return error
