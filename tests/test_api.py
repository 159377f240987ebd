"""The HTTP predict API: request/response behaviour, micro-batching, a real server, and a schemathesis run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.settings import Settings
from models.records.schema import Record
from streaming.apps.api import create_app
from tests.servers import corestream_serve
from trainer.training.train import train_model

FLAT = {"id": "a1", "title": "Higgs boson couplings at the LHC", "abstract": "We measure couplings of the Higgs."}
INSPIRE = {
    "control_number": 42,
    "titles": [{"title": "Gravitational waves from binary black holes"}],
    "abstracts": [{"value": "We study the inspiral of compact binaries."}],
    "arxiv_eprints": [{"categories": ["gr-qc"]}],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bag-of-n-grams model trained on the generated sample."""
    out = tmp_path_factory.mktemp("api") / "model"
    return train_model(None, arch="bag", output_dir=out, sample_count=300, epochs=1, progress=False, device="cpu")


def api_settings(model: Path | str, **overrides) -> Settings:
    values = {
        "model": {"model": str(model), "device": "cpu", "reload_interval_s": 0},
        "api": {"max_batch_records": 8},
        "batch": {"max_batch_records": 16, "max_wait_ms": 20},
        "metrics": {"enabled": False},
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(checkpoint: Path):
    with TestClient(create_app(api_settings(checkpoint))) as test_client:
        yield test_client


def test_predict_returns_one_result_per_record_in_order(client: TestClient) -> None:
    response = client.post("/api/v1/predict", json={"records": [FLAT, INSPIRE, {**FLAT, "id": "a2"}]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a1", "42", "a2"]
    for result in results:
        scores = result["coreness"]["scores"]
        assert abs(sum(scores.values()) - 1) < 1e-4
        assert result["coreness"]["label"] == max(scores, key=scores.get)
        assert result["model"]["arch"] == "bag" and result["model"]["version"]
        assert all(0 <= c["score"] <= 1 for c in result["categories"])


def test_bad_records_get_422_with_index_and_reason(client: TestClient) -> None:
    records = [FLAT, {"id": "x"}, {"title": "no id", "abstract": "x"}, {"id": "y", "title": 3}]
    response = client.post("/api/v1/predict", json={"records": records})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["body", "records", i], "invalid_record") for i in (1, 2, 3)
    ]
    assert "missing title and abstract" in detail[0]["msg"]
    assert "missing required field 'id'" in detail[1]["msg"]
    assert "field 'title' must be a string" in detail[2]["msg"]
    not_an_object = client.post("/api/v1/predict", json={"records": [FLAT, "text"]})
    assert not_an_object.status_code == 422
    assert not_an_object.json()["detail"][0]["loc"] == ["body", "records", 1]


def test_oversize_batch_gets_413(client: TestClient) -> None:
    response = client.post("/api/v1/predict", json={"records": [FLAT] * 9})
    assert response.status_code == 413
    assert "more than 8 records in one request, above the limit of 8" in response.json()["detail"]


@pytest.mark.parametrize(("body", "status"), [(b"{not json", 400), (b"", 400), (b"[]", 422), (b'{"records": []}', 422),
                                              (b'{"records": {"id": 1}}', 422)])
def test_bad_bodies_get_4xx(client: TestClient, body: bytes, status: int) -> None:
    response = client.post("/api/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text


def test_oversize_text_is_rejected(client: TestClient) -> None:
    response = client.post("/api/v1/predict", json={"records": [{**FLAT, "abstract": "x" * 100_001}]})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "oversize"


def test_classic_inspire_coreness_endpoint(client: TestClient) -> None:
    response = client.post("/api/predict/coreness", json={"title": FLAT["title"], "abstract": FLAT["abstract"]})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"prediction", "scores"}
    assert set(body["scores"]) == {"core", "non_core", "rejected"}
    assert body["prediction"] == max(body["scores"], key=body["scores"].get)
    same = client.post("/api/v1/predict", json={"records": [{**FLAT, "id": "request"}]}).json()["results"][0]
    assert same["coreness"]["scores"] == pytest.approx(body["scores"])
    assert client.post("/api/predict/coreness", json={"title": "only a title"}).status_code == 422  # no abstract key


def test_classic_endpoint_answers_empty_text_with_the_models_empty_text_prediction(client: TestClient) -> None:
    """INSPIRE's client sends "" for a missing field and raises on 4xx: the classic service answered 200."""
    predictor = client.app.state.model_source.current()
    (expected,) = predictor.predict_batch([Record(id="request", title="", abstract="")])
    for body in ({"title": "", "abstract": ""}, {"title": " ", "abstract": "\n\t"}):
        response = client.post("/api/predict/coreness", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"prediction": expected.coreness.label,
                                   "scores": pytest.approx(expected.coreness.scores.model_dump())}
    form = client.post("/api/predict/coreness", data={"title": "", "abstract": ""})
    assert form.status_code == 200 and form.json()["prediction"] == expected.coreness.label
    # The batch endpoint keeps its validation: an empty record is an error there.
    empty = client.post("/api/v1/predict", json={"records": [{"id": "e", "title": "", "abstract": ""}]})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "records", 0]


