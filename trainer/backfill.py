"""``corestream-train backfill``: classify a JSONL file of records in bulk, resumably.

Writes ``{output}/predictions/{name}/{version}/``: ``predictions.jsonl`` (one result per classified record,
with every category's score), ``model.json`` (the registry manifest) and ``run.json`` (counts, invalid lines,
timings, input). The output is a local directory or ``s3://bucket/prefix``; for S3 the files are built in a
local work directory and uploaded at the end (``run.json`` last).

Resuming: after each batch the new lines are fsynced, then ``progress.json`` records how many input lines
and output bytes are done. A rerun truncates ``predictions.jsonl`` to that size and skips those input lines,
so an interrupted run (even SIGKILL) never duplicates or loses a line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from tqdm import tqdm

from config.cli import CommandError
from config.settings import Settings
from models.inference.source import ModelLoadError, ModelSource
from models.records.files import count_lines, numbered_lines
from models.records.intake import parse_input, skipped_source
from models.records.schema import REASON_OVERSIZE, Record, RecordError
from models.registry.names import check_name, path_under
from models.registry.s3 import S3Error, is_not_found, is_s3_url, parse_s3_url, s3_client, s3_errors
from models.registry.store import Manifest, RegistryError, build_manifest, default_creator

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
PROGRESS = "progress.json"
MAX_LISTED_INVALID = 10_000
GPU_BATCH_FACTOR = 8  # GPU batches are this many times settings.model.inference_batch_size


class InvalidLine(BaseModel):
    line: int
    reason: str
    error: str


class Progress(BaseModel):
    """What is durably done; saved after every batch."""

    input: str
    model: str
    version: str
    lines_done: int = 0
    bytes_written: int = 0
    classified: int = 0
    invalid_count: int = 0
    invalid: list[InvalidLine] = Field(default_factory=list)
    skipped: dict[str, int] = Field(default_factory=dict)
    elapsed_s: float = 0.0
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Backfill:
    """One backfill run of ``model`` over ``input_path`` into ``output``."""

    def __init__(self, settings: Settings, *, model: str, input_path: str, output: str,
                 batch_size: int | None = None, work_dir: str | None = None, restart: bool = False,
                 progress_bar: bool = True) -> None:
        self.settings = settings
        self.model_uri = model
        self.input_path = input_path
        self.output = output.rstrip("/")
        self.batch_size = batch_size
        self.work_root = work_dir
        self.restart = restart
        self.progress_bar = progress_bar
        self._s3: Any = None

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Classify every not-yet-done input line; return the content of run.json."""
        source = ModelSource(self.settings.model_copy(update={"model": self.settings.model.model_copy(
            update={"model": self.model_uri, "reload_interval_s": 0})}))
        predictor = source.load()
        manifest = source.manifest or self._local_manifest(predictor)
        name, version = check_name(predictor.info.name), check_name(predictor.info.version, "model version")
        relative = f"predictions/{name}/{version}"
        work = self._work_dir(name, version)
        work.mkdir(parents=True, exist_ok=True)
        batch_size = self.batch_size or self._default_batch_size(predictor.device)

        state = self._resume_state(work, name, version)
        if state is None:
            return self._finished_run(relative)
        input_file = self._local_input(work)
        started = time.monotonic() - state.elapsed_s
        predictions = work / PREDICTIONS
        with predictions.open("ab") as out:
            out.truncate(state.bytes_written)  # drop lines written after the last checkpoint
            out.seek(state.bytes_written)
            total = count_lines(input_file)
            with tqdm(total=total, initial=state.lines_done, unit="rec", desc=f"backfill {name} {version}",
                      disable=not self.progress_bar) as bar:
                for batch, last_line in self._batches(input_file, state, source, batch_size):
                    self._write_batch(out, predictor, batch)
                    state.classified += len(batch)
                    bar.update(last_line - state.lines_done)
                    state.lines_done = last_line
                    state.bytes_written = out.tell()
                    state.elapsed_s = time.monotonic() - started
                    self._save_progress(work, state)
        summary = self._summary(state, name, version, batch_size, predictor.device, relative)
        (work / "model.json").write_text(manifest.model_dump_json(indent=2))
        _write_json_atomic(work / "run.json", summary)
        self._publish(work, relative)
        (work / PROGRESS).unlink(missing_ok=True)
        log.info("backfill complete", extra={k: summary[k] for k in ("output", "classified", "invalid")})
        return summary

    def _batches(self, input_file: Path, state: Progress, source: ModelSource,
                 batch_size: int) -> Iterator[tuple[list[Record], int]]:
        """``(records, number of the last input line consumed)``; invalid and skipped lines go into ``state``.

        The stream's input rules (:mod:`models.records.intake`): a line is what a Kafka message value would be, and is
        skipped when its source is in ``skip_sources`` or the model's ``dont_run_on``."""
        batch: list[Record] = []
        line_no = state.lines_done
        records = self.settings.records
        for line_no, raw in numbered_lines(input_file, records.max_message_bytes):
            if line_no <= state.lines_done:
                continue
            try:
                if isinstance(raw, int):
                    raise RecordError(REASON_OVERSIZE, f"line is {raw} bytes, above the limit of "
                                                       f"{records.max_message_bytes}")
                record = parse_input(raw, records)
            except RecordError as exc:
                state.invalid_count += 1
                if len(state.invalid) < MAX_LISTED_INVALID:
                    state.invalid.append(InvalidLine(line=line_no, reason=exc.reason, error=exc.message))
                continue
            skipped = skipped_source(record, self.settings.skip_sources, source)
            if skipped is not None:
                state.skipped[skipped] = state.skipped.get(skipped, 0) + 1
                continue
            batch.append(record)
            if len(batch) >= batch_size:
                yield batch, line_no
                batch = []
        if batch or line_no > state.lines_done:
            yield batch, line_no

    @staticmethod
    def _write_batch(out: IO[bytes], predictor: Any, batch: list[Record]) -> None:
        """Append one JSON line per record (result + every category score) and fsync."""
        if batch:
            coreness, categories = predictor.predict_proba(batch)
            lines = []
            for record, core, cats in zip(batch, coreness, categories, strict=True):
                result = predictor.result(record.id, core, cats).model_dump(mode="json")
                result["category_scores"] = {label: round(float(score), 6)
                                             for label, score in zip(predictor.category_labels, cats, strict=True)}
                lines.append(json.dumps(result, separators=(",", ":")))
            out.write(("\n".join(lines) + "\n").encode())
        out.flush()
        os.fsync(out.fileno())

    @staticmethod
    def _save_progress(work: Path, state: Progress) -> None:
        _write_json_atomic(work / PROGRESS, state.model_dump(mode="json"))

    # ------------------------------------------------------------------ state, input and output

    def _resume_state(self, work: Path, name: str, version: str) -> Progress | None:
        """Progress to continue from (fresh if none); None if this output is already complete."""
        progress = work / PROGRESS
        if self.restart:
            progress.unlink(missing_ok=True)
            (work / PREDICTIONS).unlink(missing_ok=True)
        elif progress.is_file():
            state = Progress.model_validate_json(progress.read_text())
            if (state.input, state.model, state.version) != (self.input_path, name, version):
                raise CommandError(f"{work} holds an unfinished backfill of {state.input} with {state.model} "
                                   f"{state.version}; rerun with --restart to discard it")
            log.info("resuming backfill", extra={"lines_done": state.lines_done, "classified": state.classified})
            return state
        elif self._output_complete(work, name, version):
            return None
        return Progress(input=self.input_path, model=name, version=version)

    def _output_complete(self, work: Path, name: str, version: str) -> bool:
        relative = f"predictions/{name}/{version}/run.json"
        if not is_s3_url(self.output):
            return (work / "run.json").is_file()
        target = parse_s3_url(f"{self.output}/{relative}")
        with s3_errors(f"checking {target}", self.settings.registry.endpoint_url):
            try:
                self.s3.head_object(Bucket=target.bucket, Key=target.key)
            except ClientError as exc:
                if is_not_found(exc):
                    return False
                raise
        return True

    def _finished_run(self, relative: str) -> dict[str, Any]:
        """The run.json of a complete earlier run of this input with this model version."""
        where = f"{self.output}/{relative}"
        if is_s3_url(self.output):
            target = parse_s3_url(f"{where}/run.json")
            with s3_errors(f"reading {target}", self.settings.registry.endpoint_url):
                summary = json.loads(self.s3.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())
        else:
            summary = json.loads(Path(where, "run.json").read_text())
        if summary.get("input") != self.input_path:
            raise CommandError(f"{where} already holds predictions for {summary.get('input')}; choose another "
                               "--output or use --restart to replace them")
        print(f"backfill already complete in {where} (use --restart to run it again)")
        return summary

    def _work_dir(self, name: str, version: str) -> Path:
        """``ROOT/predictions/NAME/VERSION``, resolved and checked to stay under its root (it may be removed)."""
        if not is_s3_url(self.output):
            root = Path(self.output)
        elif self.work_root:
            root = Path(self.work_root)
        else:
            digest = hashlib.sha256(f"{self.input_path}|{self.output}".encode()).hexdigest()[:12]
            root = Path(self.settings.model.cache_dir).parent / "backfill" / digest
        return path_under(root, "predictions", name, version)

    def _local_input(self, work: Path) -> Path:
        if not is_s3_url(self.input_path):
            path = Path(self.input_path)
            if not path.is_file():
                raise CommandError(f"input file not found: {path}")
            return path
        source = parse_s3_url(self.input_path)
        local = work / ("input" + "".join(Path(source.key).suffixes[-2:]))
        with s3_errors(f"downloading {source}", self.settings.registry.endpoint_url):
            size = self.s3.head_object(Bucket=source.bucket, Key=source.key)["ContentLength"]
            if not local.is_file() or local.stat().st_size != size:
                self.s3.download_file(source.bucket, source.key, str(local))
        return local

    def _publish(self, work: Path, relative: str) -> None:
        if not is_s3_url(self.output):
            return
        target = parse_s3_url(f"{self.output}/{relative}")
        with s3_errors(f"uploading to {target}", self.settings.registry.endpoint_url):
            for name in (PREDICTIONS, "model.json", "run.json"):  # run.json last: it marks completion
                self.s3.upload_file(str(work / name), target.bucket, f"{target.key}/{name}")
        (work / PROGRESS).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            with s3_errors("backfill", self.settings.registry.endpoint_url):
                self._s3 = s3_client(self.settings.registry)
        return self._s3

    def _local_manifest(self, predictor: Any) -> Manifest:
        return build_manifest(predictor.checkpoint_dir, predictor.info.name, predictor.info.version,
                              default_creator(self.settings.registry))

    def _default_batch_size(self, device: str) -> int:
        base = self.settings.model.inference_batch_size
        return base * GPU_BATCH_FACTOR if device.startswith("cuda") else base

    def _summary(self, state: Progress, name: str, version: str, batch_size: int, device: str,
                 relative: str) -> dict[str, Any]:
        finished = datetime.now(UTC)
        return {
            "status": "complete",
            "input": self.input_path,
            "output": f"{self.output}/{relative}",
            "model": {"uri": self.model_uri, "name": name, "version": version},
            "lines": state.lines_done,
            "classified": state.classified,
            "invalid": state.invalid_count,
            "invalid_lines": [item.model_dump() for item in state.invalid],
            "invalid_by_reason": dict(Counter(item.reason for item in state.invalid)),
            "skipped_by_source": state.skipped,
            "device": device,
            "batch_size": batch_size,
            "started_at": state.started_at.isoformat(),
            "finished_at": finished.isoformat(),
            "elapsed_s": round(state.elapsed_s, 3),
            "records_per_s": round(state.classified / state.elapsed_s, 1) if state.elapsed_s else None,
        }


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backfill", help="classify a JSONL file of records in bulk (resumable)")
    parser.add_argument("--model", help="registry://NAME@ENV or a checkpoint directory (default: settings model)")
    parser.add_argument("--input", required=True, help="JSONL(.gz) file or s3://bucket/key")
    parser.add_argument("--output", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--batch-size", type=int, help="records per batch (default: inference_batch_size on CPU, "
                                                       f"x{GPU_BATCH_FACTOR} on GPU)")
    parser.add_argument("--work-dir", help="local work directory for S3 output (default: under the cache dir)")
    parser.add_argument("--restart", action="store_true", help="discard earlier progress or output and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_backfill_command)


def _backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")
    backfill = Backfill(settings, model=args.model or settings.model.model, input_path=args.input,
                        output=args.output, batch_size=args.batch_size, work_dir=args.work_dir,
                        restart=args.restart, progress_bar=not args.no_progress)
    try:
        summary = backfill.run()
    except (ModelLoadError, RegistryError, S3Error) as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps({k: summary[k] for k in ("output", "lines", "classified", "invalid", "elapsed_s")}))
    return 0

