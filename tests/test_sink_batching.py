"""Sink batching (issue 13): the sink stage gathers inference batches into one sink write, keeps several writes in
flight, passes batches on (so commits happen) strictly in order, and keeps the failure rules."""

from __future__ import annotations

import json
import queue
import random
import threading
import time

import pytest

from config.clients import make_producer
from streaming.pipeline.dead_letters import DeadLetterWriter
from streaming.pipeline.envelope import Batch, Envelope
from streaming.pipeline.offsets import Ownership
from streaming.pipeline.stages import SinkStage
from streaming.sinks import JsonlSink
from tests.helpers_stream import (
    ProcessorThread,
    committed_offsets,
    es_docs,
    produce,
    read_topic,
    record_messages,
    sample_records,
    stream_settings,
)
from tests.test_sink_failures import make_result


class SlowRecordingSink:
    """A JSONL sink that takes a random 0-30 ms per write and notes the size of each write."""

    def __init__(self, sink: JsonlSink) -> None:
        self.sink, self.name, self.stores, self.sizes = sink, sink.name, True, []
        self._lock = threading.Lock()

    def write(self, results):
        time.sleep(random.uniform(0, 0.03))
        with self._lock:
            self.sizes.append(len(results))
        return self.sink.write(results)

    def check(self) -> bool:
        return True

    def close(self) -> None:
        self.sink.close()


def test_batches_are_gathered_written_concurrently_and_passed_on_in_order(tansu, tmp_path) -> None:
    settings = stream_settings(tansu.bootstrap)
    sink = SlowRecordingSink(JsonlSink(tmp_path / "out.jsonl"))
    inbox: queue.Queue = queue.Queue()
    outbox: queue.Queue = queue.Queue()
    crashes: list[BaseException] = []
    ownership = Ownership()
    ownership.assign([("in", 0)])  # epoch 1
    stage = SinkStage([sink], DeadLetterWriter(make_producer(settings), settings), ownership, backoff_s=0.1,
                      max_backoff_s=0.5, dlq_timeout_s=15, max_dead_letter_bytes=1_000_000,
                      on_outage=lambda down: None, group_records=40, group_wait_ms=50, max_in_flight=3,
                      inbox=inbox, outbox=outbox, abort=threading.Event(), on_crash=crashes.append,
                      on_progress=lambda: None)
    stage.start()
    for seq in range(1, 61):
        items = [Envelope(topic="in", partition=0, offset=seq * 8 + i, epoch=1, key=None, value=b"{}",
                          timestamp_s=None, result=make_result(f"b{seq}-{i}")) for i in range(8)]
        inbox.put(Batch(seq, items))
        time.sleep(0.001)
    inbox.put(None)
    passed = []
    while (batch := outbox.get(timeout=30)) is not None:
        passed.append(batch.seq)
    stage.join(10)
    assert not crashes
    assert passed == list(range(1, 61))  # every batch, in order, although writes finished out of order
    assert sum(sink.sizes) == 480 and max(sink.sizes) > 8 and max(sink.sizes) <= 40 + 8
    lines = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(lines) == sorted(f"b{s}-{i}" for s in range(1, 61) for i in range(8))  # each once
    assert stage.classified == 480


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_processor_with_sink_batching_writes_everything_once_and_commits_to_the_end(noida, es_url: str) -> None:
    settings = stream_settings(noida.bootstrap, es_url, batch={"max_batch_records": 16, "max_wait_ms": 20},
                               sinks={"batch_records": 400, "max_in_flight": 3})
    topic = settings.kafka.input_topics[0]
    records = sample_records(1_500, prefix="sb")
    ends = produce(noida.bootstrap, topic, record_messages(records))
    stats = ProcessorThread(settings, until_drained=True).start().join(150)
    assert stats.classified == len(records) and stats.dead_lettered == 0
    assert set(es_docs(es_url, settings.elasticsearch.index)) == {r["id"] for r in records}
    keys = [m.key.decode() for m in read_topic(noida.bootstrap, settings.kafka.output_topic)]
    assert sorted(keys) == sorted(r["id"] for r in records)  # each once
    assert committed_offsets(noida.bootstrap, settings.kafka.group_id, topic) == {
        p: ends.get(p, -1001) for p in range(3)}
