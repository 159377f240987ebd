"""The processor's resources, built from settings and closed in one place.

A :class:`Runtime` holds the model source (reporting to the metrics through :data:`MODEL_METRICS`), the
producer, the sinks, the dead-letter writer and, when asked, the health server. Every runtime (``corestream
run``, the demo, the Faust worker, the tests' processor thread, the pipeline benchmark) builds them here, so
they are wired and torn down the same way::

    with Runtime(settings).open() as runtime:
        stats = runtime.processor().run(stop)

Closing stops the health server, closes the sinks, flushes the producer (``sinks.delivery_timeout_s``, or less
when the stop has a deadline) and stops the model source's reload thread, in that order. While open, a daemon
thread serves the producer's events every second, so that its log lines and errors (a broker down) are reported
and do not pile up while no sink writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from config.clients import make_producer
from config.settings import Settings
from models.inference.source import ModelSource
from streaming.observability.health import HealthServer, Probe
from streaming.observability.metrics import MODEL_METRICS
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.pipeline.processor import StreamProcessor
from streaming.sinks import Sink, build_sinks

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)

EVENTS_INTERVAL_S = 1.0


class Runtime:
    """Model source, producer, sinks, dead-letter writer and health server of one processor; a context manager.

    :meth:`open` builds them (loading the model first when ``load_model``, so a bad model fails before any
    client exists); ``extra_sinks`` are appended to the configured ones (e.g. a benchmark's probe)."""

    def __init__(self, settings: Settings, *, extra_sinks: Sequence[Sink] = ()) -> None:
        self.settings = settings
        self.model_source = ModelSource(settings, hooks=MODEL_METRICS)
        self.producer: Producer | None = None
        self.sinks: list[Sink] = []
        self.dead_letters: DeadLetterWriter | None = None
        self.health: HealthServer | None = None
        self._extra_sinks = list(extra_sinks)
        self._closed = threading.Event()

    def open(self, *, load_model: bool = True) -> Runtime:
        """Build the clients; raises :class:`models.inference.source.ModelLoadError` (bad model) or ``ValueError``
        (no sink configured), having closed whatever it built."""
        try:
            if load_model:
                self.model_source.load()
            self.producer = make_producer(self.settings)
            self.sinks = [*build_sinks(self.settings, self.producer), *self._extra_sinks]
            self.dead_letters = DeadLetterWriter(self.producer, self.settings)
            threading.Thread(target=self._serve_producer_events, name="producer-events", daemon=True).start()
        except BaseException:
            self.close()
            raise
        return self

    def processor(self) -> StreamProcessor:
        """A stream processor on these resources."""
        assert self.dead_letters is not None, "open() the runtime first"
        return StreamProcessor(self.settings, self.model_source, self.sinks, self.dead_letters)

    def serve_health(self, *, ready: Probe, health: Probe | None = None) -> HealthServer | None:
        """Start ``/metrics``, ``/healthz`` and ``/readyz`` when ``metrics.enabled``; stopped by :meth:`close`."""
        metrics = self.settings.metrics
        if metrics.enabled and self.health is None:
            probes = {"ready": ready} if health is None else {"ready": ready, "health": health}
            self.health = HealthServer(metrics.host, metrics.port, probe_timeout_s=metrics.probe_timeout_s,
                                       **probes).start()
        return self.health

    def _serve_producer_events(self) -> None:
        """``poll(0)`` now and then: the producer's log lines, errors and stray delivery reports are served only by
        a poll, and the sinks poll it only while they write."""
        while not self._closed.wait(EVENTS_INTERVAL_S):
            producer = self.producer
            if producer is not None:
                producer.poll(0)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the health server, close the sinks, flush the producer (for at most ``timeout_s``, if given: the
        time left before a stop deadline), stop the model source; idempotent."""
        self._closed.set()
        if self.health is not None:
            self.health.stop()
            self.health = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one sink failing to close must not keep the others open
                log.warning("closing a sink failed", extra={"sink": sink.name, "error": str(exc)})
        self.sinks = []
        if self.producer is not None:
            flush_s = self.settings.sinks.delivery_timeout_s
            left = self.producer.flush(flush_s if timeout_s is None else min(flush_s, timeout_s))
            if left:
                log.warning("producer closed with undelivered messages", extra={"messages": left})
            self.producer = None
        self.model_source.stop()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
