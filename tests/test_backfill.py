"""Backfill: a registry model over 1,000 records to S3 (moto), and a SIGKILLed run resumed without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest

from config.settings import Settings
from tests import test_registry
from trainer.registry import ModelRegistry
from trainer.sample import write_sample

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
