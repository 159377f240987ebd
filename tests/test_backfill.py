"""Backfill: a registry model over 1,000 records to S3 (moto), and a SIGKILLed run resumed without duplicates."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import boto3
import pytest

from config.settings import Settings
from models.records.files import bounded_lines, count_lines
from models.registry.store import ModelRegistry
from tests import test_registry
from trainer.datasets.sample import write_sample

# The registry tests' fixtures: a fresh moto bucket wired into CORESTREAM_*, and tiny trained checkpoints.
registry_env = test_registry.registry_env
checkpoints = test_registry.checkpoints
_restore_logging = test_registry._restore_logging
cli = test_registry.cli

BAD_LINES = b'not json\n{"id": "no-text"}\n\n{"id": "bin", "title": "a\\u0000b"}\n'


def sample_input(path: Path, n: int = 1000) -> Path:
    """``n`` valid records with four bad lines in the middle."""
    write_sample(path, n, seed=7)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:500]) + BAD_LINES + b"".join(lines[500:]))
    return path


def test_backfill_registry_model_s3_to_s3(registry_env: Settings, checkpoints: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    registry = ModelRegistry(registry_env.registry)
    registry.push(checkpoints["a"], "demo")
    registry.promote("demo", "v1", "prod")
    s3 = boto3.client("s3", endpoint_url=registry_env.registry.endpoint_url, region_name="us-east-1")
    s3.upload_file(str(sample_input(tmp_path / "records.jsonl")), registry.bucket, "inputs/records.jsonl")

    status, out, err = cli(capsys, "backfill", "--model", "registry://demo@prod", "--no-progress",
                           "--input", f"s3://{registry.bucket}/inputs/records.jsonl",
                           "--output", f"s3://{registry.bucket}/backfills", "--batch-size", "128")
    assert status == 0, err
    prefix = "backfills/predictions/demo/v1/"
    lines = s3.get_object(Bucket=registry.bucket, Key=prefix + "predictions.jsonl")["Body"].read().splitlines()
    results = [json.loads(line) for line in lines]
    assert len(results) == 1000 and len({r["id"] for r in results}) == 1000
    assert {r["model"]["version"] for r in results} == {"v1"}
    labels = registry.manifest("demo", "v1").category_labels
    assert all(sorted(r["category_scores"]) == sorted(labels) for r in results)  # negatives included

    run = json.loads(s3.get_object(Bucket=registry.bucket, Key=prefix + "run.json")["Body"].read())
    assert (run["lines"], run["classified"], run["invalid"]) == (1004, 1000, 4)
    assert [item["line"] for item in run["invalid_lines"]] == [501, 502, 503, 504]
    assert run["invalid_by_reason"] == {"invalid_json": 1, "invalid_record": 2, "empty_message": 1}
    assert run["input"] == f"s3://{registry.bucket}/inputs/records.jsonl" and run["batch_size"] == 128
    model = json.loads(s3.get_object(Bucket=registry.bucket, Key=prefix + "model.json")["Body"].read())
    assert model["version"] == "v1" and model["files"] == registry.manifest("demo", "v1").model_dump()["files"]
    assert json.loads(out.splitlines()[-1])["classified"] == 1000


KILLING_RUN = textwrap.dedent("""
    import os, signal, sys
    from trainer import backfill
    from trainer.cli import main

    saves = 0
    save_progress = backfill.Backfill._save_progress

    def save_then_die(work, state):
        global saves
        saves += 1
        if saves == 5:  # the 5th batch is written and fsynced, but its progress never saved
            os.kill(os.getpid(), signal.SIGKILL)
        save_progress(work, state)

    backfill.Backfill._save_progress = staticmethod(save_then_die)
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.timeout(120)
def test_backfill_killed_halfway_resumes_without_duplicates(checkpoints: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    records = sample_input(tmp_path / "records.jsonl")
    out = tmp_path / "out"
    argv = ["backfill", "--model", str(checkpoints["a"]), "--input", str(records), "--output", str(out),
            "--batch-size", "100", "--no-progress"]
    env = {**os.environ, "CORESTREAM_MODEL__DEVICE": "cpu", "CORESTREAM_LOG_LEVEL": "WARNING"}
    killed = subprocess.run([sys.executable, "-c", KILLING_RUN, *argv], env=env, capture_output=True, timeout=100)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    [work] = list(out.glob("predictions/*/*"))
    progress = json.loads((work / "progress.json").read_text())
    written = (work / "predictions.jsonl").read_bytes().splitlines()
    assert progress["classified"] == 400 and len(written) == 500  # one batch past the last checkpoint

    resumed = subprocess.run(["corestream-train", *argv], env=env, capture_output=True, timeout=100)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    ids = [json.loads(line)["id"] for line in (work / "predictions.jsonl").read_bytes().splitlines()]
    expected = [json.loads(line)["id"] for line in records.read_bytes().splitlines() if line.startswith(b'{"id": "s')]
    assert len(ids) == 1000 and ids == expected  # each record once, in input order
    run = json.loads((work / "run.json").read_text())
    assert (run["classified"], run["invalid"], run["lines"]) == (1000, 4, 1004)
    assert not (work / "progress.json").exists()

    status, out_text, _ = cli(capsys, *argv)
    assert status == 0 and "already complete" in out_text
    status, _, err = cli(capsys, *argv[:4], str(tmp_path / "other.jsonl"), *argv[5:])
    assert status == 2 and "already holds predictions for" in err
    assert len((work / "predictions.jsonl").read_bytes().splitlines()) == 1000


EDGE_LINES = {  # line content -> the reason it is counted invalid (None: classified)
    b'{"id": "deep", "title": "T", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}": "invalid_json",
    b'{"id": "huge", "title": "T", "x": ' + b"9" * 5_000 + b"}": "invalid_json",
    b'{"id": " spaced", "title": "T"}': "invalid_id",
    b'{"id": "\\ud800-0", "title": "T", "abstract": "a"}': "invalid_id",
    b'{"id": "' + b"x" * 600 + b'", "title": "T"}': "invalid_id",
    b'{"id": "big", "title": "' + b"t" * 40_000 + b'"}': "oversize",  # above records.max_message_bytes
    b"\x89PNG\r\x00\x1a": "not_utf8",
    b'{"id": "surrogate-title", "title": "dark \\udfff matter", "abstract": "a"}': None,
    b'{"id": "spam-1", "title": "T", "source": "spam"}': "skipped",
    b'{"id": "model-skip", "title": "T", "source": "Springer"}': "skipped",
}


def test_backfill_counts_malformed_lines_and_honours_skip_sources(checkpoints: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The stream's input rules: a 10k-deep line, a 5,000-digit number, bad ids, an oversize line and binary are
    counted invalid lines with their reasons (not a crash that a resume would repeat); skip_sources and the model's
    dont_run_on are both skipped; a last line without a newline is read."""
    model = tmp_path / "model"
    shutil.copytree(checkpoints["a"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dont_run_on": ["Springer"]}))
    write_sample(tmp_path / "sample.jsonl", 20, seed=3)
    good = (tmp_path / "sample.jsonl").read_bytes().splitlines()
    lines = good[:10] + list(EDGE_LINES) + good[10:]
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join(lines))  # no newline at the end
    monkeypatch.setenv("CORESTREAM_SKIP_SOURCES", '["spam"]')
    monkeypatch.setenv("CORESTREAM_RECORDS__MAX_MESSAGE_BYTES", "30000")
    monkeypatch.setenv("CORESTREAM_MODEL__DEVICE", "cpu")
    out = tmp_path / "out"
    status, _, err = cli(capsys, "backfill", "--model", str(model), "--input", str(records), "--output", str(out),
                         "--batch-size", "8", "--no-progress")
    assert status == 0, err
    [work] = list(out.glob("predictions/*/*"))
    run = json.loads((work / "run.json").read_text())
    reasons = [reason for reason in EDGE_LINES.values() if reason not in (None, "skipped")]
    assert run["lines"] == len(lines) and run["classified"] == 20 + 1
    assert run["invalid"] == len(reasons)
    assert run["invalid_by_reason"] == {reason: reasons.count(reason) for reason in set(reasons)}
    assert [item["line"] for item in run["invalid_lines"]] == [11 + i for i, reason in enumerate(EDGE_LINES.values())
                                                               if reason not in (None, "skipped")]
    assert run["skipped_by_source"] == {"spam": 1, "Springer": 1}
    oversize = next(item for item in run["invalid_lines"] if item["reason"] == "oversize")
    big = next(line for line in EDGE_LINES if line.startswith(b'{"id": "big"'))
    assert oversize["error"] == f"line is {len(big)} bytes, above the limit of 30000"
    ids = [json.loads(line)["id"] for line in (work / "predictions.jsonl").read_bytes().splitlines()]
    assert ids == [json.loads(line)["id"] for line in good[:10]] + ["surrogate-title"] + [
        json.loads(line)["id"] for line in good[10:]]


def test_read_lines_bounds_each_line() -> None:
    """Lines up to the limit come back without their newline; a longer one comes back as its length, read in
    pieces (never whole), and reading goes on after it; the last line may lack a newline."""
    data = b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"\n" + b"c" * 5_000_000 + b"\n" + b"d" * 10 + b"\n" + b"e" * 12
    lines = list(bounded_lines(io.BytesIO(data), 10))
    assert lines == [b"a" * 10, 11, b"", 5_000_000, b"d" * 10, 12]
    assert list(bounded_lines(io.BytesIO(b"x\r\ny"), 10)) == [b"x\r", b"y"]
    assert _count_lines_of(b"a\nb") == 2 and _count_lines_of(b"a\nb\n") == 2 and _count_lines_of(b"") == 0


def _count_lines_of(data: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as handle:
        handle.write(data)
        handle.flush()
        return count_lines(Path(handle.name))
