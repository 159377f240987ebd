"""HTTP predict API (FastAPI): the stream's model and micro-batcher behind a request/response interface.

* ``POST /api/v1/predict``: ``{"records": [record, ...]}`` of either record shape -> ``{"results": [...]}``.
* ``POST /api/predict/coreness``: the classic INSPIRE classifier call, ``{"title", "abstract"}`` as JSON or
  form-encoded -> ``{"prediction": "core"|"non_core"|"rejected", "scores": {"core", "non_core", "rejected"}}``.
  Both fields empty (INSPIRE's client sends "" for a missing one) is not an error here, as in the classic service:
  the answer is the model's own prediction for an empty text (for the linear model its bias terms, i.e. close to
  the training prior). A form-typed body that is a JSON object (``curl -d '{...}'``) is read as JSON.
* ``GET /api/v1/health``: model loaded, name/version/arch, device (an error class, never the error's text);
  ``GET /api/health``: the classic service's ``{"status": "ok"}``.
* ``GET /metrics``: Prometheus metrics (``streaming.observability.metrics.REGISTRY``; off with ``api.metrics_enabled``).

Limits: bodies above ``api.max_body_bytes`` get 413 (the client can read it: the rest of the body is dropped up
to ``api.discard_body_bytes``), more than ``api.max_batch_records`` records get 413 while the body is parsed;
error bodies never echo more than a short excerpt of the input (:mod:`streaming.apps.api_body`). With
``api.api_key`` set the predict endpoints require an ``X-API-Key`` header; ``api.docs_enabled: false`` removes
``/docs``, ``/redoc`` and ``/openapi.json``.

Records of concurrent requests are coalesced into micro-batches (:class:`streaming.pipeline.batcher.MicroBatcher`)
by one worker thread that also runs inference, so the event loop never blocks on the model; a batch waits at most
``api.max_wait_ms`` (5 ms) for more requests, not the stream's ``batch.max_wait_ms``.
``corestream serve`` runs it with uvicorn, with read and idle timeouts and a connection cap
(:mod:`streaming.apps.api_server`).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from config.cli import CommandError
from config.logging import hide_value
from config.settings import BatchSettings, Settings
from models.inference.source import ModelLoadError, ModelSource
from models.records.intake import estimate_tokens, parse_input, skipped_source
from models.records.schema import (
    ClassificationResult,
    CorenessLabel,
    CorenessScores,
    ModelInfo,
    Record,
    RecordError,
)
from models.registry.provenance import generated_sample_warning
from streaming.apps.api_body import (
    FORM_TYPES,
    JSON_TYPES,
    BodyLimitMiddleware,
    add_error_handlers,
    body_schema,
    form_fields,
    parse_json,
    require_type,
    validated,
)
from streaming.apps.api_server import AccessLogFilter, uvicorn_options
from streaming.observability.metrics import MODEL_METRICS, REGISTRY
from streaming.pipeline.batcher import MicroBatcher

log = logging.getLogger(__name__)

REASON_SKIPPED_SOURCE = "skipped_source"
API_KEY_HEADER = "X-API-Key"

EXAMPLE_RECORD = {
    "id": "1802.01234",
    "title": "Search for dark photons in rare kaon decays",
    "abstract": "We search for a light vector boson produced in K+ decays with the NA62 detector.",
}


# --------------------------------------------------------------------------- request and response bodies


class PredictRequest(BaseModel):
    records: list[dict[str, Any]] = Field(
        min_length=1,
        description="Records to classify: flat (id, title, abstract, ...) or INSPIRE literature records "
        "(control_number, titles, abstracts, ...). At most api.max_batch_records per request.",
        examples=[[EXAMPLE_RECORD]],
    )


class PredictResponse(BaseModel):
    results: list[ClassificationResult] = Field(description="One result per record, in request order")


class CorenessRequest(BaseModel):
    """The request of the classic INSPIRE classifier (``/api/predict/coreness``)."""

    title: str
    abstract: str


class CorenessResponse(BaseModel):
    prediction: CorenessLabel
    scores: CorenessScores


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    model_loaded: bool
    model: ModelInfo | None = None
    device: str | None = None
    error: str | None = Field(None, description="The class of the load error (its text is in the service log)")


class ClassicHealthResponse(BaseModel):
    """The classic INSPIRE classifier's health answer."""

    status: Literal["ok", "unavailable"]


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]]


# --------------------------------------------------------------------------- micro-batching


class ModelUnavailable(RuntimeError):
    """No model can be loaded; requests get 503."""


@dataclass
class _Pending:
    record: Record
    future: Future = field(default_factory=Future)


