"""The work items of the processor pipeline: a consumed message (:class:`Envelope`), its validation
(:func:`decode`) and a micro-batch of them (:class:`Batch`)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from config.settings import RecordSettings
from models.records.intake import estimate_tokens, parse_input, skipped_source
from models.records.schema import ClassificationResult, Record, RecordError
from streaming.observability.metrics import RECORDS_SKIPPED
from streaming.pipeline.offsets import Ownership, TopicPartition

if TYPE_CHECKING:
    from models.inference.source import ModelSource


@dataclass(slots=True)
class Envelope:
    """One consumed message and what became of it."""

    topic: str
    partition: int
    offset: int
    epoch: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float | None  # the message timestamp (producer or broker time), for end-to-end latency
    tokens: int = 0  # the model's token estimate (0 for records that are not classified)
    record: Record | None = None
    rejection: RecordError | None = None  # -> dead letter
    skipped_source: str | None = None  # passed through unclassified
    result: ClassificationResult | None = None

    @property
    def tp(self) -> TopicPartition:
        return self.topic, self.partition

    @property
    def to_classify(self) -> bool:
        return self.record is not None and self.rejection is None and self.skipped_source is None


def decode(env: Envelope, records: RecordSettings, skip_sources: Collection[str], model_source: ModelSource) -> None:
    """Validate ``env.value`` (:mod:`models.records.intake`): set ``record`` and its token estimate, or a ``rejection``
    (-> dead letter), or ``skipped_source`` for records this model must not run on (counted in
    ``RECORDS_SKIPPED``)."""
    try:
        env.record = parse_input(env.value or b"", records)
    except RecordError as exc:
        env.rejection = exc
        return
    env.skipped_source = skipped_source(env.record, skip_sources, model_source)
    if env.skipped_source is not None:
        RECORDS_SKIPPED.labels(source=env.skipped_source).inc()
        return
    env.tokens = estimate_tokens(env.record, model_source)


@dataclass
class Batch:
    """A micro-batch; ``positions`` is what committing it means: ``{tp: (next_offset, epoch)}``; ``assignments``:
    the ``(tp, epoch)`` pairs its records were read under (items may later be dropped, never added)."""

    seq: int
    items: list[Envelope]
    tokens: int = field(init=False)
    positions: dict[TopicPartition, tuple[int, int]] = field(init=False)
    assignments: set[tuple[TopicPartition, int]] = field(init=False)
    abandoned: bool = False

    def __post_init__(self) -> None:
        tokens = 0
        positions: dict[TopicPartition, tuple[int, int]] = {}
        assignments: set[tuple[TopicPartition, int]] = set()
        for env in self.items:
            tp = env.topic, env.partition
            tokens += env.tokens
            positions[tp] = (max(env.offset + 1, positions.get(tp, (0, 0))[0]), env.epoch)
            assignments.add((tp, env.epoch))
        self.tokens, self.positions, self.assignments = tokens, positions, assignments

    def ended(self, ownership: Ownership) -> set[tuple[TopicPartition, int]]:
        """The ``(tp, epoch)`` pairs of :attr:`assignments` that ``ownership`` no longer holds (checked per pair, not
        per record)."""
        return {pair for pair in self.assignments if not ownership.owns(*pair)}
