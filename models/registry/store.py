"""Model registry on S3: immutable versions, per-environment aliases with history, verified downloads.

Layout under ``s3://{bucket}/{prefix}``::

    models/{name}/{version}/            checkpoint files + manifest.json (sha256/size of every file, ...)
    models/{name}/aliases/{env}.json    current version of an environment, previous versions, history

Names, versions and environments follow one rule (:mod:`models.registry.names`), checked before any key or
local path is built; documents read back (manifests, aliases) are checked against it too, and a manifest must
name the model and version it is stored under and list at least one file.
Versions are ``v1``, ``v2``, ... A push claims its id with a conditional put (``If-None-Match: *``) so two
pushers never share a version; the manifest is written last, so a version without one is incomplete and
invisible. Alias and metadata updates are optimistic (``If-Match`` on the ETag) and retried.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, ValidationError, field_validator

from config.settings import RegistrySettings
from models.registry.names import (
    InvalidNameError,
    RegistryError,
    check_name,
    check_relative_file,
    check_version,
    file_parts,
    path_under,
    shown,
    version_number,
)
from models.registry.s3 import is_not_found, is_precondition_failed, s3_client, s3_errors

__all__ = ["REGISTRY_SCHEME", "InvalidNameError", "IntegrityError", "LabelMismatchError", "Manifest",
           "ModelRegistry", "RegistryError", "VersionMetadata", "parse_registry_uri"]

log = logging.getLogger(__name__)

REGISTRY_SCHEME = "registry://"
MANIFEST = "manifest.json"
CLAIM = "_claim.json"
_UPDATE_ATTEMPTS = 5


class IntegrityError(RegistryError):
    """A downloaded file does not match its manifest entry."""


class LabelMismatchError(RegistryError):
    """The version to promote has other label sets than the one in service."""


class FileEntry(BaseModel):
    sha256: str
    size: int


class VersionMetadata(BaseModel):
    """Mutable per-version settings honoured by the stream processor."""

    dont_run_on: list[str] = Field(default_factory=list)
    require_gpu: bool = False
    profiles: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    name: str
    version: str
    arch: str
    coreness_labels: list[str]
    category_labels: list[str]
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    trained_at: str | None = None
    created_at: datetime
    creator: str
    files: dict[str, FileEntry]
    metadata: VersionMetadata = Field(default_factory=VersionMetadata)

    # Local checkpoints (backfill) have free-form versions, so both follow the name rule here; the registry
    # additionally requires the manifest's version to be the ``vN`` it is stored under (ModelRegistry.manifest).
    name_rule = field_validator("name")(lambda value: check_name(value))
    version_rule = field_validator("version")(lambda value: check_name(value, "version"))

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        if not files:
            raise ValueError("the manifest lists no files")
        for relative in files:
            check_relative_file(relative)
        return files


class AliasEvent(BaseModel):
    action: Literal["promote", "demote"]
    version: str
    replaced: str | None
    at: datetime
    by: str


class Alias(BaseModel):
    name: str
    env: str
    version: str
    updated_at: datetime
    updated_by: str
    previous: list[str] = Field(default_factory=list)  # versions to demote back to, most recent last
    history: list[AliasEvent] = Field(default_factory=list)

    name_rule = field_validator("name")(lambda value: check_name(value))
    env_rule = field_validator("env")(lambda value: check_name(value, "environment"))
    version_rule = field_validator("version")(lambda value: check_version(value))
    previous_rule = field_validator("previous")(lambda values: [check_version(v) for v in values])


def parse_registry_uri(uri: str) -> tuple[str, str]:
    """``registry://NAME@ENV`` -> ``(NAME, ENV)``, both checked against the naming rule."""
    body = uri[len(REGISTRY_SCHEME):] if uri.startswith(REGISTRY_SCHEME) else ""
    name, _, env = body.partition("@")
    if not name or not env:
        raise RegistryError(f"model URI must look like registry://NAME@ENV, got {shown(uri)}")
    return check_name(name), check_name(env, "environment")


def default_creator(settings: RegistrySettings) -> str:
    if settings.creator:
        return settings.creator
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_files(model_dir: Path) -> dict[str, FileEntry]:
    """Every file under ``model_dir`` (relative POSIX path -> sha256, size), the manifest excluded."""
    files = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if relative != MANIFEST:
            files[relative] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return files