class InferenceBatcher:
    """One worker thread: collects records of concurrent requests into micro-batches and classifies them.

    A batch closes at ``max_batch_records`` records, ``max_batch_tokens`` tokens, or when its oldest record
    has waited ``max_wait_ms``. The live predictor is fetched once per batch, so a hot reload swaps the model
    only between batches (as in the stream processor).
    """

    def __init__(self, model_source: ModelSource, batch: BatchSettings) -> None:
        self.model_source = model_source
        self.batch = batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="api-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout)
                self._thread = None

    async def predict(self, records: Sequence[Record]) -> list[ClassificationResult]:
        """Classify ``records`` (in order) together with whatever other requests are waiting."""
        self.start()
        pending = [_Pending(record) for record in records]
        for item in pending:
            self._queue.put(item)
        return list(await asyncio.gather(*(asyncio.wrap_future(item.future) for item in pending)))

    def _run(self) -> None:
        batcher: MicroBatcher[_Pending] = MicroBatcher(
            self.batch.max_batch_records, self.batch.max_batch_tokens, self.batch.max_wait_ms
        )
        deadline = 0.0
        while True:
            timeout = max(0.0, deadline - time.monotonic()) if len(batcher) else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            else:
                if item is None:  # stop
                    self._classify(batcher.take())
                    return
            if item is not None:
                closed = batcher.add(item, estimate_tokens(item.record, self.model_source))
                if len(batcher) == 1:
                    deadline = time.monotonic() + batcher.max_wait_s
                if closed:
                    self._classify(closed)
            if batcher.due():
                self._classify(batcher.take())

    def _classify(self, batch: list[_Pending]) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            predictor = self.model_source.current()
            results = predictor.predict_batch([item.record for item in batch])
        except ModelLoadError as exc:
            error: Exception = ModelUnavailable(str(exc))
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            log.exception("inference failed", extra={"records": len(batch)})
            error = exc
        else:
            for item, result in zip(batch, results, strict=True):
                item.future.set_result(result)
            return
        for item in batch:
            item.future.set_exception(error)


# --------------------------------------------------------------------------- the app


def create_app(settings: Settings, model_source: ModelSource | None = None) -> FastAPI:
    """The API app; the model is loaded on first use (``corestream serve`` loads it before listening)."""
    api = settings.api
    source = model_source or ModelSource(settings, hooks=MODEL_METRICS)
    batcher = InferenceBatcher(source, settings.batch.model_copy(update={"max_wait_ms": api.max_wait_ms}))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.stop()

    docs = api.docs_enabled
    app = FastAPI(
        title="corestream",
        version="1",
        summary="INSPIRE coreness and arXiv categories for research-paper records",
        description=__doc__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings, app.state.model_source, app.state.batcher = settings, source, batcher
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes, discard_bytes=api.discard_body_bytes)
    add_error_handlers(app)

    def parse(records: list[dict[str, Any]]) -> list[Record]:
        limit = settings.api.max_batch_records
        if len(records) > limit:
            raise HTTPException(
                413,
                f"{len(records)} records in one request, above the limit of {limit} "
                "(api.max_batch_records, env CORESTREAM_API__MAX_BATCH_RECORDS): split the batch",
            )
        parsed: list[Record] = []
        errors: list[dict[str, Any]] = []
        for index, data in enumerate(records):
            try:
                record = parse_input(data, settings.records)
            except RecordError as exc:
                errors.append({"loc": ["body", "records", index], "type": exc.reason, "msg": exc.message})
                continue
            if skipped_source(record, settings.skip_sources, source):
                errors.append({"loc": ["body", "records", index], "type": REASON_SKIPPED_SOURCE,
                               "msg": f"record {record.id}: the model does not run on source {record.source!r}"})
            parsed.append(record)
        if errors:
            raise HTTPException(422, errors)
        return parsed

    async def classify(records: list[Record]) -> list[ClassificationResult]:
        try:
            return await batcher.predict(records)
        except ModelUnavailable as exc:
            log.error("no model available for a request", extra={"error": str(exc)})
            raise HTTPException(503, "no model available (ModelLoadError); the service log says why") from None

    problems = {
        400: {"model": ErrorResponse, "description": "The body is not valid UTF-8 JSON (or form data)"},
        413: {"model": ErrorResponse, "description": "The body is too large, or holds too many records"},
        415: {"model": ErrorResponse, "description": "Unsupported content type"},
        422: {"model": ErrorResponse, "description": "The body or a record is invalid"},
        503: {"model": ErrorResponse, "description": "The model cannot be loaded"},
    }
    guarded: dict[str, Any] = {}
    if api.api_key is not None:
        problems[401] = {"model": ErrorResponse, "description": f"Missing or wrong {API_KEY_HEADER} header"}
        guarded["dependencies"] = [Security(_api_key_check(api.api_key.get_secret_value()))]

    @app.post("/api/v1/predict", response_model=PredictResponse, responses=problems, tags=["predict"],
              openapi_extra=body_schema(PredictRequest, JSON_TYPES), **guarded)
    async def predict(request: Request) -> PredictResponse:
        """Classify a batch of records (coreness and arXiv categories); 422 names each bad record's index."""
        require_type(request, JSON_TYPES)
        data = parse_json(await request.body(), records_limit=api.max_batch_records)
        body = validated(PredictRequest, data)
        return PredictResponse(results=await classify(parse(body.records)))

    @app.post("/api/predict/coreness", response_model=CorenessResponse, responses=problems,
              tags=["inspire-classifier"], openapi_extra=body_schema(CorenessRequest, JSON_TYPES + FORM_TYPES),
              **guarded)
    async def predict_coreness(request: Request) -> CorenessResponse:
        """Drop-in for the INSPIRE classifier's coreness endpoint (JSON or form-encoded title and abstract).

        Both fields empty: 200 with the model's prediction for an empty text (the classic service accepted it)."""
        media = require_type(request, JSON_TYPES + FORM_TYPES)
        raw = await request.body()
        if media in FORM_TYPES and not (media == FORM_TYPES[0] and _json_object(raw)):
            body = _read_as(media, CorenessRequest, await form_fields(request))
        else:
            body = validated(CorenessRequest, parse_json(raw))
        if not body.title.strip() and not body.abstract.strip():
            record = Record(id="request", title="", abstract="")  # the documented empty-text answer
        else:
            try:
                record = parse_input({"id": "request", "title": body.title, "abstract": body.abstract},
                                     settings.records)
            except RecordError as exc:
                raise HTTPException(422, [{"loc": ["body"], "type": exc.reason, "msg": exc.message}]) from None
        (result,) = await classify([record])
        return CorenessResponse(prediction=result.coreness.label, scores=result.coreness.scores)

    async def model_health() -> HealthResponse:
        try:
            predictor = await asyncio.to_thread(source.current)
        except ModelLoadError as exc:
            log.error("health: the model cannot be loaded", extra={"error": str(exc)})
            return HealthResponse(status="unavailable", model_loaded=False, error=type(exc).__name__)
        return HealthResponse(status="ok", model_loaded=True, model=predictor.info, device=predictor.device)

    @app.get("/api/v1/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}},
             tags=["health"])
    async def health():
        """Model loaded (loading it if needed), its name/version/arch and device; 503 if it cannot load."""
        body = await model_health()
        return body if body.model_loaded else JSONResponse(body.model_dump(mode="json"), status_code=503)

    @app.get("/api/health", response_model=ClassicHealthResponse,
             responses={503: {"model": ClassicHealthResponse}}, tags=["inspire-classifier"])
    async def classic_health():
        """The classic INSPIRE classifier's health check: ``{"status": "ok"}`` once the model is loaded."""
        body = await model_health()
        return ClassicHealthResponse(status=body.status) if body.model_loaded else \
            JSONResponse({"status": body.status}, status_code=503)

    if api.metrics_enabled:
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _read_as(media: str, model: type[BaseModel], data: dict[str, str]) -> Any:
    """``data`` validated as ``model``; a 422 says which content type the body was read as."""
    try:
        return validated(model, data)
    except HTTPException as exc:
        for error in exc.detail:
            error["msg"] = f"{error['msg']} (the body was read as {media}, from its Content-Type)"
        raise


