"""The INSPIRE drop-in's contract, replayed as inspirehep's own client reads it.

inspirehep's workflow task posts ``{"title", "abstract"}`` as JSON (``""`` for a missing field), calls
``raise_for_status()``, reads ``prediction`` and ``scores[prediction]``, maps the three score keys core / non_core /
rejected to CORE / Non-CORE / Rejected and sorts records by a relevance score computed from them
(:func:`client_relevance`, written here after the client's rule). Real papers (../shared/data when present: real
INSPIRE records and arXiv papers of 2018; else the generated sample), empty fields included, on a linear model
trained on real arXiv papers (else the sample).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.records.labels import CorenessProxy
from streaming.apps.api import create_app
from tests.test_api import api_settings
from trainer.datasets.sample import generate_sample
from trainer.datasets.training_data import load_records
from trainer.training.train import train_model

CLIENT_LABELS = {"core": "CORE", "non_core": "Non-CORE", "rejected": "Rejected"}
PAPERS = 60  # of each kind


def client_relevance(results: dict[str, Any]) -> dict[str, Any]:
    """What inspirehep's client derives from an answer: decision, max score, scores, relevance score.

    CORE: its score + 1; Non-CORE: half its score + the core score; Rejected: minus its score."""
    scores = results["scores"]
    prediction = results["prediction"]
    max_score = scores[prediction]
    decision = CLIENT_LABELS[prediction]
    mapped = {CLIENT_LABELS[key]: scores[key] for key in ("core", "non_core", "rejected")}
    if decision == "CORE":
        relevance = max_score + 1
    elif decision == "Non-CORE":
        relevance = 0.5 * mapped["Non-CORE"] + mapped["CORE"]
    else:
        relevance = -max_score
    return {"max_score": max_score, "decision": decision, "scores": mapped, "relevance_score": relevance}


def _jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in itertools.islice(lines, limit)]


@pytest.fixture(scope="module")
def papers(shared_data: Path | None) -> list[dict[str, str]]:
    """Title/abstract pairs as INSPIRE sends them: real ones, then the same with a field emptied, then both empty."""
    if shared_data is not None:
        real = _jsonl(shared_data / "inspire-coreness.jsonl.gz", PAPERS) + _jsonl(
            shared_data / "arxiv-valid-2018.jsonl.gz", PAPERS)
    else:
        real = generate_sample(2 * PAPERS, seed=25)
    pairs = [{"title": paper.get("title") or "", "abstract": paper.get("abstract") or ""} for paper in real]
    emptied = [{**pair, "abstract": ""} for pair in pairs[:10]] + [{**pair, "title": ""} for pair in pairs[10:20]]
    return pairs + emptied + [{"title": "", "abstract": ""}]


@pytest.fixture(scope="module")
def client(shared_data: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    if shared_data is not None:
        data: Any = load_records(shared_data / "arxiv-train.jsonl.gz", limit=3000, proxy=CorenessProxy.load())
    else:
        data = None  # the generated sample
    model = train_model(data, output_dir=tmp_path_factory.mktemp("contract") / "model", arch="linear",
                        sample_count=2000, progress=False)
    with TestClient(create_app(api_settings(model))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def answers(client: TestClient, papers: list[dict[str, str]]) -> list[dict[str, Any]]:
    out = []
    for payload in papers:
        response = client.post("/api/predict/coreness", json=payload)
        response.raise_for_status()  # as the client does: any 4xx/5xx is an exception in its workflow
        out.append(response.json())
    return out


def test_every_answer_parses_as_the_client_parses_it(answers: list[dict[str, Any]]) -> None:
    for results in answers:
        assert set(results) == {"prediction", "scores"}
        assert set(results["scores"]) == set(CLIENT_LABELS) and results["prediction"] in CLIENT_LABELS
        parsed = client_relevance(results)
        scores = parsed["scores"].values()
        assert all(isinstance(score, float) and 0 <= score <= 1 for score in scores)
        assert math.isclose(sum(scores), 1, abs_tol=1e-4)
        assert parsed["max_score"] == max(scores)  # the prediction is the highest score


def test_relevance_sorts_core_before_non_core_before_rejected(answers: list[dict[str, Any]]) -> None:
    parsed = sorted((client_relevance(results) for results in answers), key=lambda p: -p["relevance_score"])
    rank = {"CORE": 0, "Non-CORE": 1, "Rejected": 2}
    decisions = [rank[item["decision"]] for item in parsed]
    assert decisions == sorted(decisions)
    for item in parsed:
        low, high = {"CORE": (1, 2), "Non-CORE": (0, 1), "Rejected": (-1, 0)}[item["decision"]]
        assert low <= item["relevance_score"] <= high


def test_empty_fields_get_an_answer_and_both_empty_the_documented_one(client: TestClient,
                                                                      answers: list[dict[str, Any]]) -> None:
    assert len(answers) == 2 * PAPERS + 21
    both_empty = answers[-1]
    again = client.post("/api/predict/coreness", json={"title": "", "abstract": ""}).json()
    assert again == both_empty  # defined: the model's answer for an empty text, every time


def test_scores_are_not_saturated(answers: list[dict[str, Any]]) -> None:
    """The relevance sort needs graded scores: most answers below 0.99, and distinct relevance scores."""
    top = sorted(results["scores"][results["prediction"]] for results in answers)
    print("max-score quantiles:", [round(top[int(q * (len(top) - 1))], 4) for q in (0, 0.25, 0.5, 0.75, 0.9, 1)])
    saturated = sum(score >= 0.99 for score in top) / len(top)
    relevances = {round(client_relevance(results)["relevance_score"], 4) for results in answers}
    print(f"saturated: {saturated:.2f}, distinct relevance: {len(relevances)} of {len(answers)}")
    assert saturated < 0.25
    assert len(relevances) >= 0.8 * len(answers)
