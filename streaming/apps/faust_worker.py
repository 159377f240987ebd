"""A Faust (faust-streaming) worker that runs the stream processor's pipeline core.

For teams that deploy Faust workers::

    corestream faust-worker                  # settings from CORESTREAM_* / --config, like `corestream run`
    faust -A streaming.apps.faust_worker worker -l info

The agent takes micro-batches with ``stream.take_events(max_batch_records, within=max_wait_ms)``, validates
each message with the processor's input rules (:func:`streaming.pipeline.envelope.decode`,
:mod:`models.records.intake`),
classifies the valid records with the live model (:class:`models.inference.source.ModelSource`, one
``current()`` per batch), writes the results to the same
sinks (:func:`streaming.sinks.build_sinks`) and sends bad messages to the dead-letter topic
(:class:`streaming.pipeline.dead_letters.DeadLetterWriter`), using the processor's own stages
(:class:`streaming.pipeline.stages.InferenceStage`, :class:`streaming.pipeline.stages.SinkStage`).

Delivery: Faust acks a ``take_events`` batch in the generator's ``finally`` block, i.e. as soon as the agent
asks for the next batch *or leaves the loop for any reason* (exception, cancellation, worker stop), and its
consumer commits acked offsets every ``broker_commit_interval``. So the agent holds one extra reference on each
message (``Message.incref``) and drops it only after the batch is durably written: until then Faust's ack does
not make the offset committable. Sink outages are retried inside the handler (the agent blocks, Faust keeps
heart-beating); a stop waits up to ``batch.shutdown_timeout_s`` for the batch in flight and otherwise leaves it
uncommitted; a crashed handler exits the worker (status 75) so it restarts from the last commit, and a sink that
failed permanently (:class:`~streaming.pipeline.stages.SinkStopped`) exits it with status 2, as ``corestream run``.
See docs/operations.md for the trade-offs against ``corestream run``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from config.cli import CommandError
from config.settings import Settings, load_settings
from models.inference.source import ModelLoadError, ModelSource
from streaming.observability.metrics import BATCH_RECORDS, BATCH_TOKENS, RECORDS_CONSUMED
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.pipeline.envelope import Batch, Envelope, decode
from streaming.pipeline.offsets import Ownership
from streaming.pipeline.stages import InferenceStage, SinkStage, SinkStopped
from streaming.runtime import Runtime
from streaming.sinks import Sink

log = logging.getLogger(__name__)

EXIT_BATCH_NOT_WRITTEN = 75  # EX_TEMPFAIL: restart me; the batch in flight was not committed
EXIT_SINK_STOPPED = 2  # a sink failed permanently (SinkStopped): stop, as `corestream run` does; nothing committed


class BatchHandler:
    """decode -> infer -> sinks -> dead letters for one micro-batch; blocking (run it in a thread)."""

    def __init__(self, settings: Settings, model_source: ModelSource, sinks: Sequence[Sink],
                 dead_letters: DeadLetterWriter) -> None:
        self.settings = settings
        self.model_source = model_source
        self.sinks = list(sinks)
        self.abort = threading.Event()  # set only when the worker gives up on the batch in flight
        self.ownership = Ownership()  # Faust owns partitions; a batch here is always finished, never abandoned
        self.outage = False
        self.batches = 0
        self._crash: BaseException | None = None
        common: dict[str, Any] = {"inbox": None, "outbox": None, "abort": self.abort, "on_crash": self._on_crash,
                                  "on_progress": lambda: None}
        self._inference = InferenceStage(model_source, self.ownership, **common)
        self._sinks = SinkStage.from_settings(settings, self.sinks, dead_letters, self.ownership,
                                              on_outage=self._on_outage, **common)

    @property
    def classified(self) -> int:
        return self._sinks.classified

    @property
    def dead_lettered(self) -> int:
        return self._sinks.dead_lettered

    def envelope(self, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 timestamp_s: float | None = None) -> Envelope:
        """One consumed message, validated: a record to classify, a rejection (dead letter) or a skip."""
        tp = (topic, partition)
        if self.ownership.epoch(tp) is None:
            self.ownership.assign([tp])
        env = Envelope(topic=topic, partition=partition, offset=offset, epoch=self.ownership.epoch(tp) or 0,
                       key=key, value=value, timestamp_s=timestamp_s)
        RECORDS_CONSUMED.labels(topic=topic).inc()
        decode(env, self.settings.records, self.settings.skip_sources, self.model_source)
        return env

    def handle(self, envelopes: list[Envelope]) -> bool:
        """Classify, write and dead-letter one batch; True when all of it is durably done. Raises
        :class:`SinkStopped` when a sink (or the dead-letter producer) failed permanently."""
        self.batches += 1
        batch = Batch(self.batches, list(envelopes))
        BATCH_RECORDS.observe(len(batch.items))
        BATCH_TOKENS.observe(batch.tokens)
        self._inference.handle(batch)
        self._sinks.handle(batch)
        if self._crash is not None:
            raise self._crash
        return not self.abort.is_set()

    def ready(self) -> tuple[bool, dict]:
        sinks = {sink.name: sink.check() for sink in self.sinks}
        return all(sinks.values()) and not self.outage, {"sinks": sinks, "sink_outage": self.outage}

    def _on_crash(self, exc: BaseException) -> None:
        self._crash = exc

    def _on_outage(self, down: bool) -> None:
        self.outage = down


class FaustPipeline:
    """The agent's resources (model, producer, sinks, metrics server), created when the worker starts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handler: BatchHandler | None = None
        self._runtime: Runtime | None = None

    def start(self) -> BatchHandler:
        if self.handler is None:
            runtime = Runtime(self.settings).open()
            self._runtime = runtime
            try:
                predictor = runtime.model_source.current()
                runtime.model_source.start_reloading()
                handler = BatchHandler(self.settings, runtime.model_source, runtime.sinks, runtime.dead_letters)
                runtime.serve_health(ready=handler.ready)
            except BaseException:
                runtime.close()
                raise
            self.handler = handler
            log.info("faust pipeline ready", extra={"model": predictor.info.name, "version": predictor.info.version,
                                                    "device": predictor.device})
        return self.handler

    def stop(self) -> None:
        if self._runtime is not None:
            self._runtime.close()

    async def process(self, events: Sequence[Any]) -> None:
        """One ``take_events`` batch. Each message is held (one extra reference) until the batch is durably
        written, so Faust's own ack of the batch - which comes whatever happens - cannot make it committable."""
        handler = self.handler or await asyncio.to_thread(self.start)
        for event in events:
            event.message.incref()  # our hold; released by event.ack() below once the batch is written
        envelopes = [handler.envelope(topic=e.message.topic, partition=e.message.partition, offset=e.message.offset,
                                      key=e.message.key, value=e.message.value,
                                      timestamp_s=e.message.timestamp or None) for e in events]
        work = asyncio.ensure_future(asyncio.to_thread(handler.handle, envelopes))
        try:
            done = await asyncio.shield(work)
        except asyncio.CancelledError:
            timeout = self.settings.batch.shutdown_timeout_s
            log.info("worker stopping: finishing the batch in flight", extra={"records": len(envelopes)})
            try:
                done = await asyncio.wait_for(asyncio.shield(work), timeout)
            except Exception as exc:  # noqa: BLE001 - timeout or crash: the hold keeps the batch uncommitted
                handler.abort.set()
                log.warning("batch in flight not written before stopping: not committed, it will be consumed "
                            "again", extra={"records": len(envelopes), "error": f"{type(exc).__name__}: {exc}"})
                raise asyncio.CancelledError from None
            if done:
                _release(events)
            raise
        except SinkStopped as exc:
            _exit_without_commit(f"a sink failed permanently: {exc}", EXIT_SINK_STOPPED)
        except Exception:
            log.exception("batch handler crashed")
            _exit_without_commit("batch handler crashed")
        if not done:
            _exit_without_commit("batch abandoned")
        _release(events)


