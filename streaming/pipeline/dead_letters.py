"""Dead letters: a message that cannot be classified goes, as its original bytes, to ``<input topic>.dlq``.

A dead letter must always be sendable, or its partition could never be committed: header values are
escaped (a lone surrogate in an error text becomes ``\\udc80``), the ``error`` header is cut to 4000 bytes, and
the key, then the value, are cut so that the whole message fits the producer's ``message.max.bytes`` (the
``error`` header says what was cut). A broker with a lower limit that still refuses it as too large gets the
letter again without its value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from config.clients import make_producer, producer_config
from config.settings import Settings
from streaming.kafka import is_fatal, produce

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 4000
MAX_KEY_BYTES = 1024  # a key is cut to this when the message would not fit otherwise
OVERHEAD_BYTES = 1024  # record and batch framing, header names and lengths


class DeadLetterError(RuntimeError):
    """Dead letters were not all acknowledged: the source offsets must not be committed.

    ``fatal``: the producer can never send again (recreate it)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def safe_text(text: str, max_bytes: int | None = None) -> bytes:
    """UTF-8 bytes of ``text`` with what cannot be encoded (lone surrogates) escaped, cut to ``max_bytes``
    on a character boundary."""
    data = text.encode("utf-8", "backslashreplace")
    if max_bytes is not None and len(data) > max_bytes:
        data = data[:max_bytes].decode("utf-8", "ignore").encode("utf-8")
    return data


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as produced: topic, key, value, headers (bytes)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def size(self) -> int:
        return (len(self.key or b"") + len(self.value or b"") + OVERHEAD_BYTES
                + sum(len(name) + len(value) for name, value in self.headers.items()))


def build_dead_letter(*, dlq_topic: str, topic: str, partition: int, offset: int, key: bytes | None,
                      value: bytes | None, reason: str, error: str, max_bytes: int,
                      max_value_bytes: int | None = None) -> DeadLetter:
    """The dead letter for one message, cut to fit ``max_bytes`` (the producer's ``message.max.bytes``)."""
    notes: list[str] = []
    if max_value_bytes is not None and value is not None and len(value) > max_value_bytes:
        notes.append(f"value truncated from {len(value)} to {max_value_bytes} bytes")
        value = value[:max_value_bytes]
    headers = {"reason": safe_text(reason, 200), "error": b"", "source_topic": safe_text(topic, 1000),
               "source_partition": str(partition).encode(), "source_offset": str(offset).encode()}
    letter = DeadLetter(dlq_topic, key, value, headers)
    budget = max_bytes - MAX_ERROR_BYTES  # the error header may use up to MAX_ERROR_BYTES
    if letter.size() > budget and key is not None and len(key) > MAX_KEY_BYTES:
        notes.append(f"key truncated from {len(key)} to {MAX_KEY_BYTES} bytes")
        letter = replace(letter, key=key[:MAX_KEY_BYTES])
    if letter.size() > budget and letter.value:
        keep = max(0, len(letter.value) - (letter.size() - budget))
        notes.append(f"value truncated from {len(value or b'')} to {keep} bytes")
        letter = replace(letter, value=letter.value[:keep])
    note = f" [dead letter: {'; '.join(notes)}]" if notes else ""
    text = safe_text(error, MAX_ERROR_BYTES - len(note)) + note.encode()
    return replace(letter, headers={**headers, "error": text})


class DeadLetterWriter:
    """Sends rejected messages with headers ``reason``, ``error``, ``source_topic/partition/offset``.

    ``producer_factory`` builds a new producer for :meth:`reset` (after a fatal producer error)."""

    def __init__(self, producer: Producer, settings: Settings,
                 producer_factory: Callable[[], Producer] | None = None) -> None:
        self.producer = producer
        self.kafka = settings.kafka
        self.max_bytes = int(producer_config(settings)["message.max.bytes"])
        self._factory = producer_factory or (lambda: make_producer(settings))
        self._lock = threading.Lock()  # delivery reports arrive on whichever thread polls the shared producer
        self._errors: list[KafkaError] = []
        self._resend: list[DeadLetter] = []
        self._pending = 0

    def send(self, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             reason: str, error: str, max_value_bytes: int | None = None) -> None:
        """Queue one dead letter; call :meth:`flush` before committing ``offset``."""
        letter = build_dead_letter(dlq_topic=self.kafka.dlq_topic(topic), topic=topic, partition=partition,
                                   offset=offset, key=key, value=value, reason=reason, error=error,
                                   max_bytes=self.max_bytes, max_value_bytes=max_value_bytes)
        self._produce(letter)
        fields = {"reason": reason, "source_topic": topic, "source_partition": partition, "source_offset": offset}
        log.warning("dead-lettered %s[%d]@%d (%s): %s", topic, partition, offset, reason,
                    safe_text(error, 200).decode(), extra=fields)

    def _produce(self, letter: DeadLetter) -> None:
        try:
            produce(self.producer, letter.topic, value=letter.value, key=letter.key, headers=letter.headers,
                    on_delivery=lambda err, msg: self._delivered(letter, err, msg))
        except KafkaException as exc:  # not queued: nothing to count
            error = exc.args[0]
            raise DeadLetterError(f"dead letter not queued: {error.str()}", fatal=is_fatal(error)) from exc
        with self._lock:  # counted only once queued, so that a failed produce never blocks flush for good
            self._pending += 1

    def _delivered(self, letter: DeadLetter, err: KafkaError | None, message: Message) -> None:
        with self._lock:
            self._pending -= 1
            if err is None:
                return
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and letter.value:
                self._resend.append(_without_value(letter))  # the broker's limit is below the producer's
            else:
                self._errors.append(err)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued dead letter; raise :class:`DeadLetterError` if any failed or timed out."""
        deadline = time.monotonic() + timeout
        self.producer.flush(timeout)
        while self._pending and not self._errors and time.monotonic() < deadline:
            self.producer.poll(0.01)  # a report being served by another thread polling the shared producer
        with self._lock:
            resend, self._resend = self._resend, []
        if resend:
            for letter in resend:
                self._produce(letter)
            self.producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
            pending = self._pending
        if errors or pending:
            raise DeadLetterError(
                f"{len(errors)} dead letter(s) failed and {pending} not acknowledged within {timeout}s"
                + (f"; first error: {errors[0].str()}" if errors else ""),
                fatal=any(is_fatal(error) for error in errors))

    def reset(self) -> None:
        """A new producer (after a fatal error); letters still queued on the old one are given up."""
        with self._lock:
            self._pending, self._errors, self._resend = 0, [], []
        self.producer = self._factory()


def _without_value(letter: DeadLetter) -> DeadLetter:
    note = b" [dead letter: value dropped, the broker refused the message as too large]"
    error = letter.headers["error"][: MAX_ERROR_BYTES - len(note)].decode("utf-8", "ignore").encode() + note
    return replace(letter, value=None, key=(letter.key or b"")[:MAX_KEY_BYTES] or None,
                   headers={**letter.headers, "error": error})
