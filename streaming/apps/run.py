"""``corestream run``: the stream processor as a consumer-group member, with metrics and health endpoints."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from confluent_kafka import KafkaException

from config.cli import CommandError
from config.settings import Settings
from models.inference.source import ModelLoadError
from streaming import lifecycle as lifecycles
from streaming.kafka import create_topics
from streaming.lifecycle import EXIT_OK, Lifecycle, StartupInterrupted
from streaming.pipeline.processor import PipelineError, ProcessorStats
from streaming.runtime import Runtime

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="classify records from the input topics (one consumer-group member)",
        description="Consume the input topics, classify in micro-batches, write to the sinks, then commit. "
                    "Start more processes with the same kafka.group_id to scale out. SIGTERM/SIGINT: finish the "
                    "in-flight batches, commit, exit 0 within batch.shutdown_timeout_s (a second signal exits at "
                    "once, uncommitted). Exit status 3: stalled for batch.exit_after_stalled_s (restart it); 2: "
                    "a setting, the model or a sink failed for good.",
    )
    parser.add_argument("--until-drained", action="store_true",
                        help="exit once every assigned partition is read to its end and committed")
    parser.add_argument("--create-topics", action="store_true",
                        help="create the input, output and dead-letter topics first (if absent)")
    parser.set_defaults(func=lambda args, settings: run(settings, until_drained=args.until_drained,
                                                        create=args.create_topics), handles_signals=True)


def run(settings: Settings, *, until_drained: bool = False, create: bool = False) -> int:
    """The processor until a stop; the exit status (:mod:`streaming.lifecycle`): 0, or 3 when it stalled."""
    lifecycle = lifecycles.current()
    lifecycle.catch_signals()
    try:
        lifecycle.starting(settings.batch.shutdown_timeout_s)
        status = _run(settings, lifecycle, until_drained=until_drained, create=create)
    except StartupInterrupted:
        log.info("stopped during start-up; nothing was consumed")
        status = EXIT_OK
    return lifecycle.finish(status)


def _run(settings: Settings, lifecycle: Lifecycle, *, until_drained: bool, create: bool) -> int:
    try:
        runtime = Runtime(settings).open()
    except (ModelLoadError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    try:
        if create:
            try:
                create_topics(settings)
            except (KafkaException, TimeoutError) as exc:
                raise CommandError(f"cannot create topics on {settings.kafka.bootstrap_servers}: {exc}") from None
        processor = runtime.processor()
        runtime.serve_health(health=processor.health, ready=processor.ready)
        runtime.model_source.start_reloading()
        lifecycle.running(abort=processor.abort)
        if settings.batch.exit_after_stalled_s is not None:
            lifecycle.watch_stall(processor.stalled_for, settings.batch.exit_after_stalled_s)
        stats = processor.run(lifecycle.stop, until_drained=until_drained)
    except (PipelineError, KafkaException) as exc:
        raise CommandError(f"processor stopped: {exc}") from None
    finally:
        runtime.close(timeout_s=lifecycle.time_left())
    print(json.dumps(_summary(stats)), flush=True)
    return lifecycle.status


def _summary(stats: ProcessorStats) -> dict:
    return {"event": "processor_stopped", **asdict(stats)}
