"""The predict API under hostile input: body and record limits, strict JSON, short JSON error bodies, API key,
docs switch, health without internals; with the test client, a real uvicorn server and a schemathesis run
whose bodies carry NaN, Infinity and lone surrogates."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from streaming.apps.api import create_app
from tests.servers import MotoServer, free_port, wait_for_http
from tests.test_api import FLAT, api_settings, checkpoint  # noqa: F401 - checkpoint is a fixture

MAX_ERROR_BODY = 4_000  # no error body of these tests may be longer (the inputs are up to megabytes)


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:  # noqa: F811 - the imported fixture
    app = create_app(api_settings(checkpoint, api={"max_batch_records": 8, "max_body_bytes": 200_000}))
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, body: bytes, path: str = "/api/v1/predict", **headers: str) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def assert_short_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    assert len(response.content) < MAX_ERROR_BODY
    return json.loads(response.content)


# --------------------------------------------------------------------------- limits


def test_body_above_the_byte_limit_gets_413_without_echo(client: TestClient) -> None:
    body = json.dumps({"records": [{**FLAT, "abstract": "secret-words " * 20_000}]}).encode()
    detail = assert_short_json_error(post(client, body), 413)["detail"]
    assert "larger than 200000 bytes" in detail and "secret-words" not in detail


def test_chunked_body_above_the_limit_gets_413(client: TestClient) -> None:
    chunks = (b'{"records": [' + b'{"id": "x", "title": "t"},' * 10_000 for _ in range(1))
    response = client.post("/api/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert "larger than 200000 bytes" in assert_short_json_error(response, 413)["detail"]


def test_too_many_records_get_413_before_the_rest_is_parsed(client: TestClient) -> None:
    records = ",".join(json.dumps({**FLAT, "id": f"r{i}"}) for i in range(10_000))
    assert len(records) > 200_000  # above the byte limit too: check the record limit under it below
    small = ",".join(json.dumps({"id": f"r{i}", "title": "t"}) for i in range(9))
    detail = assert_short_json_error(post(client, f'{{"records": [{small}]}}'.encode()), 413)["detail"]
    assert "more than 8 records" in detail
    # Broken JSON after the ninth record: a full parse would answer 400; the count stops parsing first.
    broken = f'{{"records": [{small}, {{{{{{ "never parsed'.encode()
    assert "more than 8 records" in assert_short_json_error(post(client, broken), 413)["detail"]


def test_ten_thousand_records_under_the_byte_limit_get_413(checkpoint: Path) -> None:  # noqa: F811
    app = create_app(api_settings(checkpoint, api={"max_batch_records": 8, "max_body_bytes": 10_000_000}))
    body = json.dumps({"records": [{"id": f"r{i}", "title": "t"} for i in range(10_000)]}).encode()
    with TestClient(app) as test_client:
        assert "more than 8 records" in assert_short_json_error(post(test_client, body), 413)["detail"]


def test_wrong_shaped_large_body_gets_a_short_422(client: TestClient) -> None:
    body = json.dumps({"records": "x" * 150_000}).encode()
    detail = assert_short_json_error(post(client, body), 422)["detail"]
    assert detail[0]["loc"] == ["body", "records"] and "input" not in detail[0]
    long_id = json.dumps({"records": [{"id": "i" * 100_000}]}).encode()
    assert_short_json_error(post(client, long_id), 422)


# --------------------------------------------------------------------------- bytes that used to give 500


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"records": [{"id": "a", "title": NaN}]}', "NaN is not valid JSON"),
    (b'{"records": [{"id": "a", "title": "t", "x": Infinity}]}', "Infinity is not valid JSON"),
    (b'{"records": -Infinity}', "-Infinity is not valid JSON"),
    (b'{"records": [{"id": "a", "title": "t", "x": 1e999}]}', "number out of range"),
    (b'{"records": [{"\\ud800": "a", "id": "a", "title": "t"}]}', "lone surrogate"),
    (b'{"records": [{"id": "\xed\xa0\x80", "title": "t"}]}', "not valid UTF-8"),
    (b'{"records": [{"id": "a", "title": "\xff"}]}', "not valid UTF-8"),
    (b'{"records": [' + b"[" * 20_000 + b"]" * 20_000 + b"]}", "nested too deeply"),
    (b'{"records": [{"id": ' + b"9" * 5_000 + b', "title": "t"}]}', "invalid JSON"),
    (b'{"records": [{"id": "a", "title": "t"}]} trailing', "Extra data"),
    (b'{"records": [{"id": "a", "title": "t"},]}', "Expecting value"),
])
def test_hostile_json_gets_a_400_json_body(client: TestClient, body: bytes, reason: str) -> None:
    detail = assert_short_json_error(post(client, body), 400)["detail"]
    assert reason in detail


@pytest.mark.parametrize("body", [
    b'{"title": NaN, "abstract": "a"}', b'{"title": "\xed\xa0\x80"}',
    b'{"title": 1, "abstract": 2}', b'["title", "abstract"]', b"null",
])
def test_classic_endpoint_refuses_hostile_json_with_4xx(client: TestClient, body: bytes) -> None:
    response = post(client, body, path="/api/predict/coreness")
    assert response.status_code in (400, 422)
    assert_short_json_error(response, response.status_code)


@pytest.mark.parametrize("record_id", [b'"\\ud800"', b'"a\\udfff\\ud800"'])
def test_lone_surrogate_ids_are_invalid_ids_as_in_the_stream(client: TestClient, record_id: bytes) -> None:
    body = b'{"records": [{"id": ' + record_id + b', "title": "t"}]}'
    detail = assert_short_json_error(post(client, body), 422)["detail"]
    assert detail[0]["type"] == "invalid_id"


def test_lone_surrogate_in_a_classic_title_is_replaced_as_in_the_stream(client: TestClient) -> None:
    response = post(client, b'{"title": "Dark \\ud800 matter", "abstract": "a"}', path="/api/predict/coreness")
    assert response.status_code == 200, response.text
    assert set(response.json()["scores"]) == {"core", "non_core", "rejected"}


def test_unsupported_content_type_gets_415(client: TestClient) -> None:
    response = client.post("/api/v1/predict", content=b"records", headers={"content-type": "text/plain"})
    assert_short_json_error(response, 415)


# --------------------------------------------------------------------------- exposure


def test_api_key_guards_the_predict_endpoints_only(checkpoint: Path) -> None:  # noqa: F811
    app = create_app(api_settings(checkpoint, api={"api_key": "k-123"}))
    body = {"records": [FLAT]}
    with TestClient(app) as guarded:
        assert_short_json_error(guarded.post("/api/v1/predict", json=body), 401)
        assert_short_json_error(guarded.post("/api/v1/predict", json=body, headers={"X-API-Key": "k-12"}), 401)
        missing = guarded.post("/api/predict/coreness", json={"title": "t", "abstract": "a"})
        assert missing.headers["www-authenticate"] == "X-API-Key" and "k-123" not in missing.text
        assert guarded.post("/api/v1/predict", json=body, headers={"X-API-Key": "k-123"}).status_code == 200
        assert guarded.post("/api/predict/coreness", json={"title": "t", "abstract": "a"},
                            headers={"X-API-Key": "k-123"}).status_code == 200
        assert guarded.get("/api/v1/health").status_code == 200 and guarded.get("/api/health").status_code == 200
        spec = guarded.get("/openapi.json").json()
        assert "401" in spec["paths"]["/api/v1/predict"]["post"]["responses"]
        assert "APIKeyHeader" in spec["components"]["securitySchemes"]
        assert "k-123" not in repr(app.state.settings)


def test_docs_and_metrics_can_be_switched_off(checkpoint: Path) -> None:  # noqa: F811
    app = create_app(api_settings(checkpoint, api={"docs_enabled": False, "metrics_enabled": False}))
    with TestClient(app) as closed:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert closed.get(path).status_code == 404, path
        assert closed.post("/api/v1/predict", json={"records": [FLAT]}).status_code == 200


def test_health_names_the_error_class_not_the_bucket_or_keys(checkpoint: Path, moto_server: MotoServer,  # noqa: F811
                                                             tmp_path: Path) -> None:
    bucket = f"private-bucket-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="team/models/demo/aliases/prod.json", Body=b"{broken")
    settings_ = api_settings("registry://demo@prod", registry={
        "bucket": bucket, "prefix": "team/", "endpoint_url": moto_server.endpoint_url})
    settings_ = settings_.model_copy(update={"model": settings_.model.model_copy(
        update={"cache_dir": str(tmp_path / "cache")})})
    with TestClient(create_app(settings_)) as broken:
        health = broken.get("/api/v1/health")
        predict = broken.post("/api/v1/predict", json={"records": [FLAT]})
    assert health.status_code == 503 and health.json()["error"] == "ModelLoadError"
    assert predict.status_code == 503
    for leak in (bucket, "team/models", "aliases/prod.json", moto_server.endpoint_url):
        assert leak not in health.text + predict.text


# --------------------------------------------------------------------------- a real uvicorn server


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[str]:  # noqa: F811
    """``corestream serve`` on loopback (its default address), small limits."""
    port = free_port()
    env = {**os.environ, "CORESTREAM_MODEL__DEVICE": "cpu", "CORESTREAM_MODEL__RELOAD_INTERVAL_S": "0",
           "CORESTREAM_API__MAX_BODY_BYTES": "200000", "CORESTREAM_API__MAX_BATCH_RECORDS": "8",
           "CORESTREAM_API__PORT": str(port)}
    env.pop("CORESTREAM_API__HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "serve", "--model", str(checkpoint)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    started = [json.loads(line) for line in stderr.splitlines() if "serving the predict API" in line]
    assert started and started[0]["host"] == "127.0.0.1", stderr[-2000:]


def raw_request(base: str, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` + ``body`` on a fresh connection and read the answer (without sending anything more)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_uvicorn_answers_413_from_the_declared_length_before_reading(server: str) -> None:
    head = (b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n")
    answer = raw_request(server, head, b'{"records": [')  # 100 MB announced, 13 bytes sent: no waiting for more
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413") and b"larger than 200000 bytes" in body


def test_uvicorn_answers_hostile_bodies_with_4xx_and_stays_up(server: str) -> None:
    for body in (b'{"records": [{"id": "\xed\xa0\x80", "title": "t"}]}', b'{"records": [{"id": "\\ud800"}]}',
                 b'{"records": [{"id": "a", "title": NaN}]}', b'{"records": "' + b"x" * 150_000 + b'"}'):
        head = (b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n" % len(body))
        status, _, answer = raw_request(server, head, body).partition(b"\r\n\r\n")
        assert status.split(b" ")[1] in (b"400", b"422"), status
        assert len(answer) < MAX_ERROR_BODY and isinstance(json.loads(answer), dict)
    chunked = httpx.post(f"{server}/api/v1/predict", content=iter([b'{"records": ["' + b"y" * 100_000] * 3),
                         headers={"content-type": "application/json"}, timeout=30)
    assert chunked.status_code == 413
    ok = httpx.post(f"{server}/api/v1/predict", json={"records": [FLAT]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["results"][0]["id"] == FLAT["id"]


def test_inspire_client_contract(server: str) -> None:
    """What INSPIRE's workflows do: POST title and abstract (JSON or form), read ``scores[prediction]``."""
    title, abstract = "Search for dark photons in kaon decays", "We search for a light vector boson with NA62."
    answers = [
        httpx.post(f"{server}/api/predict/coreness", json={"title": title, "abstract": abstract}, timeout=30),
        httpx.post(f"{server}/api/predict/coreness", data={"title": title, "abstract": abstract}, timeout=30),
        httpx.post(f"{server}/api/predict/coreness", files={"title": (None, title), "abstract": (None, abstract)},
                   timeout=30),
        httpx.post(f"{server}/api/predict/coreness", json={"title": title, "abstract": ""}, timeout=30),
        httpx.post(f"{server}/api/predict/coreness", data={"title": title, "abstract": ""}, timeout=30),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        prediction, scores = body["prediction"], body["scores"]
        assert set(scores) == {"core", "non_core", "rejected"} and prediction in scores
        assert scores[prediction] == max(scores.values()) and math.isclose(sum(scores.values()), 1, abs_tol=1e-4)
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert answers[3].json() == answers[4].json()
    non_ascii = httpx.post(f"{server}/api/predict/coreness", data={"title": "Über Φ-mesons", "abstract": "é"},
                           timeout=30)
    assert non_ascii.status_code == 200
    health = httpx.get(f"{server}/api/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


# --------------------------------------------------------------------------- schemathesis with hostile values

NASTY_TEXT = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
NASTY = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), NASTY_TEXT, NASTY_TEXT.map(lambda s: "id" + s))


