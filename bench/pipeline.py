"""Pipeline benchmark (a script, not a test): what micro-batching and the pipeline cost and buy.

One run, one model, one batch size:

(a) model only: ``Predictor.predict_batch`` over in-memory records, batch by batch;
(b) the full pipeline: a pre-filled topic -> StreamProcessor -> Elasticsearch + output topic acknowledged;
(c) the per-record pipeline: the same with ``max_batch_records=1`` (one request, one record, one commit);
then the end-to-end latency (produce -> every sink acknowledged) at half load: a produce rate of half the
throughput of (b) (or ``--rate``). With ``--json`` the figures come last as one JSON object: ``model_rps`` (a),
``pipeline_rps`` (b), ``efficiency`` (b/a), ``per_record_rps`` (c), ``batching_gain`` (b/c),
``latency_p50_ms``/``latency_p99_ms`` and the rate they were taken at, and the CPU cost: ``model_cpu_ms_per_1k``
(a) and ``pipeline_cpu_ms_per_1k`` (b: the processor, the broker and Elasticsearch, CPU milliseconds per 1,000
records; on a host where they share the cores this, not the wall clock, says what the pipeline costs).

Kafka is an embedded Tansu broker (streaming/apps/embedded.py), Elasticsearch is noida-db (tests/servers.py).
Throughput of (b) and (c) is measured between the first and the last sink acknowledgement, so the
consumer-group join is not counted.

    python bench/pipeline.py                         # bag demo model, generated records
    python bench/pipeline.py --model artifacts/model --data ../shared/data/arxiv-valid-2018.jsonl.gz
    python bench/pipeline.py --json | tail -1 | jq .efficiency
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.clients import make_producer  # noqa: E402
from config.logging import setup_logging  # noqa: E402
from config.settings import Settings, load_settings  # noqa: E402
from models.model_source import ModelSource  # noqa: E402
from models.record_files import open_text  # noqa: E402
from models.records import ClassificationResult, Record, parse_record  # noqa: E402
from streaming.apps.embedded import EmbeddedBroker  # noqa: E402
from streaming.kafka import create_topics  # noqa: E402
from streaming.observability.metrics import MODEL_METRICS, REGISTRY  # noqa: E402
from streaming.runtime import Runtime  # noqa: E402
from streaming.sinks import SinkFailure  # noqa: E402
from tests.servers import NoidaServer  # noqa: E402


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


def load_records(data: str | None, count: int, seed: int) -> list[Record]:
    if data is None:
        from trainer.sample import generate_sample

        return [parse_record(r) for r in generate_sample(count, seed=seed)]
    records = []
    with open_text(data) as lines:
        for line in lines:
            records.append(parse_record(line))
            if len(records) == count:
                break
    return records


def bench_settings(base: Settings, bootstrap: str, es_url: str, model: str, batch_records: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return load_settings(**{
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [f"bench-{tag}"], "output_topic": f"bench-{tag}.out",
                  "group_id": f"bench-{tag}", "partitions": base.kafka.partitions},
        "elasticsearch": {"url": es_url, "index": f"bench-{tag}"},
        "model": {"model": model, "reload_interval_s": 0, "device": base.model.device},
        "batch": {**base.batch.model_dump(), "max_batch_records": batch_records},
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


def start_processor(settings: Settings, probe: AckProbe) -> tuple[threading.Thread, threading.Event, list]:
    """The processor in a thread, with ``probe`` as its last sink; its runtime is closed when it stops."""
    stop = threading.Event()
    stats: list = []

    def run() -> None:
        with Runtime(settings, extra_sinks=[probe]).open(load_model=False) as runtime:
            stats.append(runtime.processor().run(stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop, stats


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


def histogram_means(names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each processor histogram so far."""
    return {name: (REGISTRY.get_sample_value(f"{name}_sum") or 0.0, REGISTRY.get_sample_value(f"{name}_count") or 0.0)
            for name in names}


STAGES = {"corestream_inference_seconds": "inference", "corestream_es_bulk_seconds": "ES bulk"}


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


class CpuMeter:
    """CPU seconds of this process (the processor's threads) and of each server group between start and stop."""

    def __init__(self, servers: dict[str, int]) -> None:
        self.servers = servers
        self._start = self._read()
        self._end = self._start

    def _read(self) -> dict[str, float]:
        return {"processor": time.process_time(), **{name: group_cpu_s(pgid) for name, pgid in self.servers.items()}}

    def stop(self) -> None:
        self._end = self._read()

    def ms_per_1k(self, records: int) -> dict[str, float]:
        """From this meter's making to its stop, per 1,000 of ``records``."""
        end = self._end
        return {name: round(1e6 * (end[name] - self._start[name]) / records, 1) for name in end}


def stage_report(before: dict[str, tuple[float, float]]) -> str:
    after = histogram_means(list(STAGES))
    parts = []
    for name, label in STAGES.items():
        total, count = after[name][0] - before[name][0], after[name][1] - before[name][1]
        if count:
            parts.append(f"{label} {1000 * total / count:.1f} ms")
    return "mean per batch: " + ", ".join(parts)


