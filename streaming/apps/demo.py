"""``corestream demo``: the real main job end to end with no external servers.

Starts an embedded Tansu broker, trains (or reuses) a small bag model on the generated sample, creates the
topics, produces sample records (plus a few bad ones, to show the dead-letter topic), runs the stream
processor until the input is drained, prints a results table and a metrics summary, and stops the broker.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.cli import CommandError
from config.clients import make_producer
from config.logging import mask, setup_logging
from config.settings import Settings
from models.records import ClassificationResult
from streaming.apps.embedded import EmbeddedBroker, EmbeddedBrokerError
from streaming.kafka import create_topics, produce
from streaming.observability.metrics import REGISTRY

if TYPE_CHECKING:
    from streaming.pipeline.processor import ProcessorStats

log = logging.getLogger(__name__)

ES_URL_ENV = "CORESTREAM_ES_URL"
DEMO_MODEL_NAME = "corestream-demo"
# Bad input the processor must dead-letter (and not crash on), with the reason each one gets.
BAD_MESSAGES: list[tuple[bytes, str]] = [
    (b'{"id": "bad-json", "title": "an unterminated', "invalid_json"),
    (b"\xff\xfe\x00 binary, not UTF-8", "not_utf8"),
    (b'{"id": "bad-empty-record"}', "invalid_record"),
    (b'{"id": "bad-types", "title": 42, "abstract": ["not", "text"]}', "invalid_record"),
    (b"", "empty_message"),
]


def _with(settings: Settings, section: str, **values: Any) -> Settings:
    """``settings`` with some fields of one section replaced (secrets stay secrets)."""
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update=values)})


def demo_settings(settings: Settings, bootstrap: str, model_dir: Path, output: Path, es_url: str | None) -> Settings:
    settings = _with(settings, "kafka", bootstrap_servers=bootstrap, group_id="corestream-demo")
    settings = _with(settings, "sinks", jsonl_path=str(output), output_topic_enabled=True)
    settings = _with(settings, "elasticsearch", url=es_url)
    return _with(settings, "model", model=str(model_dir), reload_interval_s=0)


def ensure_model(model_dir: Path, train_records: int, retrain: bool, train_data: Path | None = None) -> Path:
    """Reuse the checkpoint in ``model_dir``, or train the default (linear) model on the ``train_records`` most
    recent papers of ``train_data`` (real arXiv metadata), or a small bag model on the generated sample."""
    from models.checkpoint import CheckpointError, read_checkpoint_config

    if not retrain and (model_dir / "config.json").exists():
        try:
            config = read_checkpoint_config(model_dir)
            print(f"reusing model {config['name']}@{config['version']} from {model_dir} (--retrain to train anew)")
            return model_dir
        except (CheckpointError, OSError, KeyError) as exc:
            print(f"cannot reuse {model_dir} ({exc}); training a new model")
    from trainer.train import train_model

    if train_data is not None:
        print(f"training the default model on {train_records} real papers of {train_data} -> {model_dir}")
        return train_model(recent_records(train_data, train_records), output_dir=model_dir, from_scratch=True,
                           name=DEMO_MODEL_NAME, progress=False)
    print(f"training a small bag model on {train_records} generated records -> {model_dir}")
    return train_model(None, arch="bag", output_dir=model_dir, sample_count=train_records, from_scratch=True,
                       name=DEMO_MODEL_NAME)


def recent_records(path: Path, count: int) -> list:
    """The ``count`` most recent usable records of a JSON-lines file (by date)."""
    from trainer.training_data import load_records

    records = load_records(path)
    return sorted(records, key=lambda r: (getattr(r, "date", None) or "", r.id))[-count:]


def produce_sample(settings: Settings, count: int, seed: int) -> tuple[dict[str, dict], int]:
    """Publish ``count`` generated records and the bad messages; return (records by id, bad count)."""
    from trainer.sample import generate_sample

    records = {record["id"]: record for record in generate_sample(count, seed=seed)}
    messages = [(rid.encode(), json.dumps(record).encode()) for rid, record in records.items()]
    step = max(1, len(messages) // (len(BAD_MESSAGES) + 1))
    for i, (value, _reason) in enumerate(BAD_MESSAGES):  # spread among the good ones
        messages.insert((i + 1) * step + i, (None, value))
    producer = make_producer(settings)
    topic = settings.kafka.input_topics[0]
    failed: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    for key, value in messages:
        produce(producer, topic, value=value, key=key, on_delivery=delivered)
    if producer.flush(settings.sinks.delivery_timeout_s) or failed:
        raise CommandError(f"could not publish the sample to {topic}" + (f": {failed[0]}" if failed else ""))
    return records, len(BAD_MESSAGES)


def _counter_values(name: str, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for metric in REGISTRY.collect() if metric.name == name
            for sample in metric.samples if sample.name == f"{name}_total"}


def results_table(results: list[ClassificationResult], records: dict[str, dict], rows: int) -> str:
    header = f"{'id':<16} {'title':<46} {'coreness':<16} top categories"
    lines = [header, "-" * len(header)]
    for result in results[:rows]:
        title = records.get(result.id, {}).get("title", "")
        title = title if len(title) <= 45 else title[:44] + "…"
        label = f"{result.coreness.label} {getattr(result.coreness.scores, result.coreness.label):.2f}"
        top = ", ".join(f"{c.label} {c.score:.2f}" for c in result.categories[:3]) or "(none above threshold)"
        lines.append(f"{result.id:<16} {title:<46} {label:<16} {top}")
    if len(results) > rows:
        lines.append(f"... and {len(results) - rows} more in the results file")
    return "\n".join(lines)


def process_until_drained(settings: Settings, timeout_s: float) -> tuple[ProcessorStats, float, bool]:
    """Run the stream processor with the configured sinks until the input is drained (or ``timeout_s``).

    Returns (stats, seconds, timed out). Every client is closed on return, before the broker stops.
    """
    from streaming.runtime import Runtime

    with Runtime(settings).open(load_model=False) as runtime:
        es_url = settings.elasticsearch.url
        print(f"sinks: {', '.join(sink.name for sink in runtime.sinks)}" + (f" ({mask(es_url)})" if es_url else ""))
        unreachable = [sink.name for sink in runtime.sinks if not sink.check()]
        if unreachable:
            raise CommandError(f"sink(s) not reachable: {', '.join(unreachable)}"
                               + (f" (Elasticsearch at {mask(es_url)})" if "elasticsearch" in unreachable else ""))
        processor = runtime.processor()
        stop = threading.Event()
        watchdog = threading.Timer(timeout_s, stop.set)
        watchdog.start()
        started = time.monotonic()
        try:
            stats = processor.run(stop, until_drained=True)
        finally:
            watchdog.cancel()
    return stats, time.monotonic() - started, stop.is_set()


def print_report(results: list[ClassificationResult], sample: dict[str, dict], bad: int, stats: ProcessorStats,
                 elapsed: float, rows: int, settings: Settings) -> bool:
    """The results table and the metrics summary; True when every record was classified or dead-lettered."""
    print()
    print(results_table(results, sample, rows))
    dead = _counter_values("corestream_records_dead_lettered", "reason")
    labels = Counter(result.coreness.label for result in results)
    print()
    print("metrics")
    print(f"  consumed        {stats.consumed}")
    print(f"  classified      {stats.classified}  ({', '.join(f'{k} {v}' for k, v in sorted(labels.items()))})")
    print(f"  dead-lettered   {stats.dead_lettered}  ("
          + ", ".join(f"{reason} {int(n)}" for reason, n in sorted(dead.items()) if n) + ")")
    print(f"  batches         {stats.batches}, commits {stats.commits}")
    print(f"  throughput      {stats.classified / elapsed:.0f} records/s "
          f"({elapsed:.1f} s, including the consumer-group join)")
    print(f"  results         {settings.sinks.jsonl_path} ({len(results)} lines); "
          f"output topic {settings.kafka.output_topic}")
    missing = set(sample) - {result.id for result in results}
    if missing or stats.dead_lettered != bad:
        print(f"INCOMPLETE: {len(missing)} records without a result, {stats.dead_lettered} of {bad} bad messages "
              "dead-lettered")
        return False
    print(f"all {len(sample)} records classified and all {bad} bad messages dead-lettered")
    return True


def run_demo(settings: Settings, *, records: int, model_dir: Path, output: Path, retrain: bool = False,
             train_records: int = 1500, rows: int = 12, timeout_s: float = 300.0, seed: int = 1,
             train_data: Path | None = None) -> int:
    """The whole demo; returns the exit status (0 when every record was classified or dead-lettered)."""
    model_dir = ensure_model(model_dir, train_records, retrain, train_data)
    es_url = os.environ.get(ES_URL_ENV) or settings.elasticsearch.url
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    try:
        broker = EmbeddedBroker().start()
    except EmbeddedBrokerError as exc:
        raise CommandError(str(exc)) from None
    try:
        print(f"embedded Kafka broker (Tansu) on {broker.bootstrap}")
        settings = demo_settings(settings, broker.bootstrap, model_dir, output, es_url)
        create_topics(settings)
        sample, bad = produce_sample(settings, records, seed)
        print(f"produced {len(sample)} records and {bad} bad messages to {settings.kafka.input_topics[0]}")
        stats, elapsed, timed_out = process_until_drained(settings, timeout_s)
        gc.collect()  # destroy the processor's Kafka clients before their broker goes away
    finally:
        broker.stop()
    if timed_out:
        print(f"timed out after {timeout_s:.0f} s")
    results = [ClassificationResult.model_validate_json(line) for line in output.read_text().splitlines()]
    complete = print_report(results, sample, bad, stats, elapsed, rows, settings)
    return 0 if complete and not timed_out else 1


def _demo_command(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging(args.log_level or "WARNING", "text")  # keep the demo's output readable
    if args.records < 1:
        raise CommandError("--records must be at least 1")
    return run_demo(settings, records=args.records, model_dir=Path(args.model_dir), output=Path(args.output),
                    retrain=args.retrain, train_records=args.train_records, rows=args.rows,
                    timeout_s=args.timeout, train_data=Path(args.train_data) if args.train_data else None)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the main job end to end on an embedded broker (no external servers)",
        description="Start an embedded Kafka broker, train or reuse a small model, produce sample records "
                    "(and a few bad ones), classify them with the stream processor into a JSONL file and the "
                    f"output topic (and Elasticsearch when ${ES_URL_ENV} is set), then print the results.")
    p.add_argument("--records", type=int, default=300, help="sample records to produce (default: %(default)s)")
    p.add_argument("--model-dir", default="artifacts/demo-model", help="model to reuse or train (default: %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if --model-dir has one")
    p.add_argument("--train-records", type=int, default=1500, help="training sample size (default: %(default)s)")
    p.add_argument("--train-data", metavar="FILE",
                   help="train on real papers: JSON lines (.gz ok) such as ../shared/data/arxiv-train.jsonl.gz or "
                        "a `dataset --from-arxiv-snapshot` build (default: the generated sample)")
    p.add_argument("--output", default="runs/demo/results.jsonl", help="results file (default: %(default)s)")
    p.add_argument("--rows", type=int, default=12, help="rows of the results table (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up after this many seconds (default: %(default)s)")
    p.set_defaults(func=_demo_command)
