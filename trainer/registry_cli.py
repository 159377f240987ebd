"""``corestream-train push | promote | demote | list | metadata``: the model registry from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from config.cli import CommandError
from config.settings import Settings
from models.registry.s3 import S3Error
from models.registry.store import Manifest, ModelRegistry, RegistryError


def register(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser("push", help="upload a checkpoint directory as a new immutable version")
    push.add_argument("model_dir", metavar="MODEL_DIR")
    push.add_argument("--name", required=True, help="model name in the registry")
    push.add_argument("--dont-run-on", action="append", default=[], metavar="SOURCE",
                      help="record source this version must not classify (repeatable)")
    push.add_argument("--require-gpu", action="store_true", help="refuse to serve this version on CPU")
    push.set_defaults(func=_push)

    promote = subparsers.add_parser("promote", help="point an environment at a version")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("--version", required=True)
    promote.add_argument("--env", required=True)
    promote.add_argument("--force", action="store_true", help="promote even if the label sets differ")
    promote.set_defaults(func=_promote)

    demote = subparsers.add_parser("demote", help="point an environment back at its previous version")
    demote.add_argument("name", metavar="NAME")
    demote.add_argument("--env", required=True)
    demote.set_defaults(func=_demote)

    listing = subparsers.add_parser("list", help="versions of a model, their metrics and where they serve")
    listing.add_argument("name", metavar="NAME")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_list)

    metadata = subparsers.add_parser("metadata", help="show or change a version's processor metadata")
    metadata.add_argument("name", metavar="NAME")
    metadata.add_argument("version", metavar="VERSION")
    metadata.add_argument("--add-dont-run-on", action="append", default=[], metavar="SOURCE")
    metadata.add_argument("--clear-dont-run-on", action="store_true")
    gpu = metadata.add_mutually_exclusive_group()
    gpu.add_argument("--require-gpu", dest="require_gpu", action="store_const", const=True, default=None)
    gpu.add_argument("--no-require-gpu", dest="require_gpu", action="store_const", const=False)
    metadata.add_argument("--profile", action="append", default=[], metavar="KEY=JSON",
                          help="set a free-form profile entry (value parsed as JSON, else kept as text)")
    metadata.add_argument("--remove-profile", action="append", default=[], metavar="KEY")
    metadata.set_defaults(func=_metadata)


def _registry_call(settings: Settings, call: Any) -> Any:
    try:
        return call(ModelRegistry(settings.registry))
    except (RegistryError, S3Error) as exc:
        raise CommandError(str(exc)) from None


def _push(args: argparse.Namespace, settings: Settings) -> int:
    from models.registry.store import VersionMetadata

    meta = VersionMetadata(dont_run_on=args.dont_run_on, require_gpu=args.require_gpu)
    manifest = _registry_call(settings, lambda r: r.push(args.model_dir, args.name, metadata=meta))
    size = sum(entry.size for entry in manifest.files.values())
    print(f"pushed {manifest.name} {manifest.version} ({len(manifest.files)} files, {size / 1e6:.1f} MB)")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    alias = _registry_call(settings, lambda r: r.promote(args.name, args.version, args.env, force=args.force))
    replaced = alias.history[-1].replaced
    print(f"{alias.name}@{alias.env} -> {alias.version}" + (f" (was {replaced})" if replaced else ""))
    return 0


def _demote(args: argparse.Namespace, settings: Settings) -> int:
    alias = _registry_call(settings, lambda r: r.demote(args.name, args.env))
    print(f"{alias.name}@{alias.env} -> {alias.version} (was {alias.history[-1].replaced})")
    return 0


def _metadata(args: argparse.Namespace, settings: Settings) -> int:
    profiles = dict(_profile(item) for item in args.profile)
    changes = args.add_dont_run_on or args.clear_dont_run_on or args.require_gpu is not None or profiles \
        or args.remove_profile
    if changes:
        manifest = _registry_call(settings, lambda r: r.update_metadata(
            args.name, args.version, add_dont_run_on=args.add_dont_run_on, clear_dont_run_on=args.clear_dont_run_on,
            require_gpu=args.require_gpu, profiles=profiles, remove_profiles=args.remove_profile))
    else:
        manifest = _registry_call(settings, lambda r: r.manifest(args.name, args.version))
    print(manifest.metadata.model_dump_json(indent=2))
    return 0


def _profile(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CommandError(f"--profile takes KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _list(args: argparse.Namespace, settings: Settings) -> int:
    def gather(registry: ModelRegistry) -> tuple[list[Manifest], dict[str, list[str]]]:
        manifests = [registry.manifest(args.name, v) for v in registry.require_versions(args.name)]
        envs: dict[str, list[str]] = {}
        for env, alias in sorted(registry.aliases(args.name).items()):
            envs.setdefault(alias.version, []).append(env)
        return manifests, envs

    manifests, envs = _registry_call(settings, gather)
    if args.json:
        print(json.dumps([{**m.model_dump(mode="json", exclude={"files"}), "envs": envs.get(m.version, [])}
                          for m in manifests], indent=2))
        return 0
    rows = [("VERSION", "CREATED", "CREATOR", "ARCH", "CATS", "METRICS", "ENVS", "FLAGS")]
    for m in manifests:
        flags = (["gpu"] if m.metadata.require_gpu else []) + [f"skip:{s}" for s in m.metadata.dont_run_on]
        rows.append((m.version, m.created_at.strftime("%Y-%m-%d %H:%M"), m.creator, m.arch,
                     str(len(m.category_labels)), _metrics_summary(m.metrics), ",".join(envs.get(m.version, [])),
                     ",".join(flags)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


SUMMARY_METRICS = ("category_f1_micro", "category_map", "coreness_macro_f1")


def _metrics_summary(metrics: dict[str, Any]) -> str:
    """The headline metrics (``valid.category_f1_micro`` -> ``category_f1_micro=0.812``), else the first three."""
    flat: list[tuple[str, float]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat.append((prefix, float(value)))

    walk("", metrics)
    headline = [(key.rsplit(".", 1)[-1], value) for key, value in flat if key.rsplit(".", 1)[-1] in SUMMARY_METRICS]
    return " ".join(f"{key}={value:.3f}" for key, value in headline[:3] or flat[:3]) or "-"
