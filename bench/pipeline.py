"""Pipeline benchmark (a script, not a test): what the processor costs around its model, against a bare loop.

Each **round** runs, on fresh servers every time (an embedded Tansu broker and noida-db's Elasticsearch API,
started anew for each run, as the stand-in's cost grows with the data it holds), the same topic, records,
document shape and batch size through:

* the **processor**: a pre-filled topic -> ``StreamProcessor`` -> Elasticsearch + output topic -> commit;
* the **bare loop**: confluent-kafka ``consume(num_messages=batch)``, orjson decode, one bulk request per batch
  through the elasticsearch client, produce to the output topic, wait for its delivery, asynchronous commit.
  No validation, no model, no dead letters, no metrics: the least a consume-bulk-produce-commit loop on this
  host costs, i.e. the limit for the processor's own work.

Rounds alternate the order (bare first, then processor first, ...). CPU, not wall time, is compared (the host
may be shared): CPU milliseconds per 1,000 records between the first and the last acknowledged batch, of this
process (``processor_cpu_ms_per_1k`` / ``bare_cpu_ms_per_1k``), of the model inside the processor
(``model_cpu_ms_per_1k``: the inference thread's CPU time in ``Predictor.predict_proba``, i.e. features and
forward pass; result building counts as the processor's), and of the broker and Elasticsearch processes.
``overhead_ratio`` = (processor - model) / bare and ``model_share`` = model / processor, from the medians.

After the rounds, unless ``--quick``: (a) model only (``predict_batch`` over in-memory records), (c) one record
per batch, and the end-to-end latency at half load, as before (``model_rps``, ``pipeline_rps``,
``efficiency`` = b/a, ``per_record_rps``, ``batching_gain``, ``latency_*``).

``--rss N``: instead, stream N records through one processor (fed by a producer process at up to
``--rss-rate`` records/s) and print its resident memory as it goes, with the slope over the second half.

The model: ``--model DIR``, or ``--arch`` (default: the trainer's default) trained on the
``--train-papers`` most recent papers of ../shared/data/arxiv-train.jsonl.gz (cached in artifacts/bench-models/);
without the shared data, a bag model on generated records. Records: ../shared/data/arxiv-valid-2018.jsonl.gz
(cycled, ids made unique) when present, else generated.

    python bench/pipeline.py --json                     # linear, batch 64, 3 rounds + (a), (c), latency
    python bench/pipeline.py --quick --rounds 5 --batch 512 --json
    python bench/pipeline.py --arch bag --quick --json
    python bench/pipeline.py --rss 200000
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.clients import es_client, make_consumer, make_producer  # noqa: E402
from config.logging import setup_logging  # noqa: E402
from config.settings import Settings, load_settings  # noqa: E402
from models.inference.predictor import Predictor  # noqa: E402
from models.inference.source import ModelSource  # noqa: E402
from models.records.files import open_text  # noqa: E402
from models.records.schema import ClassificationResult, Record, parse_record  # noqa: E402
from streaming.apps.embedded import EmbeddedBroker  # noqa: E402
from streaming.kafka import create_topics  # noqa: E402
from streaming.observability.metrics import MODEL_METRICS, REGISTRY  # noqa: E402
from streaming.runtime import Runtime  # noqa: E402
from streaming.sinks import SinkFailure  # noqa: E402
from streaming.sinks.elasticsearch import BULK_RESPONSE_FIELDS, ensure_index  # noqa: E402
from tests.servers import NoidaServer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TRAIN_FILE = SHARED / "arxiv-train.jsonl.gz"
RECORDS_FILE = SHARED / "arxiv-valid-2018.jsonl.gz"


# ---------------------------------------------------------------------------------------------- model and data

def bench_model(arch: str, papers: int) -> str:
    """A checkpoint of ``arch`` trained on the ``papers`` most recent real papers (generated records without the
    shared data), trained once and cached."""
    from trainer.datasets.training_data import load_records as training_records
    from trainer.training.train import train_model

    real = TRAIN_FILE.exists()
    out = ROOT / "artifacts" / "bench-models" / f"{arch}-{papers if real else 'sample'}"
    if (out / "config.json").exists():
        return str(out)
    print(f"training a {arch} model on {papers} {'real papers' if real else 'generated records'} -> {out}")
    data = sorted(training_records(TRAIN_FILE), key=lambda r: (getattr(r, "date", None) or "", r.id))[-papers:] \
        if real else None
    train_model(data, arch=arch, output_dir=out, from_scratch=True, sample_count=papers, name=f"bench-{arch}",
                progress=False)
    return str(out)


def load_records(data: str | None, count: int, seed: int) -> list[Record]:
    if data is None:
        from trainer.datasets.sample import generate_sample

        return [parse_record(r) for r in generate_sample(count, seed=seed)]
    records = []
    with open_text(data) as lines:
        for line in lines:
            records.append(parse_record(line))
            if len(records) == count:
                break
    return repeat_records(records, count)


def repeat_records(records: Sequence[Record], count: int) -> list[Record]:
    """``count`` records cycling through ``records`` (whose ids are unique); a repeat's id gets ``~`` and its
    position, so ids stay unique however often this is applied."""
    return [records[i] if i < len(records) else
            records[i % len(records)].model_copy(update={"id": f"{records[i % len(records)].id}~{i}"})
            for i in range(count)]


def bench_settings(base: Settings, bootstrap: str, es_url: str, model: str, batch_records: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return load_settings(**{
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [f"bench-{tag}"], "output_topic": f"bench-{tag}.out",
                  "group_id": f"bench-{tag}", "partitions": base.kafka.partitions},
        "elasticsearch": {"url": es_url, "index": f"bench-{tag}"},
        "model": {"model": model, "reload_interval_s": 0, "device": base.model.device},
        "batch": {**base.batch.model_dump(), "max_batch_records": batch_records},
        "metrics": {"enabled": False},
    })


def produce(settings: Settings, records: Sequence[Record], rate: float | None = None) -> dict[str, float]:
    """Publish records (at ``rate`` per second if given); return the produce time of each id."""
    producer = make_producer(settings)
    topic = settings.kafka.input_topics[0]
    sent: dict[str, float] = {}
    start = time.time()
    for i, record in enumerate(records):
        if rate:
            delay = start + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        sent[record.id] = time.time()
        producer.produce(topic, value=record.model_dump_json().encode(), key=record.id.encode())
        producer.poll(0)
    producer.flush(60)
    return sent


# ---------------------------------------------------------------------------------------------- CPU meters

def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of group ``pgid`` (a server and its children;
    Linux /proc; 0 elsewhere)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class ModelClock:
    """CPU seconds spent in ``Predictor.predict_proba`` (features + forward pass) by the threads that call it."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self._original = Predictor.predict_proba

    @contextmanager
    def installed(self) -> Iterator[ModelClock]:
        original, clock = self._original, self

        def timed(predictor: Predictor, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
            started = time.thread_time()
            try:
                return original(predictor, records)
            finally:
                clock.cpu_s += time.thread_time() - started

        Predictor.predict_proba = timed  # type: ignore[method-assign]
        try:
            yield self
        finally:
            Predictor.predict_proba = original  # type: ignore[method-assign]


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each thread of this process so far, by name (Python's thread name, else the OS one: e.g.
    librdkafka's ``rdk:broker…``; several threads of one kind summed, ``sink-write_0`` counts as ``sink-write``)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), comm).split("_")[0].split(" (")[0]
        name = "librdkafka" if name.startswith("rdk:") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


class CpuMeter:
    """CPU seconds of this process, of the model (``clock``) and of each server group between start and stop;
    ``threads``: the processor's threads, per 1,000 records, from :func:`thread_cpu_s`."""

    def __init__(self, servers: dict[str, int], clock: ModelClock | None = None) -> None:
        self.servers, self.clock = servers, clock
        self._start = self._read()
        self._end = self._start
        self._threads_start = self._threads_end = thread_cpu_s()

    def _read(self) -> dict[str, float]:
        model = {"model": self.clock.cpu_s} if self.clock is not None else {}
        return {"process": time.process_time(), **model,
                **{name: group_cpu_s(pgid) for name, pgid in self.servers.items()}}

    def stop(self) -> None:
        self._end = self._read()
        self._threads_end = thread_cpu_s()

    def ms_per_1k(self, records: int) -> dict[str, float]:
        return {name: round(1e6 * (self._end[name] - self._start[name]) / records, 1) for name in self._end}

    def threads_ms_per_1k(self, records: int) -> dict[str, float]:
        spent = {name: 1e6 * (cpu - self._threads_start.get(name, 0.0)) / records
                 for name, cpu in self._threads_end.items()}
        return {name: round(ms, 1) for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.5}


@contextmanager
def fresh_servers() -> Iterator[tuple[EmbeddedBroker, NoidaServer, dict[str, int]]]:
    """A new broker and Elasticsearch stand-in (each leads its process group, which the CPU meter reads)."""
    with EmbeddedBroker() as broker, NoidaServer(services="elasticsearch") as noida:
        yield broker, noida, {"broker": broker.proc.pid, "elasticsearch": noida.proc.pid}


# ---------------------------------------------------------------------------------------------- the processor

class AckProbe:
    """A last sink that notes when each result's batch was acknowledged by every sink before it."""

    name = "ack_probe"

    def __init__(self, on_first: Callable[[], object] | None = None) -> None:
        self.acked: dict[str, float] = {}
        self.done = threading.Event()
        self.expected = 0
        self.on_first = on_first  # called at the first acknowledgement; its answer is kept in ``first``
        self.first: object = None

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        if self.on_first is not None and self.first is None:
            self.first = self.on_first()
        now = time.time()
        for result in results:
            self.acked.setdefault(result.id, now)
        if self.expected and len(self.acked) >= self.expected:
            self.done.set()
        return []

    def check(self) -> bool:
        return True

    def close(self) -> None:
        pass


class CountProbe(AckProbe):
    """An :class:`AckProbe` that only counts (keeps no id: the RSS mode measures the processor, not the probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def write(self, results: Sequence[ClassificationResult]) -> list[SinkFailure]:
        self.count += len(results)
        if self.expected and self.count >= self.expected:
            self.done.set()
        return []


def start_processor(settings: Settings, probe: AckProbe) -> tuple[threading.Thread, threading.Event]:
    """The processor in a thread, with ``probe`` as its last sink; its runtime is closed when it stops."""
    stop = threading.Event()

    def run() -> None:
        with Runtime(settings, extra_sinks=[probe]).open(load_model=False) as runtime:
            runtime.processor().run(stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop


def histogram_means(names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each processor histogram so far."""
    return {name: (REGISTRY.get_sample_value(f"{name}_sum") or 0.0, REGISTRY.get_sample_value(f"{name}_count") or 0.0)
            for name in names}


STAGES = {"corestream_inference_seconds": "inference", "corestream_es_bulk_seconds": "ES bulk"}


def stage_report(before: dict[str, tuple[float, float]]) -> str:
    after = histogram_means(list(STAGES))
    parts = []
    for name, label in STAGES.items():
        total, count = after[name][0] - before[name][0], after[name][1] - before[name][1]
        if count:
            parts.append(f"{label} {1000 * total / count:.1f} ms")
    return "mean per batch: " + ", ".join(parts)


def processor_run(settings: Settings, records: Sequence[Record], timeout_s: float,
                  servers: dict[str, int]) -> dict[str, object]:
    """Records/s between the first and the last acknowledgement and the CPU per 1,000 records in that window."""
    before = histogram_means(list(STAGES))
    create_topics(settings)
    produce(settings, records)
    clock = ModelClock()
    with clock.installed():
        probe = AckProbe(on_first=lambda: CpuMeter(servers, clock))  # the same window as the throughput
        probe.expected = len(records)
        thread, stop = start_processor(settings, probe)
        finished = probe.done.wait(timeout_s)
        cpu = probe.first
        if isinstance(cpu, CpuMeter):
            cpu.stop()
        stop.set()
        thread.join(60)
    if not finished or not isinstance(cpu, CpuMeter):
        raise RuntimeError(f"only {len(probe.acked)}/{len(records)} records acknowledged within {timeout_s}s")
    times = sorted(probe.acked.values())
    timed = len(times) - sum(1 for t in times if t == times[0])
    return {"rps": timed / (times[-1] - times[0]), "stages": stage_report(before), "cpu": cpu.ms_per_1k(timed),
            "threads": cpu.threads_ms_per_1k(timed)}


# ---------------------------------------------------------------------------------------------- the bare loop

def bare_run(settings: Settings, records: Sequence[Record], timeout_s: float,
             servers: dict[str, int]) -> dict[str, object]:
    """The bare loop over the pre-filled topic; the same window and meters as :func:`processor_run`."""
    create_topics(settings)
    produce(settings, records)
    index, out_topic = settings.elasticsearch.index, settings.kafka.output_topic
    batch = settings.batch.max_batch_records
    consumer = make_consumer(settings)
    producer = make_producer(settings)
    es = es_client(settings)
    ensure_index(es, index)
    consumer.subscribe(list(settings.kafka.input_topics))
    model = {"name": "bare", "version": "1", "arch": "none"}
    done, meter, first_batch, first_at, last_at = 0, None, 0, 0.0, 0.0
    deadline = time.monotonic() + timeout_s
    from confluent_kafka import TopicPartition

    try:
        while done < len(records):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare loop: only {done}/{len(records)} records within {timeout_s}s")
            messages = consumer.consume(num_messages=batch, timeout=0.1)
            operations: list[bytes] = []
            positions: dict[tuple[str, int], int] = {}
            classified_at = datetime.now(UTC).isoformat()
            for message in messages:
                if message.error() is not None:
                    continue
                record = orjson.loads(message.value())
                result = orjson.dumps({
                    "id": record["id"],
                    "coreness": {"label": "core", "scores": {"core": 0.8, "non_core": 0.15, "rejected": 0.05}},
                    "categories": [{"label": label, "score": 0.9} for label in record.get("categories") or ()],
                    "model": model, "classified_at": classified_at})
                operations.append(orjson.dumps({"update": {"_index": index, "_id": record["id"],
                                                           "retry_on_conflict": 3}}))
                operations.append(b'{"doc":{"classification":%s},"doc_as_upsert":true}' % result)
                producer.produce(out_topic, value=result, key=message.key())
                positions[(message.topic(), message.partition())] = message.offset() + 1
            if not operations:
                continue
            answer = es.bulk(operations=operations, filter_path=BULK_RESPONSE_FIELDS + ",errors")
            if answer.get("errors"):
                raise RuntimeError("bare loop: Elasticsearch refused documents")
            if producer.flush(30):
                raise RuntimeError("bare loop: output topic not acknowledged")
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                            asynchronous=True)
            done += len(operations) // 2
            if meter is None:
                meter, first_batch, first_at = CpuMeter(servers), done, time.time()
            last_at = time.time()
        meter.stop()
    finally:
        consumer.close()
        es.close()
    timed = done - first_batch
    return {"rps": timed / max(last_at - first_at, 1e-9), "cpu": meter.ms_per_1k(timed)}


# ---------------------------------------------------------------------------------------------- other figures

def model_only(settings: Settings, records: Sequence[Record], batch: int, repeats: int = 5) -> tuple[float, float]:
    """Best of ``repeats`` passes (the machine may be shared), and the CPU milliseconds per 1,000 records."""
    predictor = ModelSource(settings, hooks=MODEL_METRICS).load()
    predictor.predict_batch(records[:batch])  # warm-up
    best = 0.0
    cpu = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(records), batch):
            predictor.predict_batch(records[i:i + batch])
        best = max(best, len(records) / (time.perf_counter() - start))
    return best, 1e6 * (time.process_time() - cpu) / (repeats * len(records))


