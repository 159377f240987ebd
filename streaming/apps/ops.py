"""Operator commands: ``corestream produce FILE``, ``classify TITLE ABSTRACT`` and ``topics create``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from tqdm import tqdm

from config.cli import CommandError
from config.clients import make_producer
from config.settings import ModelSettings, Settings
from models.records.files import numbered_lines, open_text
from models.records.schema import RecordError, parse_record
from models.registry.provenance import generated_sample_warning
from streaming.kafka import create_topics, produce, topic_names

# --------------------------------------------------------------------------- reading record files


def record_key(record: Any) -> bytes | None:
    """The record's id (flat ``id`` or INSPIRE ``control_number``) as the message key, if it has one."""
    if not isinstance(record, dict):
        return None
    value = record.get("id", record.get("control_number"))
    return str(value).encode("utf-8") if isinstance(value, str | int) and not isinstance(value, bool) else None


def _documents(data: Any) -> list[Any]:
    """A JSON document -> its records: an array, an INSPIRE/Elasticsearch search result, or one record."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("hits"), dict) and isinstance(data["hits"].get("hits"), list):
        hits = data["hits"]["hits"]
        return [hit.get("metadata", hit.get("_source", hit)) if isinstance(hit, dict) else hit for hit in hits]
    return [data]


def _whole_document(path: Path) -> list[Any] | None:
    """The file's records if it holds one JSON document (not JSON lines), else None."""
    with open_text(path) as handle:
        first_line = handle.readline()
    start = first_line.lstrip()[:1]
    if start not in ("[", "{"):
        return None
    if start == "{":
        try:
            first = json.loads(first_line)
        except json.JSONDecodeError:
            pass  # a pretty-printed document, or JSON lines starting with a bad line
        else:
            if not (isinstance(first, dict) and "hits" in first):
                return None  # JSON lines
    with open_text(path) as handle:
        try:
            return _documents(json.load(handle))
        except json.JSONDecodeError:
            return None


def iter_messages(path: str | Path) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per record in a JSONL file (``.gz`` ok; lines sent as-is, bad ones too: the processor
    dead-letters them), a JSON array, or an INSPIRE search-result JSON. Blank lines are not records."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    documents = _whole_document(path)
    if documents is not None:
        for record in documents:
            yield record_key(record), json.dumps(record, ensure_ascii=False).encode("utf-8")
        return
    for _, raw in numbered_lines(path):
        line = raw.rstrip(b"\r\n")  # type: ignore[union-attr]  # unbounded lines are bytes
        if not line.strip():
            continue
        try:
            key = record_key(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            key = None
        yield key, line


# --------------------------------------------------------------------------- commands


def produce_file(settings: Settings, path: str | Path, topic: str | None = None, limit: int | None = None,
                 progress: bool = True) -> int:
    """Publish every record of ``path`` to ``topic`` (default: the first input topic); return the count."""
    topic = topic or settings.kafka.input_topics[0]
    producer = make_producer(settings)
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error.str())

    sent = 0
    with tqdm(desc=f"produce -> {topic}", unit="rec", disable=not progress) as bar:
        for key, value in iter_messages(path):
            if limit is not None and sent >= limit:
                break
            try:
                produce(producer, topic, value=value, key=key, on_delivery=on_delivery)
            except KafkaException as exc:
                raise CommandError(f"cannot produce to {topic}: {exc}") from None
            producer.poll(0)
            sent += 1
            bar.update()
    remaining = producer.flush(settings.sinks.delivery_timeout_s)
    if errors or remaining:
        raise CommandError(f"{len(errors) + remaining} of {sent} records were not delivered to {topic} "
                           f"({settings.kafka.bootstrap_servers})" + (f": {errors[0]}" if errors else ""))
    return sent


def _produce_command(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or settings.kafka.input_topics[0]
    count = produce_file(settings, args.file, topic, args.limit, progress=not args.no_progress)
    print(f"produced {count} records to {topic}")
    return 0


def _classify_command(args: argparse.Namespace, settings: Settings) -> int:
    from models.inference.source import ModelLoadError, ModelSource  # imports torch: only when needed

    try:
        record = parse_record({"id": args.id, "title": args.title, "abstract": args.abstract},
                              max_text_chars=settings.records.max_text_chars)
    except RecordError as exc:
        raise CommandError(str(exc)) from None
    if args.model:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"model": args.model})})
    try:
        predictor = ModelSource(settings).load()
    except (ModelLoadError, OSError, ValueError) as exc:
        raise CommandError(f"cannot load model {settings.model.model!r}: {exc}") from None
    if warning := generated_sample_warning(predictor.config):
        print(f"warning: {warning}", file=sys.stderr)
    print(predictor.predict_batch([record])[0].model_dump_json(indent=2))
    return 0


def _topics_create_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.partitions:
        settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"partitions": args.partitions})})
    try:
        created = create_topics(settings)
    except (KafkaException, TimeoutError) as exc:
        raise CommandError(f"cannot create topics on {settings.kafka.bootstrap_servers}: {exc}") from None
    for name in topic_names(settings):
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("produce", help="publish records from a file to the input topic",
                              description="Publish records (JSON lines, .gz ok; a JSON array; or an INSPIRE "
                                          "search-result JSON) to Kafka, keyed by record id. Lines are sent as-is.")
    p.add_argument("file", help="records file")
    p.add_argument("--topic", help="topic (default: the first kafka.input_topics)")
    p.add_argument("--limit", type=int, help="publish at most this many records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_produce_command)

    p = subparsers.add_parser("classify", help="classify one record and print the result JSON",
                              description="One-off classification with the model from settings (model.model, "
                                          "CORESTREAM_MODEL__MODEL) or --model. Warns on stderr when the model was "
                                          "trained on the generated sample.")
    p.add_argument("title")
    p.add_argument("abstract")
    p.add_argument("--model", help="checkpoint directory or registry://NAME@ENV (default: setting model.model, "
                                   f"built in: {ModelSettings.model_fields['model'].default}, the demo's model)")
    p.add_argument("--id", default="cli", help="record id in the output (default: %(default)s)")
    p.set_defaults(func=_classify_command)

    p = subparsers.add_parser("topics", help="manage the processor's Kafka topics")
    topics = p.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    p = topics.add_parser("create", help="create the input, output and dead-letter topics (idempotent)")
    p.add_argument("--partitions", type=int, help="partitions per topic (default: kafka.partitions)")
    p.set_defaults(func=_topics_create_command)