def _inject(body: Any, value: Any, key_nasty: bool, choice: int) -> Any:
    """``body`` with ``value`` put into one of its containers (picked by ``choice``), as a value or a key."""
    containers = []
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict | list):
            containers.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    if not containers:
        return value
    target = containers[choice % len(containers)]
    if isinstance(target, list):
        target.append(value)
    elif key_nasty and isinstance(value, str):
        target[value] = "x"
    else:
        target[next(iter(target), "id")] = value
    return body


@pytest.mark.timeout(300)
def test_fuzzed_bodies_with_nan_and_surrogates_get_no_server_error(checkpoint: Path) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(api_settings(checkpoint)))
    posts = [result.ok() for result in schema.get_all_operations() if result.ok().method == "post"]
    assert len(posts) == 2
    for operation in posts:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.tuples(operation.as_strategy(generation_mode=mode), NASTY, st.booleans(), st.booleans(),
                                 st.integers(0, 50))

            @given(drawn=strategy)
            @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(drawn: tuple) -> None:
                case, value, key_nasty, raw_bytes, choice = drawn
                if "json" in (case.media_type or "application/json"):
                    body = _inject(case.body, value, key_nasty, choice)
                    text = json.dumps(body, ensure_ascii=not raw_bytes, allow_nan=True)
                    case.body = text.encode("utf-8", "surrogatepass")  # raw ED A0 80 ... or \\ud800 escapes
                response = case.call_and_validate(checks=[not_a_server_error])
                assert response.status_code < 500, response.text[:300]
                assert len(response.content) < 200_000 and isinstance(response.json(), dict)

            call()