def latency(settings: Settings, records: Sequence[Record], rate: float, timeout_s: float) -> np.ndarray:
    create_topics(settings)
    probe = AckProbe()
    thread, stop = start_processor(settings, probe)
    probe.expected = 1
    produce(settings, records[:1])
    if not probe.done.wait(60):  # the group is joined and the pipeline warm
        raise RuntimeError("the processor did not start")
    probe.done.clear()
    probe.expected = len(records)
    sent = produce(settings, records[1:], rate)
    finished = probe.done.wait(timeout_s)
    stop.set()
    thread.join(60)
    if not finished:
        raise RuntimeError(f"only {len(probe.acked)}/{len(records)} records acknowledged within {timeout_s}s")
    return np.array([probe.acked[rid] - t for rid, t in sent.items()])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_run(base: Settings, model: str, data: str | None, total: int, batch: int, rate: float,
            timeout_s: float) -> dict[str, object]:
    """``total`` records through one processor thread (this process) fed by a producer process; RSS every 5%
    (``timeout_s`` cuts it short: the slope is then over the second half of what was done)."""
    with fresh_servers() as (broker, noida, _):
        settings = bench_settings(base, broker.bootstrap, noida.es_url, model, batch)
        create_topics(settings)
        feeder = subprocess.Popen([sys.executable, __file__, "--feed", broker.bootstrap, "--feed-topic",
                                   settings.kafka.input_topics[0], "--data", data or "", "--records", str(total),
                                   "--rate", str(rate)])
        probe = CountProbe()
        probe.expected = total
        thread, stop = start_processor(settings, probe)
        samples: list[tuple[int, float]] = []
        started = time.monotonic()
        next_mark = 0
        while not probe.done.wait(1.0):
            count = probe.count
            if count >= next_mark:
                samples.append((count, rss_kib(os.getpid()) / 1024))
                print(f"  {count:>9} records acknowledged: RSS {samples[-1][1]:.0f} MiB "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
                next_mark = count + total // 20
            if time.monotonic() - started > timeout_s:
                break
        samples.append((probe.count, rss_kib(os.getpid()) / 1024))
        stop.set()
        thread.join(60)
        feeder.wait(60)
    half = [(n, mib) for n, mib in samples if n >= samples[-1][0] // 2]  # of what was done in time
    slope = float(np.polyfit([n for n, _ in half], [m for _, m in half], 1)[0]) * 100_000 if len(half) > 1 else None
    return {"records": samples[-1][0], "rss_mib": [[n, round(m, 1)] for n, m in samples],
            "rss_slope_mib_per_100k_second_half": None if slope is None else round(slope, 2),
            "seconds": round(time.monotonic() - started, 1)}


def feed(bootstrap: str, topic: str, data: str | None, total: int, rate: float) -> None:
    """The producer process of ``--rss``: ``total`` records to ``topic`` at up to ``rate`` per second."""
    source = load_records(data or None, min(total, 20_000), seed=1)
    producer = make_producer(load_settings(kafka={"bootstrap_servers": bootstrap}))
    start = time.monotonic()
    for i in range(total):
        record = source[i % len(source)]
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        value = record.model_dump_json().encode() if i < len(source) else \
            record.model_copy(update={"id": f"{record.id}-f{i}"}).model_dump_json().encode()
        while True:
            try:
                producer.produce(topic, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(120)


# ---------------------------------------------------------------------------------------------- main

def median_range(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: --arch trained on real papers, cached)")
    parser.add_argument("--arch", default=None, help="architecture to train when --model is not given "
                                                     "(default: the trainer's default)")
    parser.add_argument("--train-papers", type=int, default=8000, help="papers to train --arch on")
    parser.add_argument("--data", help="JSONL records (.gz ok; default: the shared 2018 papers, else generated)")
    parser.add_argument("--records", type=int, default=10_000, help="records per run")
    parser.add_argument("--batch", type=int, default=64, help="micro-batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of bare loop and processor")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (1: the model's CPU "
                                                                     "is all on the inference thread)")
    parser.add_argument("--quick", action="store_true", help="only the rounds: no (a), (c) or latency")
    parser.add_argument("--per-record", type=int, default=500, help="records for (c), batch size 1")
    parser.add_argument("--rate", type=float, help="produce rate for the latency run (default: half of (b))")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rss", type=int, metavar="N", help="RSS mode: N records through one processor")
    parser.add_argument("--rss-rate", type=float, default=3000.0, help="produce rate of the RSS mode")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures, last")
    parser.add_argument("--feed", help=argparse.SUPPRESS)  # the RSS mode's producer process: bootstrap
    parser.add_argument("--feed-topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        return feed(args.feed, args.feed_topic, args.data, args.records, args.rate)
    setup_logging("WARNING", "text")
    import torch

    torch.set_num_threads(args.torch_threads)
    base = load_settings()
    if args.model is None:
        from trainer.training.config import DEFAULT_ARCH

        args.model = bench_model(args.arch or DEFAULT_ARCH, args.train_papers)
    data = args.data or (str(RECORDS_FILE) if RECORDS_FILE.exists() else None)
    if args.rss:
        figures = rss_run(base, args.model, data, args.rss, args.batch, args.rss_rate, args.timeout)
        load = os.getloadavg()
        print(f"RSS slope over the second half: {figures['rss_slope_mib_per_100k_second_half']} MiB per 100k "
              f"records; load average {' '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} CPUs")
        if args.json:
            print(json.dumps({"model": args.model, "batch": args.batch, **figures, "load_average_1m": load[0]}))
        return
    records = load_records(data, args.records, seed=1)
    print(f"model {args.model}; {len(records)} records ({data or 'generated sample'}); batch {args.batch}; "
          f"{args.rounds} rounds; max_wait_ms {base.batch.max_wait_ms}; partitions {base.kafka.partitions}; "
          f"torch threads {args.torch_threads}; gc threshold {gc.get_threshold()}")

    runs: dict[str, list[dict]] = {"bare": [], "processor": []}
    for round_no in range(args.rounds):
        for mode in (("bare", "processor") if round_no % 2 == 0 else ("processor", "bare")):
            with fresh_servers() as (broker, noida, servers):
                settings = bench_settings(base, broker.bootstrap, noida.es_url, args.model, args.batch)
                run = (bare_run if mode == "bare" else processor_run)(settings, records, args.timeout, servers)
            runs[mode].append(run)
            cpu = run["cpu"]
            print(f"round {round_no + 1} {mode:<9} {run['rps']:7.0f} records/s; CPU ms per 1k records: "
                  + ", ".join(f"{name} {ms:.0f}" for name, ms in cpu.items()), flush=True)
            if "threads" in run:
                print("    threads: " + ", ".join(f"{name} {ms:.0f}" for name, ms in run["threads"].items()))

    def med(mode: str, name: str) -> float:
        return float(statistics.median(run["cpu"][name] for run in runs[mode]))

    processor_ms, model_ms, bare_ms = med("processor", "process"), med("processor", "model"), med("bare", "process")
    overhead_ratio = (processor_ms - model_ms) / bare_ms
    model_share = model_ms / processor_ms
    print(f"processor CPU {median_range([r['cpu']['process'] for r in runs['processor']])} ms per 1k records "
          f"(median, range), of which model {median_range([r['cpu']['model'] for r in runs['processor']])}; "
          f"bare loop {median_range([r['cpu']['process'] for r in runs['bare']])}")
    per_round = [(p["cpu"]["process"] - p["cpu"]["model"]) / b["cpu"]["process"]
                 for p, b in zip(runs["processor"], runs["bare"], strict=True)]
    print(f"overhead_ratio (processor - model) / bare: {overhead_ratio:.2f}; model_share: {model_share:.2f}; "
          f"per round: {', '.join(f'{ratio:.2f}' for ratio in per_round)}")
    figures: dict[str, object] = {
        "processor_cpu_ms_per_1k": round(processor_ms, 1), "model_cpu_ms_per_1k": round(model_ms, 1),
        "bare_cpu_ms_per_1k": round(bare_ms, 1), "overhead_ratio": round(overhead_ratio, 2),
        "model_share": round(model_share, 3),
        "pipeline_rps": round(statistics.median(r["rps"] for r in runs["processor"]), 1),
        "bare_rps": round(statistics.median(r["rps"] for r in runs["bare"]), 1),
        "pipeline_cpu_ms_per_1k": {name: med("processor", name) for name in runs["processor"][0]["cpu"]},
        "bare_pipeline_cpu_ms_per_1k": {name: med("bare", name) for name in runs["bare"][0]["cpu"]},
        "rounds": {mode: [{"rps": round(r["rps"], 1), "cpu_ms_per_1k": r["cpu"],
                           **({"threads_ms_per_1k": r["threads"]} if "threads" in r else {})} for r in rs]
                   for mode, rs in runs.items()},
    }
    if not args.quick:
        with fresh_servers() as (broker, noida, servers):
            def settings_for(batch: int) -> Settings:
                return bench_settings(base, broker.bootstrap, noida.es_url, args.model, batch)

            a, a_cpu = model_only(settings_for(args.batch), records, args.batch)
            b = figures["pipeline_rps"]
            print(f"(a) model only:          {a:8.0f} records/s  (best of 5 passes; CPU {a_cpu:.0f} ms per 1k "
                  "records, result building included)")
            c = processor_run(settings_for(1), records[:args.per_record], args.timeout, servers)["rps"]
            print(f"(c) pipeline, batch 1:    {c:8.0f} records/s  (one record per request)")
            print(f"b/a pipeline efficiency:  {b / a:8.2f}")
            print(f"b/c micro-batching gain:  {b / c:8.2f}")
            rate = args.rate or b / 2
            timed = repeat_records(records, int(rate * args.latency_seconds) + 1)
            lat = latency(settings_for(args.batch), timed, rate, args.timeout)
            p50, p99 = np.percentile(lat, [50, 99]) * 1000
            print(f"latency at {rate:.0f} records/s for {args.latency_seconds:.0f} s (batch {args.batch}): "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max() * 1000:.0f} ms")
        figures.update({
            "model_rps": round(a, 1), "efficiency": round(b / a, 3), "per_record_rps": round(c, 1),
            "batching_gain": round(b / c, 2), "model_only_cpu_ms_per_1k": round(a_cpu, 1),
            "latency_rate_rps": round(rate, 1), "latency_p50_ms": round(float(p50), 1),
            "latency_p99_ms": round(float(p99), 1), "latency_max_ms": round(float(lat.max()) * 1000, 1)})
    load = os.getloadavg()
    print(f"load average {' '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} CPUs "
          "(CPU figures are per record and compared within alternating rounds; the machine may be shared)")
    logging.shutdown()
    if args.json:
        print(json.dumps({"model": args.model, "data": data or "generated sample", "records": len(records),
                          "batch": args.batch, **figures, "load_average_1m": round(load[0], 2),
                          "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