def pipeline_throughput(settings: Settings, records: Sequence[Record], timeout_s: float,
                        servers: dict[str, int]) -> tuple[float, str, dict[str, float]]:
    """Records/s between the first and the last acknowledgement, the mean stage times per batch, and the CPU
    milliseconds per 1,000 records of the processor and of each server (from the processor's start to its stop)."""
    before = histogram_means(list(STAGES))
    create_topics(settings)
    produce(settings, records)
    probe = AckProbe(on_first=lambda: CpuMeter(servers))  # the same window as the throughput
    probe.expected = len(records)
    thread, stop, _ = start_processor(settings, probe)
    finished = probe.done.wait(timeout_s)
    cpu = probe.first
    if isinstance(cpu, CpuMeter):
        cpu.stop()
    stop.set()
    thread.join(60)
    if not finished or not isinstance(cpu, CpuMeter):
        raise RuntimeError(f"only {len(probe.acked)}/{len(records)} records acknowledged within {timeout_s}s")
    times = sorted(probe.acked.values())
    first_batch = sum(1 for t in times if t == times[0])
    return ((len(times) - first_batch) / (times[-1] - times[0]), stage_report(before),
            cpu.ms_per_1k(len(times) - first_batch))


def latency(settings: Settings, records: Sequence[Record], rate: float, timeout_s: float) -> np.ndarray:
    create_topics(settings)
    probe = AckProbe()
    thread, stop, _ = start_processor(settings, probe)
    warmup = records[:1]
    probe.expected = 1
    produce(settings, warmup)
    if not probe.done.wait(60):  # the group is joined and the pipeline warm
        raise RuntimeError("the processor did not start")
    timed = records[1:]
    probe.done.clear()
    probe.expected = len(records)
    sent = produce(settings, timed, rate)
    finished = probe.done.wait(timeout_s)
    stop.set()
    thread.join(60)
    if not finished:
        raise RuntimeError(f"only {len(probe.acked)}/{len(records)} records acknowledged within {timeout_s}s")
    return np.array([probe.acked[rid] - t for rid, t in sent.items()])


def repeat_records(records: Sequence[Record], count: int) -> list[Record]:
    """``count`` records cycling through ``records``, ids made unique (``-r1``, ``-r2``... on each repeat)."""
    out = list(records[:count])
    while len(out) < count:
        n = len(out) // len(records)
        out += [r.model_copy(update={"id": f"{r.id}-r{n}"}) for r in records[:count - len(out)]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts/demo-model", help="checkpoint (trained if it is the demo's)")
    parser.add_argument("--data", help="JSONL records (.gz ok; default: generated sample records)")
    parser.add_argument("--records", type=int, default=5000, help="records for (a) and (b)")
    parser.add_argument("--per-record", type=int, default=500, help="records for (c), batch size 1")
    parser.add_argument("--batch", type=int, default=64, help="micro-batch size for (a) and (b)")
    parser.add_argument("--rate", type=float, help="produce rate for the latency run (records/s; default: half of "
                                                   "the pipeline's throughput (b), i.e. at half load)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures, last")
    args = parser.parse_args()
    setup_logging("WARNING", "text")
    base = load_settings()
    if args.model == "artifacts/demo-model":
        from streaming.apps.demo import ensure_model

        ensure_model(Path(args.model), 1500, retrain=False)
    records = load_records(args.data, args.records, seed=1)
    print(f"model {args.model}; {len(records)} records ({args.data or 'generated sample'}); batch {args.batch}; "
          f"max_wait_ms {base.batch.max_wait_ms}; partitions {base.kafka.partitions}")

    with EmbeddedBroker() as broker, NoidaServer() as noida:
        def settings_for(batch: int) -> Settings:
            return bench_settings(base, broker.bootstrap, noida.es_url, args.model, batch)

        servers = {"broker": broker.proc.pid, "elasticsearch": noida.proc.pid}  # each leads its process group
        a, a_cpu = model_only(settings_for(args.batch), records, args.batch)
        print(f"(a) model only:          {a:8.0f} records/s  (best of 5 passes; CPU {a_cpu:.0f} ms per 1k records)")
        b, b_stages, b_cpu = pipeline_throughput(settings_for(args.batch), records, args.timeout, servers)
        print(f"(b) pipeline, batch {args.batch:<4} {b:8.0f} records/s  (Kafka -> model -> ES + topic -> commit; "
              f"{b_stages})")
        print(f"    CPU ms per 1k records: {', '.join(f'{name} {ms:.0f}' for name, ms in b_cpu.items())}")
        c, c_stages, _ = pipeline_throughput(settings_for(1), records[:args.per_record], args.timeout, servers)
        print(f"(c) pipeline, batch 1:    {c:8.0f} records/s  (one record per request; {c_stages})")
        print(f"b/a pipeline efficiency:  {b / a:8.2f}")
        print(f"b/c micro-batching gain:  {b / c:8.2f}")
        rate = args.rate or b / 2
        timed = repeat_records(records, int(rate * args.latency_seconds) + 1)
        lat = latency(settings_for(args.batch), timed, rate, args.timeout)
        p50, p99 = np.percentile(lat, [50, 99]) * 1000
        print(f"latency at {rate:.0f} records/s for {args.latency_seconds:.0f} s (batch {args.batch}): "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max() * 1000:.0f} ms")
    load = os.getloadavg()
    print(f"load average {' '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} CPUs "
          "(figures from a shared machine vary between runs)")
    logging.shutdown()
    if args.json:
        print(json.dumps({
            "model": args.model, "data": args.data or "generated sample", "records": len(records),
            "batch": args.batch, "model_rps": round(a, 1), "pipeline_rps": round(b, 1),
            "efficiency": round(b / a, 3), "per_record_rps": round(c, 1), "batching_gain": round(b / c, 2),
            "model_cpu_ms_per_1k": round(a_cpu, 1), "pipeline_cpu_ms_per_1k": b_cpu,
            "latency_rate_rps": round(rate, 1), "latency_p50_ms": round(float(p50), 1),
            "latency_p99_ms": round(float(p99), 1), "latency_max_ms": round(float(lat.max()) * 1000, 1),
            "load_average_1m": round(load[0], 2), "cpus": os.cpu_count(),
        }))


if __name__ == "__main__":
    main()
