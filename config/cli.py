"""Shared command-line plumbing for the ``corestream`` and ``corestream-train`` commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from config.logging import mask, setup_logging
from config.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser(prog: str, description: str, command_modules: Sequence[str]) -> argparse.ArgumentParser:
    """One parser; each module in ``command_modules`` adds its sub-commands with ``register(subparsers)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML settings file (default: $CORESTREAM_CONFIG)")
    parser.add_argument("--log-level", help="override the log level setting")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_modules:
        importlib.import_module(name).register(subparsers)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {"log_level": args.log_level} if getattr(args, "log_level", None) else {}
    return load_settings(getattr(args, "config", None), **overrides)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, load settings, set up logging and call the chosen command's ``func(args, settings)``."""
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        setup_logging(settings.log_level, settings.log_format)
        result = args.func(args, settings)
    except (SettingsError, CommandError) as exc:
        print(f"{parser.prog}: error: {mask(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
