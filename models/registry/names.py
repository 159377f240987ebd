"""The one naming rule of the model registry, and local paths that provably stay under their root.

Every model name, version, environment (alias), ``registry://`` URI part and manifest entry is checked here
before an S3 key or a local path is built from it:

* a name (model, environment, local checkpoint name or version, each part of a file path) is 1-128 ASCII
  letters, digits, ``.``, ``_`` or ``-`` and starts with a letter or digit: no ``/`` or ``\\``, no ``.`` or
  ``..``, no spaces or control characters;
* a registry version is ``v`` followed by 1-9 digits (``v1``, ``v2``, ...).

:func:`path_under` joins checked parts to a root, resolves the result (symlinks included) and refuses it
unless it lies strictly inside the resolved root.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

NAME_RULE = "1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"v([0-9]{1,9})")
_SHOWN = 40  # characters of a refused value shown in an error


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why."""


class InvalidNameError(RegistryError, ValueError):
    """A name, version, environment or path breaks the naming rule (or would leave its root directory)."""


def shown(value: object) -> str:
    """A refused value for an error message: its repr, cut to a short excerpt."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


def check_name(value: object, what: str = "model name") -> str:
    """``value`` if it is a valid name, else :class:`InvalidNameError` saying what the rule is."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidNameError(f"invalid {what} {shown(value)}: use {NAME_RULE}")
    return value


def check_version(value: object) -> str:
    """``value`` if it is a registry version (``v1``, ``v2``, ...), else :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise InvalidNameError(f"invalid version {shown(value)}: versions look like v1, v2, ...")
    return value


def version_number(value: str) -> int | None:
    """The number of a registry version (``v12`` -> 12), None for anything else."""
    match = _VERSION.fullmatch(value)
    return int(match.group(1)) if match else None


def check_relative_file(value: object) -> str:
    """A manifest file path: POSIX parts that each follow the naming rule (``tokenizer/vocab.txt``)."""
    if not isinstance(value, str) or not value or "\\" in value:
        raise InvalidNameError(f"unsafe file path {shown(value)} in manifest")
    parts = value.split("/")
    if len(parts) > 8 or not all(_NAME.fullmatch(part) for part in parts):
        raise InvalidNameError(f"unsafe file path {shown(value)} in manifest: each part must use {NAME_RULE}")
    return value


def path_under(root: str | Path, *parts: str) -> Path:
    """``root/parts...`` resolved; :class:`InvalidNameError` unless it lies strictly inside the resolved root."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target == base or not target.is_relative_to(base):
        raise InvalidNameError(f"path {shown('/'.join(parts))} would leave {base}; refusing it")
    return target


def file_parts(relative: str) -> tuple[str, ...]:
    """The checked parts of a manifest file path, for :func:`path_under`."""
    return PurePosixPath(check_relative_file(relative)).parts
