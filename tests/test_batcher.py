"""MicroBatcher: batches close on record count, token budget or waiting time, whichever comes first."""

from __future__ import annotations

import pytest

from streaming.pipeline.batcher import MicroBatcher


def test_closes_on_record_count() -> None:
    batcher = MicroBatcher(max_records=3, max_tokens=1_000, max_wait_ms=1_000)
    assert batcher.add("a", 1, now=0.0) is None
    assert batcher.add("b", 1, now=0.0) is None
    assert batcher.add("c", 1, now=0.0) == ["a", "b", "c"]
    assert len(batcher) == 0 and batcher.tokens == 0


def test_token_budget_closes_the_batch_before_the_item_that_overflows_it() -> None:
    batcher = MicroBatcher(max_records=100, max_tokens=10, max_wait_ms=1_000)
    assert batcher.add("a", 4, now=0.0) is None
    assert batcher.add("b", 4, now=0.0) is None
    assert batcher.add("c", 4, now=0.0) == ["a", "b"]  # 12 > 10: "c" starts the next batch
    assert len(batcher) == 1 and batcher.tokens == 4
    assert batcher.add("d", 6, now=0.0) == ["c", "d"]  # exactly at the budget: full


def test_item_above_the_budget_is_a_batch_of_its_own() -> None:
    batcher = MicroBatcher(max_records=100, max_tokens=10, max_wait_ms=1_000)
    assert batcher.add("huge", 50, now=0.0) == ["huge"]
    batcher.add("a", 1, now=0.0)
    assert batcher.add("huge", 50, now=0.0) == ["a"]
    assert batcher.due(now=0.0)  # the oversized item is full on its own: due at once
    assert batcher.take() == ["huge"]


def test_due_after_max_wait_counted_from_the_oldest_item() -> None:
    batcher = MicroBatcher(max_records=100, max_tokens=1_000, max_wait_ms=200)
    assert not batcher.due(now=5.0)  # empty is never due
    batcher.add("a", 1, now=10.0)
    batcher.add("b", 1, now=10.15)
    assert not batcher.due(now=10.19)
    assert batcher.due(now=10.25)
    assert batcher.take() == ["a", "b"]
    assert not batcher.due(now=99.0)
    batcher.add("c", 1, now=100.0)  # the clock restarts with the next batch
    assert not batcher.due(now=100.1)


def test_zero_wait_is_due_immediately() -> None:
    batcher = MicroBatcher(max_records=100, max_tokens=1_000, max_wait_ms=0)
    batcher.add("a", 1, now=1.0)
    assert batcher.due(now=1.0)


def test_discard_drops_matching_items_and_their_tokens() -> None:
    batcher = MicroBatcher(max_records=100, max_tokens=100, max_wait_ms=1_000)
    for partition, tokens in [(0, 10), (1, 20), (0, 30), (2, 5)]:
        batcher.add((partition, tokens), tokens, now=0.0)
    assert batcher.discard(lambda item: item[0] == 0) == 2
    assert batcher.tokens == 25 and len(batcher) == 2
    assert batcher.discard(lambda item: True) == 2
    assert not batcher.due(now=1e9)
    assert batcher.take() == []


def test_negative_token_estimates_count_as_zero_and_limits_are_validated() -> None:
    batcher = MicroBatcher(max_records=2, max_tokens=5, max_wait_ms=10)
    batcher.add("a", -3, now=0.0)
    assert batcher.tokens == 0
    with pytest.raises(ValueError):
        MicroBatcher(max_records=0, max_tokens=5, max_wait_ms=10)
