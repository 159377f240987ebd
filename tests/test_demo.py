"""``corestream demo`` end to end as a user runs it: a subprocess, its own embedded broker, a fresh model."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from models.records import ClassificationResult


@pytest.mark.timeout(300)
def test_demo_classifies_sample_and_dead_letters_bad_messages(tmp_path: Path, es_url: str) -> None:
    output = tmp_path / "results.jsonl"
    index = f"demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CORESTREAM_ES_URL": es_url, "CORESTREAM_ELASTICSEARCH__INDEX": index}
    command = [sys.executable, "-m", "streaming.cli", "demo", "--records", "60", "--train-records", "300",
               "--model-dir", str(tmp_path / "model"), "--output", str(output), "--rows", "5"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr[-3000:]}"

    assert "training a small bag model on 300 generated records" in out
    assert "sinks: elasticsearch, output_topic, jsonl" in out
    assert "... and 55 more in the results file" in out
    assert "consumed        65" in out
    assert "classified      60" in out
    assert "dead-lettered   5  (empty_message 1, invalid_json 1, invalid_record 2, not_utf8 1)" in out
    assert "all 60 records classified and all 5 bad messages dead-lettered" in out

    results = [ClassificationResult.model_validate_json(line) for line in output.read_text().splitlines()]
    assert sorted(r.id for r in results) == sorted(f"sample-1-{i}" for i in range(60))
    assert {r.model.arch for r in results} == {"bag"}
    table_ids = [line.split()[0] for line in out.splitlines() if line.startswith("sample-1-")]
    assert table_ids == [r.id for r in results[:5]]

    es = Elasticsearch(es_url)
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 60

    # A second run reuses the model and starts from an empty results file.
    again = subprocess.run(command[:-2] + ["--rows", "0", "--records", "10"], capture_output=True, text=True,
                           env=env, timeout=280)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing model" in again.stdout
    assert len(output.read_text().splitlines()) == 10
