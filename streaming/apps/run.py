"""``corestream run``: the stream processor as a consumer-group member, with metrics and health endpoints."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from dataclasses import asdict

from confluent_kafka import KafkaException

from config.cli import CommandError
from config.settings import Settings
from models.model_source import ModelLoadError
from streaming.kafka import create_topics
from streaming.pipeline.processor import PipelineError, ProcessorStats, StreamProcessor
from streaming.runtime import Runtime

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="classify records from the input topics (one consumer-group member)",
        description="Consume the input topics, classify in micro-batches, write to the sinks, then commit. "
                    "Start more processes with the same kafka.group_id to scale out. SIGTERM/SIGINT: finish the "
                    "in-flight batches, commit, exit (a second signal exits at once, uncommitted).",
    )
    parser.add_argument("--until-drained", action="store_true",
                        help="exit once every assigned partition is read to its end and committed")
    parser.add_argument("--create-topics", action="store_true",
                        help="create the input, output and dead-letter topics first (if absent)")
    parser.set_defaults(func=lambda args, settings: run(settings, until_drained=args.until_drained,
                                                        create=args.create_topics))


def run(settings: Settings, *, until_drained: bool = False, create: bool = False) -> int:
    try:
        runtime = Runtime(settings).open()
    except (ModelLoadError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    with runtime:
        if create:
            create_topics(settings)
        processor = runtime.processor()
        stop = threading.Event()
        _handle_signals(stop, processor)
        runtime.serve_health(health=processor.health, ready=processor.ready)
        runtime.model_source.start_reloading()
        try:
            stats = processor.run(stop, until_drained=until_drained)
        except (PipelineError, KafkaException) as exc:
            raise CommandError(f"processor stopped: {exc}") from None
    print(json.dumps(_summary(stats)))
    return 0


def _handle_signals(stop: threading.Event, processor: StreamProcessor) -> None:
    """First SIGTERM/SIGINT: graceful stop (finish, commit, close); second: stop at once."""

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second signal: stopping at once, in-flight batches stay uncommitted")
            processor.abort()
        else:
            log.info("stopping: finishing in-flight batches", extra={"signal": signal.Signals(signum).name})
            stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _summary(stats: ProcessorStats) -> dict:
    return {"event": "processor_stopped", **asdict(stats)}
