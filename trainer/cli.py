"""``corestream-train``: the one trainer CLI (datasets, train, evaluate, registry, backfill)."""

from __future__ import annotations

from collections.abc import Sequence

from config.cli import build_parser, run_cli

COMMAND_MODULES = [
    "trainer.training.train",
    "trainer.evaluation.evaluate",
    "trainer.registry_cli",
    "trainer.backfill",
    "trainer.datasets.cli",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("corestream-train", "Build datasets, train, evaluate and publish corestream models.",
                          COMMAND_MODULES)
    return run_cli(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