def test_classic_endpoint_reads_a_json_body_sent_as_a_form(client: TestClient) -> None:
    """``curl -d '{...}'`` labels JSON as a form; a body that is a JSON object is read as JSON."""
    text = json.dumps({"title": FLAT["title"], "abstract": FLAT["abstract"]})
    as_json = client.post("/api/predict/coreness", json=json.loads(text)).json()
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        response = client.post("/api/predict/coreness", content=text.encode(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == as_json
    wrong = client.post("/api/predict/coreness", data={"titel": "t", "abstract": "a"})
    assert wrong.status_code == 422
    assert "read as application/x-www-form-urlencoded" in wrong.json()["detail"][0]["msg"]


def test_health_reports_model_and_device(client: TestClient, checkpoint: Path) -> None:
    body = client.get("/api/v1/health").json()
    config = json.loads((checkpoint / "config.json").read_text())
    assert body["status"] == "ok" and body["model_loaded"] is True and body["device"] == "cpu"
    assert body["model"] == {"name": config["name"], "version": config["version"], "arch": "bag"}
    assert "corestream_model_info" in client.get("/metrics").text


def test_missing_model_gives_503_not_500(tmp_path: Path) -> None:
    with TestClient(create_app(api_settings(tmp_path / "nowhere"))) as missing:
        health = missing.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["model_loaded"] is False
        assert health.json()["error"] == "ModelLoadError"  # the class only: paths, buckets and keys stay in the log
        response = missing.post("/api/v1/predict", json={"records": [FLAT]})
        assert response.status_code == 503 and "no model available" in response.json()["detail"]
        assert "nowhere" not in health.text + response.text
        assert missing.get("/api/health").status_code == 503


def test_concurrent_requests_are_coalesced_into_batches(checkpoint: Path) -> None:
    """Twelve one-record requests at once: fewer batches than requests, every answer for its own record."""
    app = create_app(api_settings(checkpoint, batch={"max_batch_records": 16, "max_wait_ms": 300}))
    batches: list[int] = []
    original = app.state.batcher._classify

    def counting(batch):
        batches.append(len(batch))
        original(batch)

    app.state.batcher._classify = counting
    with TestClient(app) as test_client:
        test_client.get("/api/v1/health")  # load the model first
        start = threading.Barrier(12)

        def call(i: int) -> str:
            start.wait()
            response = test_client.post("/api/v1/predict", json={"records": [{**FLAT, "id": f"r{i}"}]})
            return response.json()["results"][0]["id"]

        with ThreadPoolExecutor(12) as pool:
            ids = list(pool.map(call, range(12)))
    assert ids == [f"r{i}" for i in range(12)]
    assert sum(batches) == 12 and len(batches) < 12


def test_openapi_spec_documents_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/predict", "/api/predict/coreness", "/api/v1/health"} <= set(spec["paths"])
    assert "413" in spec["paths"]["/api/v1/predict"]["post"]["responses"]


@pytest.mark.timeout(120)
def test_corestream_serve_answers_over_http(checkpoint: Path) -> None:
    with corestream_serve(checkpoint) as run:
        response = httpx.post(f"{run.url}/api/v1/predict", json={"records": [INSPIRE]}, timeout=30)
        assert response.status_code == 200 and response.json()["results"][0]["id"] == "42"
    assert any(line["msg"] == "serving the predict API" for line in run.log_lines), run.stderr[-2000:]


def test_serve_with_a_missing_model_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "streaming.cli", "serve", "--model", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "model checkpoint directory not found" in result.stderr


# --------------------------------------------------------------------------- schemathesis


@pytest.mark.timeout(240)
def test_fuzzed_requests_get_no_server_error_and_match_the_spec(checkpoint: Path) -> None:
    """schemathesis generates valid and invalid requests from the OpenAPI spec: no 5xx, documented answers."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(api_settings(checkpoint)))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method == "post" else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(case) -> None:
                case.call_and_validate(checks=checks)

            call()


def test_records_from_skipped_sources_are_refused(checkpoint: Path) -> None:
    with TestClient(create_app(api_settings(checkpoint, skip_sources=["spam"]))) as skipping:
        response = skipping.post("/api/v1/predict", json={"records": [FLAT, {**FLAT, "id": "s", "source": "spam"}]})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "records", 1] and detail["type"] == "skipped_source"


def test_the_streams_id_and_text_rules(client: TestClient) -> None:
    """The API validates records with the stream's rules: bad ids are ``invalid_id``, a lone surrogate in the title
    (a ``\\ud800`` escape in the request body) is replaced, not an error."""
    records = [{"id": " a1", "title": "T"}, {"id": "a" * 513, "title": "T"}, {"id": "a\u0000", "title": "T"}]
    response = client.post("/api/v1/predict", json={"records": records})
    assert response.status_code == 422
    assert [d["type"] for d in response.json()["detail"]] == ["invalid_id"] * 3
    body = b'{"records": [{"id": "lone", "title": "Dark \\ud800 matter", "abstract": "x\\udfff"}]}'
    response = client.post("/api/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["id"] == "lone"
    response = client.post("/api/v1/predict", content=body.replace(b'"lone"', b'"\\ud800"'),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "invalid_id"
