"""``corestream demo`` end to end as a user runs it: a subprocess, its own embedded broker, a fresh model."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from models.records.schema import ClassificationResult


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
    assert "(bag), trained on the generated sample" in out and "records         generated (word salad)" in out
    assert "NOTE: model corestream-demo@" in out and "was trained on the generated sample" in out

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


def real_papers(path: Path, shared_data: Path | None, count: int) -> list[dict]:
    """``count`` real arXiv papers (../shared/data) written to ``path``; without it, generated records with dates."""
    if shared_data is not None:
        with gzip.open(shared_data / "arxiv-train.jsonl.gz", "rt") as handle:
            papers = [json.loads(line) for line in itertools.islice(handle, count)]
    else:
        from trainer.datasets.sample import generate_sample

        papers = [{**record, "date": f"{2000 + i % 18}-{1 + i % 12:02d}-01"}
                  for i, record in enumerate(generate_sample(count, seed=5))]
    path.write_text("".join(json.dumps(paper) + "\n" for paper in papers))
    return papers


@pytest.mark.timeout(300)
def test_demo_with_train_data_trains_on_it_and_classifies_held_out_papers(tmp_path: Path,
                                                                         shared_data: Path | None) -> None:
    from trainer.training.train import train_model

    data = tmp_path / "papers.jsonl"
    papers = real_papers(data, shared_data, 1040)
    newest = sorted(papers, key=lambda p: (p["date"], p["id"]))[-40:]
    model_dir = tmp_path / "model"
    train_model(None, arch="bag", output_dir=model_dir, sample_count=200, epochs=1, progress=False, device="cpu")
    output = tmp_path / "results.jsonl"
    env = {key: value for key, value in os.environ.items() if key != "CORESTREAM_ES_URL"}
    command = [sys.executable, "-m", "streaming.cli", "demo", "--train-data", str(data), "--records", "40",
               "--train-records", "1000", "--model-dir", str(model_dir), "--output", str(output), "--rows", "5"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr[-3000:]}"

    source = f"{data} (1000 papers before the 40 most recent, held out for the demo)"
    assert f"not reusing {model_dir}: it was trained on the generated sample" in out
    assert f"training the default (linear) model on {source}" in out
    assert "produced 40 held-out papers and 5 bad messages" in out
    assert f"(linear), trained on {source}" in out
    assert "records         held-out real papers" in out
    assert "one of the paper's own arXiv categories for" in out and "agrees with the arXiv-category proxy" in out
    assert "NOTE:" not in out and "generated" not in out.split("metrics")[1]
    results = [ClassificationResult.model_validate_json(line) for line in output.read_text().splitlines()]
    assert sorted(r.id for r in results) == sorted(p["id"] for p in newest)
    assert {r.model.arch for r in results} == {"linear"}
    card = json.loads((model_dir / "config.json").read_text())["card"]["data"]
    assert card["source"] == source
    assert card["train_records"] + card["valid_records"] == 1000
    assert max(card["train_dates"]["last"], card["valid_dates"]["last"]) <= min(p["date"] for p in newest)

    # The same data again: the model is reused, and the demo says what it was trained on.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing model corestream-demo@" in again.stdout and f"trained on {source}" in again.stdout