def _release(events: Sequence[Any]) -> None:
    """Drop our hold on each message: after Faust's own ack it becomes committable."""
    for event in events:
        event.ack()


def _exit_without_commit(why: str, status: int = EXIT_BATCH_NOT_WRITTEN) -> None:
    """Crash-stop on a handler failure: restarted, the worker consumes the batch again from the last commit
    (otherwise Faust would restart the agent and carry on, with the held offsets blocking every later commit;
    after a permanent sink failure it would retry for ever while looking alive)."""
    log.critical("exiting so the batch is not committed; it will be consumed again",
                 extra={"why": why, "status": status})
    logging.shutdown()
    os._exit(status)


def faust_config(settings: Settings) -> dict[str, Any]:
    """Faust app settings derived from corestream settings."""
    kafka = settings.kafka
    return {
        "broker": [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
        "broker_session_timeout": kafka.session_timeout_ms / 1000,
        "broker_heartbeat_interval": min(3.0, kafka.session_timeout_ms / 3000),
        "broker_max_poll_interval": kafka.max_poll_interval_ms / 1000,
        "consumer_auto_offset_reset": kafka.auto_offset_reset,
        "topic_partitions": kafka.partitions,
        "topic_replication_factor": kafka.replication_factor,
        "topic_disable_leader": True,  # no "__assignor-__leader" topic: this app has no tables
        "producer_acks": -1,
        # Do not let Faust wait (without a limit) for the batch in flight on stop: the agent does, up to
        # batch.shutdown_timeout_s, and exits without committing if it cannot finish (see FaustPipeline.process).
        "stream_wait_empty": False,
        "store": "memory://",
        "web_enabled": False,  # metrics/healthz/readyz come from streaming.observability.health on metrics.port
        "datadir": str(Path(tempfile.gettempdir()) / f"corestream-faust-{kafka.group_id}"),
        "key_serializer": "raw",
        "value_serializer": "raw",
    }


def create_app(settings: Settings) -> faust.App:
    """The Faust app; its consumer group is ``kafka.group_id`` (do not share it with `corestream run`)."""
    app = faust.App(settings.kafka.group_id, **faust_config(settings))
    topic = app.topic(*settings.kafka.input_topics, key_type=bytes, value_type=bytes)
    pipeline = FaustPipeline(settings)
    batch = settings.batch
    within = max(batch.max_wait_ms, 1) / 1000

    @app.agent(topic, name="classify", concurrency=1)
    async def classify(stream) -> None:
        try:
            await asyncio.to_thread(pipeline.start)
        except Exception as exc:  # noqa: BLE001 - Faust would restart the agent forever: stop the worker
            log.critical("cannot start the pipeline", extra={"error": f"{type(exc).__name__}: {exc}"})
            logging.shutdown()
            os._exit(1)
        async for events in stream.take_events(batch.max_batch_records, within=within):
            await pipeline.process(events)

    @app.on_after_configured.connect
    def _configured(_app, **kwargs) -> None:  # pragma: no cover - Faust signal
        log.info("faust app configured", extra={"group_id": settings.kafka.group_id})

    app.corestream_pipeline = pipeline  # type: ignore[attr-defined]
    return app


def run_worker(app: faust.App, settings: Settings) -> int:
    """Run the worker until SIGINT/SIGTERM; logging stays corestream's JSON logging."""
    from faust.worker import Worker

    pipeline: FaustPipeline = app.corestream_pipeline  # type: ignore[attr-defined]
    try:
        pipeline.start()  # model, sinks and metrics before joining the group: a bad setting fails fast
    except (ModelLoadError, OSError, ValueError) as exc:
        raise CommandError(f"cannot start the Faust worker: {exc}") from None
    worker = Worker(app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        pipeline.stop()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("faust-worker", help="run the classifier as a Faust worker",
                                   description="The stream processor's pipeline in a faust-streaming agent "
                                   "(see docs/operations.md for the trade-offs against `corestream run`).")
    parser.set_defaults(func=lambda args, settings: run_worker(create_app(settings), settings))


def __getattr__(name: str) -> Any:
    """``faust -A streaming.apps.faust_worker``: the app is built from settings on first access."""
    if name == "app":
        global app
        app = create_app(load_settings())
        return app
    raise AttributeError(name)
