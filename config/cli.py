"""Shared command-line plumbing for the ``corestream`` and ``corestream-train`` commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from config.logging import mask, setup_logging
from config.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``--config`` and ``--log-level`` (unless the parser has its own)."""
    taken = {option for action in parser._actions for option in action.option_strings}
    if "--config" not in taken:
        parser.add_argument("--config", default=default, help="YAML settings file (default: $CORESTREAM_CONFIG)")
    if "--log-level" not in taken:
        parser.add_argument("--log-level", default=default, type=str.upper, choices=LOG_LEVELS,
                            help="override the log_level setting")


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser under ``parser``, nested ones included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += [sub, *_subcommands(sub)]
    return found


def build_parser(prog: str, description: str, command_modules: Sequence[str]) -> argparse.ArgumentParser:
    """One parser; each module in ``command_modules`` adds its sub-commands with ``register(subparsers)``.

    ``--config`` and ``--log-level`` are accepted before the command and after it (``prog --log-level INFO
    demo`` and ``prog demo --log-level INFO``); given after it, they win."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    _add_common_options(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_modules:
        importlib.import_module(name).register(subparsers)
    for sub in _subcommands(parser):
        _add_common_options(sub, default=argparse.SUPPRESS)  # not given there: the value before the command stands
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {"log_level": args.log_level} if getattr(args, "log_level", None) else {}
    return load_settings(getattr(args, "config", None), **overrides)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
            before: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Parse, call ``before(args)`` if given, load settings, set up logging and call the chosen command's
    ``func(args, settings)``."""
    args = parser.parse_args(argv)
    try:
        if before is not None:
            before(args)
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
