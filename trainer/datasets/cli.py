"""``corestream-train dataset | undersample | split | stats``: build and shape training data files."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.cli import CommandError
from config.settings import Settings
from models.records.labels import CorenessProxy
from trainer.datasets.build import (
    DEFAULT_DATE_FIELD,
    DEFAULT_INDEX,
    DEFAULT_PAGE_SIZE,
    DatasetError,
    SkipCounter,
    build_from_es,
    build_from_snapshot,
    connect,
    month_range,
    parse_day,
    read_dataset,
    write_jsonl,
)
from trainer.datasets.split import SPLIT_NAMES, stratified_split, time_split, undated
from trainer.datasets.stats import DatasetStats, format_table
from trainer.datasets.undersample import category_counts, undersample


def user_errors(command: Callable[..., int]) -> Callable[..., int]:
    """Bad input, unreadable or unwritable files and unreachable servers end the command with one line."""

    @functools.wraps(command)
    def run(*args: Any) -> int:
        try:
            return command(*args)
        except (DatasetError, OSError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_dataset(subparsers)
    _register_undersample(subparsers)
    _register_split(subparsers)
    _register_stats(subparsers)


# --------------------------------------------------------------------------- dataset


def _register_dataset(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset", help="build a training JSONL file from INSPIRE's Elasticsearch or an arXiv snapshot",
        description="Write one flat record a line (id, title, abstract, categories, source, coreness, date).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-es", action="store_true", help="read INSPIRE literature records from Elasticsearch")
    source.add_argument("--from-arxiv-snapshot", metavar="FILE", type=Path,
                        help="read an arXiv metadata snapshot (JSONL, .gz too)")
    parser.add_argument("--out", metavar="FILE", required=True, type=Path, help="output JSONL file (.gz compresses)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    es = parser.add_argument_group("Elasticsearch (--from-es)")
    es.add_argument("--es-url", metavar="URL", help="default: the elasticsearch.url setting")
    es.add_argument("--index", metavar="INDEX", default=DEFAULT_INDEX, help="literature index (default: %(default)s)")
    es.add_argument("--year-from", metavar="YYYY", type=int, help="first creation year (required with --from-es)")
    es.add_argument("--month-from", metavar="M", type=int, default=1, help="first month of --year-from (default: 1)")
    es.add_argument("--year-to", metavar="YYYY", type=int,
                    help="last creation year, inclusive (required with --from-es)")
    es.add_argument("--month-to", metavar="M", type=int, default=12,
                    help="last month of --year-to, inclusive (default: 12)")
    es.add_argument("--date-field", metavar="FIELD", default=DEFAULT_DATE_FIELD,
                    help="creation date field to filter on (default: %(default)s)")
    es.add_argument("--page-size", metavar="N", type=int, default=DEFAULT_PAGE_SIZE,
                    help="hits per page (default: %(default)s)")
    snap = parser.add_argument_group("arXiv snapshot (--from-arxiv-snapshot)")
    snap.add_argument("--date-from", metavar="DATE",
                      help="first submission date, inclusive: YYYY, YYYY-MM or YYYY-MM-DD")
    snap.add_argument("--date-to", metavar="DATE", help="last submission date, inclusive: YYYY, YYYY-MM or YYYY-MM-DD")
    snap.add_argument("--categories", metavar="PREFIXES",
                      help="comma-separated category prefixes to keep, e.g. hep-th,gr-qc,astro-ph")
    snap.add_argument("--proxy-file", metavar="YAML", type=Path,
                      help="coreness proxy YAML (default: config/coreness_proxy.yaml)")
    parser.set_defaults(func=lambda args, settings: dataset_command(args, settings))


@user_errors
def dataset_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_es:
        report = _dataset_from_es(args, settings)
    else:
        proxy = CorenessProxy.load(args.proxy_file) if args.proxy_file else None
        report = build_from_snapshot(
            args.from_arxiv_snapshot, args.out, proxy=proxy,
            date_from=parse_day(args.date_from) if args.date_from else None,
            date_to=parse_day(args.date_to, end=True) if args.date_to else None,
            categories=[c.strip() for c in (args.categories or "").split(",") if c.strip()],
            progress=not args.no_progress,
        )
    print(report)
    return 0


def _dataset_from_es(args: argparse.Namespace, settings: Settings):
    if args.year_from is None or args.year_to is None:
        raise DatasetError("--from-es needs --year-from and --year-to")
    if args.page_size < 1:
        raise DatasetError(f"--page-size must be at least 1, got {args.page_size}")
    gte, lt = month_range(args.year_from, args.year_to, args.month_from, args.month_to)
    # The client logs each retry with a traceback; the outcome is reported as one line instead.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    client = connect(settings, args.es_url)
    try:
        return build_from_es(client, args.index, args.out, gte=gte, lt=lt, date_field=args.date_field,
                             page_size=args.page_size, progress=not args.no_progress)
    finally:
        client.close()


# --------------------------------------------------------------------------- undersample


def _register_undersample(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "undersample", help="cap frequent categories, keeping every record with a rare category",
        description="Records carrying a category seen fewer than THRESHOLD times are all kept; the others are "
                    "kept (in a seeded random order) while one of their categories has fewer than THRESHOLD kept.",
    )
    parser.add_argument("input", type=Path, metavar="IN", help="dataset JSONL file")
    parser.add_argument("output", type=Path, metavar="OUT", help="undersampled JSONL file")
    parser.add_argument("--threshold", type=int, default=1000, help="records per category cap (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=lambda args, settings: undersample_command(args))


@user_errors
def undersample_command(args: argparse.Namespace) -> int:
    rows = _read(args.input)
    kept = undersample(rows, args.threshold, args.seed)
    write_jsonl(kept, args.output)
    before, after = category_counts(rows), category_counts(kept)
    print(format_table(["category", "before", "after"],
                       [[cat, count, after[cat]] for cat, count in before.most_common()]))
    print(f"\nkept {len(kept)} of {len(rows)} records (threshold {args.threshold}, seed {args.seed}) -> {args.output}")
    return 0


# --------------------------------------------------------------------------- split


def _register_split(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split", help="deterministic train/valid/test split (stratified on the primary category, or by time)",
    )
    parser.add_argument("input", type=Path, metavar="IN", help="dataset JSONL file")
    parser.add_argument("--out-dir", type=Path, required=True, help="writes train.jsonl, valid.jsonl, test.jsonl")
    parser.add_argument("--valid", type=float, default=0.1, help="validation fraction (default: %(default)s)")
    parser.add_argument("--test", type=float, default=0.1, help="test fraction (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by-time", action="store_true", help="train on the oldest records, test on the newest")
    parser.add_argument("--date-field", default="date", help="date field for --by-time (default: %(default)s)")
    parser.set_defaults(func=lambda args, settings: split_command(args))


@user_errors
def split_command(args: argparse.Namespace) -> int:
    rows = _read(args.input, keep_fields=[args.date_field])
    if args.by_time:
        missing = undated(rows, args.date_field)
        if missing:
            print(f"left out {len(missing)} records without '{args.date_field}' (e.g. id {missing[0]['id']})")
        parts = time_split([r for r in rows if r.get(args.date_field)], args.valid, args.test, args.date_field)
    else:
        parts = stratified_split(rows, args.valid, args.test, args.seed)
    table = []
    for name in SPLIT_NAMES:
        path = args.out_dir / f"{name}.jsonl"
        write_jsonl(parts[name], path)
        dates = sorted(str(r[args.date_field]) for r in parts[name] if r.get(args.date_field))
        table.append([name, len(parts[name]), len(category_counts(parts[name])),
                      dates[0] if dates else "-", dates[-1] if dates else "-", str(path)])
    print(format_table(["split", "records", "categories", "first date", "last date", "file"], table))
    return 0


# --------------------------------------------------------------------------- stats


def _register_stats(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats", help="counts per category/coreness, text lengths, duplicates (tables, JSON and a PNG plot)",
    )
    parser.add_argument("input", type=Path, metavar="IN", help="dataset JSONL file")
    parser.add_argument("--out-dir", type=Path, help="write stats.json and stats.png here (default: next to IN)")
    parser.add_argument("--top", type=int, default=40, help="categories shown in the table (default: %(default)s)")
    parser.set_defaults(func=lambda args, settings: stats_command(args))


@user_errors
def stats_command(args: argparse.Namespace) -> int:
    rows = _read(args.input)
    stats = DatasetStats.of(rows)
    out_dir = args.out_dir or args.input.parent
    stem = args.input.name.removesuffix(".gz").removesuffix(".jsonl")
    json_path = out_dir / f"{stem}.stats.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(stats.as_dict(), indent=2) + "\n")
    png_path = stats.plot(out_dir / f"{stem}.stats.png")
    print(stats.report(args.top))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _read(path: Path, keep_fields: list[str] | None = None) -> list[dict]:
    """Dataset rows; invalid lines are reported (count by reason) and left out."""
    skipped = SkipCounter()
    rows = read_dataset(path, skipped, keep_fields=keep_fields or (), progress=True)
    if skipped:
        print(f"skipped {skipped.total()} invalid lines of {path} ({skipped.summary()})")
    return rows
