"""What librdkafka reports, in corestream's own log: one clear line per unreachable broker, repeats throttled.

Every Kafka client made by :mod:`config.clients` hands its log lines (``logger``), its errors (``error_cb``)
and, for the consumer, its statistics (``stats_cb``) to the process's one :data:`KAFKA_EVENTS`:

* A broker that cannot be reached (connection refused, name not resolved, timed out) is logged once at WARNING:
  which broker, since when, still retrying. While attempts keep failing, one reminder every ``remind_s`` says
  for how long and how many attempts failed; when the statistics show the broker up again, one INFO line says
  so. The library's own line for each failed attempt goes to DEBUG.
* Any other library line or error is logged under ``librdkafka`` at its level, and the same line again (numbers
  aside) within ``remind_s`` is counted, not printed; the next one printed says how many were suppressed.

:meth:`KafkaEvents.status` is what the readiness probe shows: the brokers that are down, and whether every
broker is (then the processor is not ready). The callbacks run inside ``poll()``/``consume()``/``flush()`` of
the client, so they never raise.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("corestream.kafka")
library_log = logging.getLogger("librdkafka")

REMIND_S = 60.0
MAX_KEYS = 1000  # distinct throttled lines remembered
# Errors that mean "this broker cannot be reached" (librdkafka's local error names).
UNREACHABLE = frozenset({"_TRANSPORT", "_RESOLVE"})
ALL_DOWN = "_ALL_BROKERS_DOWN"

# "kafka:9092/1: Connect to ipv4#10.0.0.5:9092 failed: Connection refused (after 0ms in state CONNECT)"
_BROKER_LINE = re.compile(r"^(?P<broker>[^\s/]+)/(?P<node>[^\s:]+): (?P<text>.*)$")
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)\s*$")
_REASON = re.compile(r"(?:failed|error): (?P<reason>.+)$")
_NUMBERS = re.compile(r"\d+")


@dataclass
class _Down:
    since: float  # wall clock of the first failure
    reason: str
    last_failure: float  # monotonic
    failures: int = 1  # since the last line about it
    total: int = 1
    reminded: float = 0.0  # monotonic time of the last line about it


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str) -> tuple[str | None, str]:
    """(broker ``host:port`` or None, reason) from a librdkafka error or log text."""
    match = _BROKER_LINE.match(text)
    broker, body = (match["broker"], match["text"]) if match and ":" in match["broker"] else (None, text)
    body = _AFTER.sub("", body)
    reason = _REASON.search(body)
    return broker, (reason["reason"] if reason else body)


class KafkaEvents:
    """The sink of every Kafka client's log lines, errors and statistics in this process (thread-safe)."""

    def __init__(self, remind_s: float = REMIND_S, clock: Any = time.monotonic) -> None:
        self.remind_s = remind_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down: dict[str, _Down] = {}
        self._all_down_since: float | None = None  # wall clock
        self._lines: dict[str, list[float]] = {}  # throttle key -> [first shown (monotonic), suppressed]

    # ------------------------------------------------------------------ librdkafka callbacks

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """confluent-kafka's ``logger``: ``log(level, "%s [%s] %s", facility, client, message)``."""
        try:
            facility, client, message = (args if len(args) == 3 else ("", "", fmt % args))
            if facility == "FAIL":  # one failed connection attempt: error_cb reports the same failure
                library_log.debug("%s [%s] %s", facility, client, message)
                return
            self._throttled(level, f"{facility}: {message}", {"client": client})
        except Exception:  # noqa: BLE001 - a callback must never raise into the client's poll()
            library_log.debug("cannot log a librdkafka line", exc_info=True)

    def error(self, error: Any) -> None:
        """confluent-kafka's ``error_cb`` (a ``KafkaError``)."""
        try:
            name, text = error.name(), error.str()
            if name in UNREACHABLE:
                broker, reason = _parse(text)
                if broker is not None:
                    self._failed(broker, reason)
                    return
            if name == ALL_DOWN:
                with self._lock:
                    if self._all_down_since is None:
                        self._all_down_since = time.time()
                library_log.debug("all brokers down: %s", text)
                return
            level = logging.ERROR if error.fatal() else logging.WARNING
            self._throttled(level, f"{name}: {text}", {"error": name})
        except Exception:  # noqa: BLE001
            library_log.debug("cannot log a librdkafka error", exc_info=True)

    def stats(self, payload: str) -> None:
        """confluent-kafka's ``stats_cb``: brokers in state UP are reachable again."""
        if not self._down and self._all_down_since is None:
            return
        try:
            brokers = json.loads(payload).get("brokers", {})
            up = {name.rsplit("/", 1)[0] for name, broker in brokers.items() if broker.get("state") == "UP"}
        except (ValueError, AttributeError):
            return
        if up:
            self.reachable(up)

    # ------------------------------------------------------------------ state

    def reachable(self, brokers: set[str] | None = None) -> None:
        """``brokers`` (every one, if None) answered: log each that was down, clear the all-down state."""
        with self._lock:
            self._all_down_since = None
            back = [(name, self._down.pop(name)) for name in list(self._down) if brokers is None or name in brokers]
        for name, down in back:
            log.info(f"Kafka broker {name} reachable again after {time.time() - down.since:.0f} s",
                     extra={"broker": name, "down_since": _iso(down.since), "failed_attempts": down.total})

    def forget(self) -> None:
        """Drop what earlier clients reported, without logging (a new processor in the same process starts
        afresh; its own clients report again within seconds if a broker is still down)."""
        with self._lock:
            self._down.clear()
            self._all_down_since = None

    def status(self) -> dict[str, Any]:
        """For readiness: ``{"all_down": bool, "unreachable": {broker: since}}`` (brokers failing lately)."""
        now = self._clock()
        with self._lock:
            recent = {name: _iso(down.since) for name, down in self._down.items()
                      if now - down.last_failure < self.remind_s}
            return {"all_down": self._all_down_since is not None and bool(recent), "unreachable": recent}

    def _failed(self, broker: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            down = self._down.get(broker)
            if down is None or now - down.last_failure > self.remind_s:  # new, or failing again after a pause
                down = self._down[broker] = _Down(since=time.time(), reason=reason, last_failure=now, reminded=now)
                first = True
            else:
                down.failures += 1
                down.total += 1
                down.last_failure, down.reason = now, reason
                first = False
                if now - down.reminded < self.remind_s:
                    return
                down.reminded, failures, down.failures = now, down.failures, 0
        extra = {"broker": broker, "since": _iso(down.since), "error": reason}
        if first:
            log.warning(f"Kafka broker {broker} unreachable ({reason}) since {_iso(down.since)}; still retrying "
                        f"(the client library's repeats of this are logged at DEBUG)", extra=extra)
        else:
            log.warning(f"Kafka broker {broker} still unreachable ({reason}) since {_iso(down.since)}, "
                        f"{time.time() - down.since:.0f} s; {failures} more failed attempts; still retrying",
                        extra={**extra, "failed_attempts": down.total})

    def _throttled(self, level: int, text: str, extra: dict[str, Any]) -> None:
        key = _NUMBERS.sub("#", text)
        now = self._clock()
        with self._lock:
            seen = self._lines.get(key)
            if seen is not None and now - seen[0] < self.remind_s:
                seen[1] += 1
                return
            suppressed = seen[1] if seen is not None else 0
            if len(self._lines) >= MAX_KEYS:
                self._lines = {k: v for k, v in self._lines.items() if now - v[0] < self.remind_s}
            self._lines[key] = [now, 0]
        if suppressed:
            text += f" ({suppressed} similar lines suppressed)"
        library_log.log(level, text, extra=extra)


KAFKA_EVENTS = KafkaEvents()


def client_callbacks(*, stats: bool = False) -> dict[str, Any]:
    """The librdkafka properties that route a client's events to :data:`KAFKA_EVENTS`.

    ``stats`` (for the consumer, whose ``consume()`` serves them constantly) adds its statistics every 5 s, from
    which a broker's recovery is seen. ``log.connection.close`` off: an idle connection the broker closes is
    normal, not an error line."""
    config: dict[str, Any] = {"logger": KAFKA_EVENTS, "error_cb": KAFKA_EVENTS.error,
                              "log.connection.close": False}
    if stats:
        config.update({"stats_cb": KAFKA_EVENTS.stats, "statistics.interval.ms": 5000})
    return config
