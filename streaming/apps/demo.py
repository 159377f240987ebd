"""``corestream demo``: the real main job end to end with no external servers.

Starts an embedded Tansu broker, trains (or reuses) a model, creates the topics, produces records (plus a few bad
ones, to show the dead-letter topic), runs the stream processor until the input is drained, prints a results table
and a metrics summary, and stops the broker. By default the model is a small bag model trained on the generated
sample (word salad, and the summary says so) and the records are generated too; with ``--train-data FILE`` a
linear model is trained on real papers of FILE and classifies the most recent papers of FILE, held out from its
training, and the summary compares its answers with their own arXiv categories.
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
from models.records.schema import ClassificationResult, Record
from models.registry.provenance import generated_sample_warning, trained_on
from streaming.apps.embedded import EmbeddedBroker, EmbeddedBrokerError
from streaming.kafka import create_topics, produce
from streaming.observability.metrics import REGISTRY

if TYPE_CHECKING:
    from streaming.pipeline.processor import ProcessorStats

log = logging.getLogger(__name__)

ES_URL_ENV = "CORESTREAM_ES_URL"
DEMO_MODEL_NAME = "corestream-demo"
DEFAULT_SAMPLE_TRAIN = 1500  # generated records for the bag model
DEFAULT_REAL_TRAIN = 10000  # real papers for the linear model (--train-data)
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


class Papers(list):
    """Training records that name their source (the model card records it, see ``trainer.evaluation.card``)."""

    def __init__(self, records: list[Record], source: str) -> None:
        super().__init__(records)
        self.source = source


def real_split(path: Path, train_count: int, held_out_count: int) -> tuple[Papers, list[Record]]:
    """The ``held_out_count`` most recent usable papers of ``path`` (by date) to classify, and the
    ``train_count`` papers before them to train on."""
    from trainer.datasets.training_data import DataError, load_records

    try:
        papers = sorted(load_records(path), key=lambda r: (getattr(r, "date", None) or "", r.id))
    except (DataError, OSError) as exc:
        raise CommandError(f"cannot read --train-data {path}: {exc}") from None
    if len(papers) < held_out_count + 2:
        raise CommandError(f"{path} has {len(papers)} usable papers: need --records ({held_out_count}) + 2 at least")
    held_out = papers[-held_out_count:]
    train = papers[-held_out_count - train_count:-held_out_count]
    source = f"{path} ({len(train)} papers before the {len(held_out)} most recent, held out for the demo)"
    return Papers(train, source), held_out


def ensure_model(model_dir: Path, retrain: bool, train: Papers | None, sample_count: int) -> dict[str, Any]:
    """Reuse the checkpoint in ``model_dir`` or train one; return its config.

    Without ``train``: any readable checkpoint is reused, else a small bag model is trained on ``sample_count``
    generated records. With ``train`` (real papers): a checkpoint is reused only if it was trained on exactly
    those papers (its data fingerprint), else the default (linear) model is trained on them.
    """
    from models.archs.checkpoint import CheckpointError, read_checkpoint_config
    from trainer.datasets.training_data import fingerprint
    from trainer.training.train import train_model

    config = None
    if not retrain and (model_dir / "config.json").exists():
        try:
            config = read_checkpoint_config(model_dir)
        except (CheckpointError, OSError) as exc:
            print(f"cannot reuse {model_dir} ({exc}); training a new model")
    if config is not None and train is not None and config.get("data_fingerprint") != fingerprint(train):
        print(f"not reusing {model_dir}: it was trained on {trained_on(config)}")
        config = None
    if config is not None:
        print(f"reusing model {config['name']}@{config['version']} from {model_dir}, trained on "
              f"{trained_on(config)} (--retrain to train anew)")
        return config
    if train is not None:
        print(f"training the default (linear) model on {train.source} -> {model_dir}")
        path = train_model(train, output_dir=model_dir, from_scratch=True, name=DEMO_MODEL_NAME, progress=False)
    else:
        print(f"training a small bag model on {sample_count} generated records -> {model_dir}")
        path = train_model(None, arch="bag", output_dir=model_dir, sample_count=sample_count, from_scratch=True,
                           name=DEMO_MODEL_NAME)
    return read_checkpoint_config(path)


def generated_records(count: int, seed: int) -> dict[str, dict]:
    """``count`` generated records by id (another seed than the demo model's training sample)."""
    from trainer.datasets.sample import generate_sample

    return {record["id"]: record for record in generate_sample(count, seed=seed)}


def produce_records(settings: Settings, records: dict[str, dict]) -> int:
    """Publish ``records`` and the bad messages spread among them; return the bad count."""
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
        raise CommandError(f"could not publish the records to {topic}" + (f": {failed[0]}" if failed else ""))
    return len(BAD_MESSAGES)


def _counter_values(name: str, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for metric in REGISTRY.collect() if metric.name == name
            for sample in metric.samples if sample.name == f"{name}_total"}


def results_table(results: list[ClassificationResult], records: dict[str, dict], rows: int,
                  truth: dict[str, Record] | None = None) -> str:
    """Id, title, coreness and top categories per result; with ``truth``, the paper's own arXiv categories too."""
    header = f"{'id':<16} {'title':<46} {'coreness':<16} top categories" + ("  [arXiv's own]" if truth else "")
    lines = [header, "-" * len(header)]
    for result in results[:rows]:
        title = records.get(result.id, {}).get("title", "")
        title = title if len(title) <= 45 else title[:44] + "…"
        label = f"{result.coreness.label} {getattr(result.coreness.scores, result.coreness.label):.2f}"
        top = ", ".join(f"{c.label} {c.score:.2f}" for c in result.categories[:3]) or "(none above threshold)"
        own = f"  [{', '.join(truth[result.id].categories[:3])}]" if truth and result.id in truth else ""
        lines.append(f"{result.id:<16} {title:<46} {label:<16} {top}{own}")
    if len(results) > rows:
        lines.append(f"... and {len(results) - rows} more in the results file")
    return "\n".join(lines)


def agreement(results: list[ClassificationResult], truth: dict[str, Record]) -> list[str]:
    """How the answers compare with the held-out papers' own arXiv categories and their coreness proxy label."""
    scored = [(result, truth[result.id]) for result in results if result.id in truth]
    if not scored:
        return []
    n = len(scored)
    top_hit = sum(bool(r.categories) and r.categories[0].label in paper.categories for r, paper in scored)
    core_hit = sum(r.coreness.label == paper.coreness for r, paper in scored)
    return [f"  top category    one of the paper's own arXiv categories for {top_hit} of {n} ({top_hit / n:.0%})",
            f"  coreness        agrees with the arXiv-category proxy for {core_hit} of {n} ({core_hit / n:.0%})"]


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


def print_report(results: list[ClassificationResult], records: dict[str, dict], bad: int, stats: ProcessorStats,
                 elapsed: float, rows: int, settings: Settings, model: dict[str, Any],
                 truth: dict[str, Record] | None = None) -> bool:
    """The results table and the metrics summary; True when every record was classified or dead-lettered."""
    print()
    print(results_table(results, records, rows, truth))
    dead = _counter_values("corestream_records_dead_lettered", "reason")
    labels = Counter(result.coreness.label for result in results)
    print()
    print("metrics")
    print(f"  model           {model['name']}@{model['version']} ({model['arch']}), trained on "
          f"{trained_on(model)}")
    print(f"  records         {'held-out real papers' if truth else 'generated (word salad)'}")
    print(f"  consumed        {stats.consumed}")
    print(f"  classified      {stats.classified}  ({', '.join(f'{k} {v}' for k, v in sorted(labels.items()))})")
    if truth:
        print("\n".join(agreement(results, truth)))
    print(f"  dead-lettered   {stats.dead_lettered}  ("
          + ", ".join(f"{reason} {int(n)}" for reason, n in sorted(dead.items()) if n) + ")")
    print(f"  batches         {stats.batches}, commits {stats.commits}")
    print(f"  throughput      {stats.classified / elapsed:.0f} records/s "
          f"({elapsed:.1f} s, including the consumer-group join)")
    print(f"  results         {settings.sinks.jsonl_path} ({len(results)} lines); "
          f"output topic {settings.kafka.output_topic}")
    if warning := generated_sample_warning(model):
        print(f"NOTE: {warning} Try `corestream demo --train-data ../shared/data/arxiv-train.jsonl.gz`.")
    missing = set(records) - {result.id for result in results}
    if missing or stats.dead_lettered != bad:
        print(f"INCOMPLETE: {len(missing)} records without a result, {stats.dead_lettered} of {bad} bad messages "
              "dead-lettered")
        return False
    print(f"all {len(records)} records classified and all {bad} bad messages dead-lettered")
    return True


def run_demo(settings: Settings, *, records: int, model_dir: Path, output: Path, retrain: bool = False,
             train_records: int | None = None, rows: int = 12, timeout_s: float = 300.0, seed: int = 1,
             train_data: Path | None = None) -> int:
    """The whole demo; returns the exit status (0 when every record was classified or dead-lettered)."""
    truth: dict[str, Record] | None = None
    if train_data is None:
        model = ensure_model(model_dir, retrain, None, train_records or DEFAULT_SAMPLE_TRAIN)
        to_classify = generated_records(records, seed)
    else:
        train, held_out = real_split(train_data, train_records or DEFAULT_REAL_TRAIN, records)
        model = ensure_model(model_dir, retrain, train, len(train))
        truth = {paper.id: paper for paper in held_out}
        to_classify = {paper.id: {"id": paper.id, "title": paper.title, "abstract": paper.abstract}
                       for paper in held_out}
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
        bad = produce_records(settings, to_classify)
        kind = "held-out papers" if truth else "generated records"
        print(f"produced {len(to_classify)} {kind} and {bad} bad messages to {settings.kafka.input_topics[0]}")
        stats, elapsed, timed_out = process_until_drained(settings, timeout_s)
        gc.collect()  # destroy the processor's Kafka clients before their broker goes away
    finally:
        broker.stop()
    if timed_out:
        print(f"timed out after {timeout_s:.0f} s")
    results = [ClassificationResult.model_validate_json(line) for line in output.read_text().splitlines()]
    complete = print_report(results, to_classify, bad, stats, elapsed, rows, settings, model, truth)
    return 0 if complete and not timed_out else 1


def _demo_command(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging(args.log_level or "WARNING", "text")  # keep the demo's output readable
    if args.records < 1 or (args.train_records is not None and args.train_records < 2):
        raise CommandError("--records must be at least 1 and --train-records at least 2")
    return run_demo(settings, records=args.records, model_dir=Path(args.model_dir), output=Path(args.output),
                    retrain=args.retrain, train_records=args.train_records, rows=args.rows,
                    timeout_s=args.timeout, train_data=Path(args.train_data) if args.train_data else None)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the main job end to end on an embedded broker (no external servers)",
        description="Start an embedded Kafka broker, train or reuse a model, produce records (and a few bad "
                    "ones), classify them with the stream processor into a JSONL file and the output topic (and "
                    f"Elasticsearch when ${ES_URL_ENV} is set), then print the results. By default the model and "
                    "the records are generated word salad; with --train-data, real papers.")
    p.add_argument("--records", type=int, default=300,
                   help="records to classify: generated, or with --train-data the most recent papers of FILE, held "
                        "out from training (default: %(default)s)")
    p.add_argument("--model-dir", default="artifacts/demo-model",
                   help="model to reuse or train (default: %(default)s, also the default model of classify, "
                        "serve and run)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if --model-dir has a fitting one")
    p.add_argument("--train-records", type=int,
                   help=f"training records: generated (default {DEFAULT_SAMPLE_TRAIN}), or with --train-data the "
                        f"papers before the held-out ones (default {DEFAULT_REAL_TRAIN})")
    p.add_argument("--train-data", metavar="FILE",
                   help="train the default (linear) model on real papers and classify held-out ones: JSON lines "
                        "(.gz ok) such as ../shared/data/arxiv-train.jsonl.gz or a `corestream-train dataset` build; "
                        "a model in --model-dir is reused only if trained on the same papers")
    p.add_argument("--output", default="runs/demo/results.jsonl", help="results file (default: %(default)s)")
    p.add_argument("--rows", type=int, default=12, help="rows of the results table (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up after this many seconds (default: %(default)s)")
    p.set_defaults(func=_demo_command)