def build_manifest(model_dir: Path, name: str, version: str, creator: str,
                   metadata: VersionMetadata | None = None) -> Manifest:
    """The manifest of a local checkpoint directory (its config.json read by ``models.archs.checkpoint``)."""
    from models.archs.checkpoint import read_checkpoint_config

    check_name(name), check_name(version, "model version")
    config = read_checkpoint_config(model_dir)
    return Manifest(
        name=name, version=version, arch=str(config.get("arch", "unknown")),
        coreness_labels=list(config.get("coreness_labels", [])),
        category_labels=list(config.get("category_labels", [])),
        metrics=dict(config.get("metrics") or {}), data_fingerprint=config.get("data_fingerprint"),
        trained_at=config.get("created_at"), created_at=datetime.now(UTC), creator=creator,
        files=checkpoint_files(model_dir), metadata=metadata or VersionMetadata(),
    )


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Raise :class:`IntegrityError` unless ``directory`` holds exactly the manifest's files (size and sha256)."""
    if not manifest.files:
        raise IntegrityError(f"{manifest.name} {manifest.version}: the manifest lists no files")
    extra = set(checkpoint_files_names(directory)) - set(manifest.files)
    if extra:
        raise IntegrityError(f"{manifest.name} {manifest.version}: {len(extra)} file(s) not in the manifest, "
                             f"e.g. {shown(sorted(extra)[0])}")
    for relative, entry in manifest.files.items():
        path = directory.joinpath(*file_parts(relative))
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{manifest.name} {manifest.version}: file {relative} is missing")
        digest = sha256_file(path)
        if digest != entry.sha256 or path.stat().st_size != entry.size:
            raise IntegrityError(
                f"{manifest.name} {manifest.version}: sha256 mismatch for {relative}: manifest says "
                f"{entry.sha256[:16]}..., file has {digest[:16]}...; refusing to load it"
            )


def checkpoint_files_names(directory: Path) -> list[str]:
    """Relative POSIX paths of the files and links under ``directory``, the manifest excluded."""
    found = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    return [relative for relative in found if relative != MANIFEST]


def label_differences(old: Manifest, new: Manifest) -> list[str]:
    """Human-readable differences between the label sets of two versions (empty if the same)."""
    out = []
    for field in ("coreness_labels", "category_labels"):
        before, after = set(getattr(old, field)), set(getattr(new, field))
        if before != after:
            added, removed = sorted(after - before), sorted(before - after)
            out.append(f"{field}: +{len(added)} {added[:5]} -{len(removed)} {removed[:5]}")
    return out


