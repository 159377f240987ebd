"""Asynchronous offset commits on real brokers: they land while the processor runs, a restart resumes exactly
where the last commit left off, and a commit that fails (the broker is down) is retried with the positions that
came since."""

from __future__ import annotations

import queue
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streaming.pipeline.commits import Committer
from streaming.pipeline.envelope import Batch, Envelope
from streaming.pipeline.offsets import Ownership
from tests.helpers_stream import (
    committed_offsets,
    es_docs,
    produce,
    record_messages,
    running,
    sample_records,
    stream_settings,
    wait_for,
)
from tests.servers import NoidaServer


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_commits_land_while_running_and_a_restart_resumes_after_them(kafka_bootstrap: str, es_url: str) -> None:
    settings = stream_settings(kafka_bootstrap, es_url)
    topic, group = settings.kafka.input_topics[0], settings.kafka.group_id
    first, second = sample_records(600, prefix="first"), sample_records(400, prefix="second")
    ends = produce(kafka_bootstrap, topic, record_messages(first))

    with running(settings) as proc:
        # Landed by the asynchronous commits of the running loop, not by the final commit of a stop.
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic) == {p: ends.get(p, -1001) for p in range(3)},
                 90, "the first records committed while the processor runs")
        assert proc.processor.committer.in_flight() is False
        stats = proc.stop()
    assert stats.consumed == len(first) and stats.commits >= 1 and stats.failed_commits == 0

    for partition, end in produce(kafka_bootstrap, topic, record_messages(second)).items():
        ends[partition] = end
    with running(settings, until_drained=True) as proc:
        stats = proc.join(120)
    assert stats.consumed == len(second)  # nothing read again, nothing skipped
    assert committed_offsets(kafka_bootstrap, group, topic) == {p: ends.get(p, -1001) for p in range(3)}
    assert set(es_docs(es_url, settings.elasticsearch.index)) == {r["id"] for r in first + second}


def _batch(seq: int, topic: str, offsets: dict[int, int], ownership: Ownership) -> Batch:
    """A done batch whose last record of each partition is at ``offsets[partition]``."""
    return Batch(seq, [Envelope(topic=topic, partition=p, offset=o, epoch=ownership.epoch((topic, p)) or 0, key=None,
                                value=None, timestamp_s=None) for p, o in offsets.items()])


def _serve_until(consumer: Consumer, committer: Committer, done, timeout: float) -> None:
    """The processor loop's share of committing: poll (serves ``on_commit``) and commit, until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        committer.commit(consumer)
        consumer.poll(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failed_async_commit_is_retried_with_the_positions_that_came_since(tmp_path) -> None:
    with NoidaServer(tmp_path / "noida", services="kafka") as broker:
        settings = stream_settings(broker.bootstrap)
        topic, group = settings.kafka.input_topics[0], settings.kafka.group_id
        produce(broker.bootstrap, topic, record_messages(sample_records(90)))
        ownership = Ownership()
        ownership.assign([(topic, p) for p in range(3)])
        done: queue.Queue[Batch | None] = queue.Queue()
        committer = Committer(ownership, done)
        # Assigned, not subscribed: the broker's restart must not rebalance the partitions away (which would make
        # their positions stale, correctly never committed), so that the retry itself is what is shown.
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
                             "on_commit": committer.on_commit})
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        try:
            done.put(_batch(1, topic, {0: 4, 1: 2}, ownership))
            committer.collect()
            _serve_until(consumer, committer, lambda: not committer.pending(), 30)
            assert committer.commits == 1 and committer.failed_commits == 0
            assert committer.positions.committed == {(topic, 0): 5, (topic, 1): 3}

            broker.stop()
            time.sleep(1.5)  # the broker's Kafka listener is gone
            done.put(_batch(2, topic, {0: 7}, ownership))
            committer.collect()
            _serve_until(consumer, committer, lambda: committer.failed_commits >= 1, 60)
            assert committer.pending() and committer.positions.committed[(topic, 0)] == 5

            done.put(_batch(3, topic, {0: 9, 2: 1}, ownership))  # came while the broker was down
            committer.collect()
            broker.start()
            _serve_until(consumer, committer, lambda: not committer.pending(), 90)
            assert committer.positions.committed == {(topic, 0): 10, (topic, 1): 3, (topic, 2): 2}
        finally:
            consumer.close()
        assert committed_offsets(broker.bootstrap, group, topic) == {0: 10, 1: 3, 2: 2}