def _json_object(raw: bytes) -> bool:
    """Is a form-typed body really a JSON object (``curl -d '{"title": ...}'`` sends one as a form)?"""
    if not raw.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(parse_json(raw), dict)
    except HTTPException:
        return False


def _api_key_check(expected: str) -> Any:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The key set in api.api_key")
    wanted = expected.encode("utf-8", "surrogatepass")

    async def check(given: str | None = Security(header)) -> None:
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), wanted):
            raise HTTPException(401, f"missing or wrong API key ({API_KEY_HEADER} header)",
                                headers={"WWW-Authenticate": API_KEY_HEADER})

    return check


# --------------------------------------------------------------------------- corestream serve


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the HTTP predict API (FastAPI + uvicorn)",
                                   description="Serve POST /api/v1/predict, POST /api/predict/coreness, "
                                   "GET /api/v1/health and /metrics with the configured model.")
    parser.add_argument("--host", help="listen address (default: setting api.host)")
    parser.add_argument("--port", type=int, help="listen port (default: setting api.port)")
    parser.add_argument("--model", help="checkpoint directory or registry://NAME@ENV (default: setting model.model)")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if args.model:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"model": args.model})})
    source = ModelSource(settings, hooks=MODEL_METRICS)
    try:
        predictor = source.load()
    except ModelLoadError as exc:
        raise CommandError(str(exc)) from None
    if warning := generated_sample_warning(predictor.config):
        log.warning(warning)
    source.start_reloading()
    api = settings.api
    if api.api_key is not None:
        hide_value(api.api_key.get_secret_value())  # never in a log line, wherever a client puts it
    logging.getLogger("uvicorn.access").addFilter(AccessLogFilter())
    host, port = args.host or api.host, args.port if args.port is not None else api.port
    log.info("serving the predict API", extra={
        "host": host, "port": port, "model": predictor.info.name, "version": predictor.info.version,
        "device": predictor.device, "read_timeout_s": api.read_timeout_s, "idle_timeout_s": api.idle_timeout_s,
        "max_connections": api.max_connections, "max_wait_ms": api.max_wait_ms})
    try:
        uvicorn.run(create_app(settings, source), host=host, port=port, **uvicorn_options(api))
    finally:
        source.stop()
    return 0