class ModelRegistry:
    """Push, promote, demote, list and download model versions in an S3 bucket."""

    def __init__(self, settings: RegistrySettings, client: Any | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            with s3_errors("registry", self.settings.endpoint_url):
                self._client = s3_client(self.settings)
        return self._client

    # ------------------------------------------------------------------ keys and raw objects

    def key(self, name: str, *parts: str) -> str:
        """The S3 key of ``models/{name}/{parts...}`` under the configured prefix (``name`` checked)."""
        return self.prefix + "/".join(("models", check_name(name), *parts))

    def _get_json(self, key: str) -> tuple[dict[str, Any], str] | None:
        """``(document, etag)`` or None if the key does not exist."""
        with s3_errors(f"reading s3://{self.bucket}/{key}", self.settings.endpoint_url):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if is_not_found(exc):
                    return None
                raise
            try:
                return json.loads(response["Body"].read()), response["ETag"]
            except ValueError:
                raise RegistryError(f"registry document s3://{self.bucket}/{key} is not JSON; refusing it") from None

    def _put_json(self, key: str, document: BaseModel | dict[str, Any], *, etag: str | None = None,
                  create: bool = False) -> bool:
        """Write ``document``; with ``etag``/``create`` only if unchanged/absent. False if the condition failed."""
        body = document.model_dump_json(indent=2) if isinstance(document, BaseModel) else json.dumps(document)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"} if create else {}
        with s3_errors(f"writing s3://{self.bucket}/{key}", self.settings.endpoint_url):
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body.encode(),
                                       ContentType="application/json", **condition)
            except ClientError as exc:
                if condition and is_precondition_failed(exc):
                    return False
                raise
        return True

    def _list_keys(self, prefix: str) -> list[str]:
        with s3_errors(f"listing s3://{self.bucket}/{prefix}", self.settings.endpoint_url):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Model names that have at least one complete version."""
        keys = self._list_keys(self.prefix + "models/")
        found = {key[len(self.prefix):].split("/")[1] for key in keys if key.endswith("/" + MANIFEST)}
        return sorted(name for name in found if _is_name(name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        base = self.key(name) + "/"
        versions = []
        for key in self._list_keys(base):
            parts = key[len(base):].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and version_number(parts[0]) is not None:
                versions.append(parts[0])
        return sorted(versions, key=lambda v: int(v[1:]))

    def require_versions(self, name: str) -> list[str]:
        """The versions of ``name``; :class:`RegistryError` naming the known models if it has none."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"unknown model {name!r} in s3://{self.bucket}/{self.prefix} (known models: {known})")
        return versions

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest stored under ``models/{name}/{version}``; it must name that model and version."""
        check_name(name), check_version(version)
        found = self._get_json(self.key(name, version, MANIFEST))
        if found is None:
            versions = self.require_versions(name)
            raise RegistryError(f"unknown version {version!r} of model {name!r} (versions: {', '.join(versions)})")
        return self._stored_manifest(found[0], name, version)

    def _stored_manifest(self, document: dict[str, Any], name: str, version: str) -> Manifest:
        """A manifest document read from ``models/{name}/{version}``, which it must name."""
        manifest: Manifest = self._parse(Manifest, document, f"{name} {version} manifest")
        if (manifest.name, manifest.version) != (name, version):
            raise RegistryError(f"registry document {name} {version} manifest is invalid: it names "
                                f"{shown(manifest.name)} {shown(manifest.version)}; refusing it")
        return manifest

    def alias(self, name: str, env: str) -> Alias:
        check_name(name), check_name(env, "environment")
        found = self._get_json(self.key(name, "aliases", f"{env}.json"))
        if found is None:
            self.require_versions(name)
            envs = ", ".join(self.aliases(name)) or "none"
            raise RegistryError(f"model {name!r} has no version in environment {env!r} (environments set: {envs})")
        alias: Alias = self._parse(Alias, found[0], f"{name} alias {env}")
        if (alias.name, alias.env) != (name, env):
            raise RegistryError(f"registry document {name} alias {env} is invalid: it names "
                                f"{shown(alias.name)}@{shown(alias.env)}; refusing it")
        return alias

    def aliases(self, name: str) -> dict[str, Alias]:
        out = {}
        for key in self._list_keys(self.key(name, "aliases") + "/"):
            if key.endswith(".json") and (found := self._get_json(key)):
                alias = self._parse(Alias, found[0], key)
                out[alias.env] = alias
        return out

    def resolve(self, name: str, env: str) -> Manifest:
        """The manifest of the version ``env`` points to."""
        return self.manifest(name, self.alias(name, env).version)

    @staticmethod
    def _parse(model: type[BaseModel], data: dict[str, Any], what: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error.get("loc", ())) or "document"
            raise RegistryError(f"registry document {what} is invalid: {where}: {error['msg']}") from None

    # ------------------------------------------------------------------ writing

    def push(self, model_dir: str | Path, name: str, *, creator: str | None = None,
             metadata: VersionMetadata | None = None) -> Manifest:
        """Upload a checkpoint directory as a new immutable version of ``name``."""
        from models.archs.checkpoint import CheckpointError

        model_dir = Path(model_dir)
        check_name(name)
        if not model_dir.is_dir():
            raise RegistryError(f"model directory not found: {model_dir}")
        creator = creator or default_creator(self.settings)
        try:
            manifest = build_manifest(model_dir, name, "v0", creator, metadata)
        except CheckpointError as exc:
            raise RegistryError(f"{model_dir} is not a valid checkpoint: {exc}") from None
        version = self._claim_version(name, creator)
        manifest.version = version
        with s3_errors(f"uploading {model_dir} to {name} {version}", self.settings.endpoint_url):
            for relative in manifest.files:
                self.client.upload_file(str(model_dir / relative), self.bucket, self.key(name, version, relative))
        if not self._put_json(self.key(name, version, MANIFEST), manifest, create=True):
            raise RegistryError(f"{name} {version} already has a manifest; versions are immutable")
        log.info("pushed model version", extra={"model": name, "version": version, "files": len(manifest.files)})
        return manifest

    def _claim_version(self, name: str, creator: str) -> str:
        """Reserve the next free ``vN`` with a conditional put, so concurrent pushes get distinct ids."""
        base = self.key(name) + "/"
        taken = {key[len(base):].split("/")[0] for key in self._list_keys(base)}
        number = max((n for v in taken if (n := version_number(v)) is not None), default=0) + 1
        claim = {"creator": creator, "claimed_at": datetime.now(UTC).isoformat(), "token": uuid.uuid4().hex}
        for _ in range(100):
            key = self.key(name, f"v{number}", CLAIM)
            # Reading the claim back also catches a store that ignores If-None-Match (last writer wins there).
            if self._put_json(key, claim, create=True) and (self._get_json(key) or ({}, ""))[0] == claim:
                return f"v{number}"
            number += 1
        raise RegistryError(f"could not claim a new version of {name!r}")

    def promote(self, name: str, version: str, env: str, *, force: bool = False, by: str | None = None) -> Alias:
        """Point ``env`` at ``version``; refuses other label sets than the current version's unless ``force``."""
        check_name(name), check_version(version)
        self._require_env(env)
        manifest = self.manifest(name, version)
        by = by or default_creator(self.settings)

        def change(alias: Alias | None, now: datetime) -> Alias:
            if alias is not None and alias.version == version:
                raise RegistryError(f"{name} {version} is already the version in {env}")
            if alias is not None and not force:
                differences = label_differences(self.manifest(name, alias.version), manifest)
                if differences:
                    raise LabelMismatchError(
                        f"{name} {version} has other labels than {alias.version} (in {env}): "
                        f"{'; '.join(differences)}; use --force to promote anyway"
                    )
            previous = [*alias.previous, alias.version] if alias else []
            history = alias.history if alias else []
            event = AliasEvent(action="promote", version=version, replaced=alias.version if alias else None,
                               at=now, by=by)
            return Alias(name=name, env=env, version=version, updated_at=now, updated_by=by, previous=previous,
                         history=[*history, event])

        return self._update_alias(name, env, change)

    def demote(self, name: str, env: str, *, by: str | None = None) -> Alias:
        """Point ``env`` back at the version it had before the current one."""
        by = by or default_creator(self.settings)
        self.alias(name, env)  # clear error for unknown names/environments

        def change(alias: Alias | None, now: datetime) -> Alias:
            if alias is None or not alias.previous:
                raise RegistryError(f"{name} in {env} has no previous version to go back to")
            version = alias.previous[-1]
            event = AliasEvent(action="demote", version=version, replaced=alias.version, at=now, by=by)
            return Alias(name=name, env=env, version=version, updated_at=now, updated_by=by,
                         previous=alias.previous[:-1], history=[*alias.history, event])

        return self._update_alias(name, env, change)

    def _require_env(self, env: str) -> None:
        check_name(env, "environment")
        if env not in self.settings.envs:
            raise RegistryError(f"unknown environment {env!r} (known: {', '.join(self.settings.envs)}; "
                                "set CORESTREAM_REGISTRY__ENVS to change)")

    def _update_alias(self, name: str, env: str, change: Any) -> Alias:
        key = self.key(name, "aliases", f"{env}.json")
        for _ in range(_UPDATE_ATTEMPTS):
            found = self._get_json(key)
            current = self._parse(Alias, found[0], key) if found else None
            alias = change(current, datetime.now(UTC))
            if self._put_json(key, alias, etag=found[1] if found else None, create=found is None):
                log.info("alias updated", extra={"model": name, "env": env, "version": alias.version})
                return alias
        raise RegistryError(f"alias {name}@{env} kept changing under concurrent updates; try again")

    def update_metadata(self, name: str, version: str, *, add_dont_run_on: list[str] | None = None,
                        clear_dont_run_on: bool = False, require_gpu: bool | None = None,
                        profiles: dict[str, Any] | None = None, remove_profiles: list[str] | None = None) -> Manifest:
        """Change a version's processor metadata (the checkpoint files stay immutable)."""
        check_name(name), check_version(version)
        key = self.key(name, version, MANIFEST)
        for _ in range(_UPDATE_ATTEMPTS):
            found = self._get_json(key)
            if found is None:
                self.manifest(name, version)  # raises the right "unknown ..." error
                continue
            manifest = self._stored_manifest(found[0], name, version)
            meta = manifest.metadata
            sources = [] if clear_dont_run_on else list(meta.dont_run_on)
            sources += [s for s in add_dont_run_on or [] if s not in sources]
            profile_map = {k: v for k, v in {**meta.profiles, **(profiles or {})}.items()
                           if k not in (remove_profiles or [])}
            manifest.metadata = VersionMetadata(
                dont_run_on=sources, require_gpu=meta.require_gpu if require_gpu is None else require_gpu,
                profiles=profile_map,
            )
            if self._put_json(key, manifest, etag=found[1]):
                return manifest
        raise RegistryError(f"metadata of {name} {version} kept changing under concurrent updates; try again")

    # ------------------------------------------------------------------ downloading

    def download(self, name: str, version: str, cache_dir: str | Path) -> tuple[Path, Manifest]:
        """A verified local copy of a version at ``cache_dir/name/version``.

        The copy is reused only while it still holds exactly the manifest's files (checked on every call);
        every local path is resolved and must stay inside ``cache_dir``.
        """
        manifest = self.manifest(name, version)  # checks name and version, and that the manifest agrees
        target = path_under(cache_dir, name, version)
        if target.is_dir():
            try:
                verify_files(target, manifest)
                return target, manifest
            except IntegrityError as exc:
                log.warning("cached model is stale or damaged; downloading again", extra={"reason": str(exc)})
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            with s3_errors(f"downloading {name} {version}", self.settings.endpoint_url):
                for relative in manifest.files:
                    path = path_under(staging, *file_parts(relative))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, self.key(name, version, relative), str(path))
            verify_files(staging, manifest)
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target, manifest


def _is_name(value: str) -> bool:
    try:
        check_name(value)
    except InvalidNameError:
        return False
    return True
