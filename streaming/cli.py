"""``corestream``: run the stream processor and its operations commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from config.cli import build_parser, run_cli
from streaming.lifecycle import Lifecycle, fresh

COMMAND_MODULES: list[str] = [
    "streaming.apps.ops",
    "streaming.apps.run",
    "streaming.apps.demo",
    "streaming.apps.api",
    "streaming.apps.faust_worker",
]


def main(argv: Sequence[str] | None = None) -> int:
    lifecycle = fresh()
    lifecycle.catch_signals()  # from the first moment: a SIGTERM while importing ends `run` cleanly
    parser = build_parser("corestream", "Classify research-paper records as they stream through Kafka.",
                          COMMAND_MODULES)
    return run_cli(parser, argv, before=lambda args: _keep_signals(args, lifecycle))


def _keep_signals(args: argparse.Namespace, lifecycle: Lifecycle) -> None:
    """Only commands that handle stop requests themselves (``run``) keep the handlers; the others get Python's
    default behaviour back (and a signal that came while importing)."""
    if not getattr(args, "handles_signals", False):
        lifecycle.release_signals()


if __name__ == "__main__":
    raise SystemExit(main())
