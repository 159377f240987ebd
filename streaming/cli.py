"""``corestream``: run the stream processor and its operations commands."""

from __future__ import annotations

from collections.abc import Sequence

from config.cli import build_parser, run_cli

COMMAND_MODULES: list[str] = [
    "streaming.apps.ops",
    "streaming.apps.run",
    "streaming.apps.demo",
    "streaming.apps.api",
    "streaming.apps.faust_worker",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("corestream", "Classify research-paper records as they stream through Kafka.",
                          COMMAND_MODULES)
    return run_cli(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
