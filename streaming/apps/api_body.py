"""Request bodies and error bodies of the predict API, handled defensively.

* :class:`BodyLimitMiddleware`: a body above ``api.max_body_bytes`` gets 413, from its Content-Length before the
  app runs or as soon as the streamed bytes pass the limit (chunked bodies); nothing is echoed. The rest of such a
  body, up to ``api.discard_body_bytes``, is read and dropped first, so that a client still sending reads the 413
  instead of a connection reset (a client waiting on ``Expect: 100-continue`` gets it at once).
* :func:`parse_json`: strict UTF-8, strict JSON (no NaN/Infinity, no lone surrogates in keys, no numbers that
  overflow, bounded nesting); the ``records`` array of a predict body is parsed one element at a time and
  refused with 413 as soon as it holds more than the record limit, so an oversize batch is never parsed whole.
* :func:`safe_json`: what an error body may hold: short excerpts only, always valid JSON; the FastAPI error
  handlers (a client that hangs up mid-body is one WARNING line, no traceback), content-type check, form reading
  and OpenAPI body schema of endpoints that read their own body.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streaming.apps.api_server import READ_TIMED_OUT

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_SHOWN_CHARS = 300  # an error body shows at most this much of any text
MAX_SHOWN_ITEMS = 50  # ... and at most this many list entries
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (api.max_body_bytes, env "
                              "CORESTREAM_API__MAX_BODY_BYTES)", headers={"Connection": "close"})


class TooManyRecords(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"more than {limit} records in one request, above the limit of {limit} "
                              "(api.max_batch_records, env CORESTREAM_API__MAX_BATCH_RECORDS): split the batch")


class BodyLimitMiddleware:
    """Refuse bodies above ``max_bytes`` with 413 (by Content-Length before reading, else while streaming), after
    reading and dropping the rest of the body up to ``discard_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int, discard_bytes: int = 0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.discard_bytes = discard_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and not declared.strip().isdigit():
            error = HTTPException(400, "invalid Content-Length header", headers={"Connection": "close"})
            await error_response(error)(scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_bytes:
            if int(declared) <= self.discard_bytes and headers.get(b"expect", b"").lower() != b"100-continue":
                await _discard(receive, int(declared))
            await error_response(BodyTooLarge(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _discard(receive, self.discard_bytes - received)
                    raise BodyTooLarge(self.max_bytes)  # rendered by the app's HTTPException handler
            return message

        await self.app(scope, limited_receive, send)


async def _discard(receive: Receive, limit: int) -> None:
    """Read and drop request body messages until the body ends, the client leaves, or ``limit`` bytes."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


def error_response(exc: HTTPException) -> JSONResponse:
    """The JSON error body of ``exc``: ``{"detail": ...}`` with only short excerpts of any text."""
    return JSONResponse({"detail": safe_json(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def safe_json(value: Any, depth: int = 0) -> Any:
    """``value`` reduced to short, valid JSON: text cut to an excerpt (lone surrogates replaced), lists cut,
    non-finite numbers as null, anything else as a short text."""
    if isinstance(value, str):
        return excerpt(value)
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 10**18 else excerpt(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= 6:
        return excerpt(repr(value))
    if isinstance(value, dict):
        items = list(value.items())[:MAX_SHOWN_ITEMS]
        return {excerpt(str(key)): safe_json(item, depth + 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [safe_json(item, depth + 1) for item in value[:MAX_SHOWN_ITEMS]]
    return excerpt(repr(value))


def excerpt(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates replaced by U+FFFD."""
    cut = text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return cut.encode("utf-8", "replace").decode("utf-8") if not cut.isascii() else cut


# --------------------------------------------------------------------------- FastAPI glue


def add_error_handlers(app: FastAPI) -> None:
    """Every error body is JSON with short excerpts only (never the raw input), and never a 5xx for bad input."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        if not getattr(request.state, READ_TIMED_OUT, False):  # else the server's read timeout logged it
            log.warning("the client hung up before sending the whole request body",
                        extra={"method": request.method, "path": request.url.path})
        return Response(status_code=400)  # nobody reads it

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(HTTPException(422, _error_list(exc.errors())))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


def _error_list(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors without their input (only loc, type and message)."""
    out = []
    for error in errors:
        loc = list(error.get("loc", ()))
        out.append({"loc": loc if loc[:1] == ["body"] else ["body", *loc], "type": error.get("type"),
                    "msg": error.get("msg")})
    return out


def validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, _error_list(exc.errors(include_input=False, include_url=False))) from None


def require_type(request: Request, allowed: Sequence[str]) -> str:
    """The request's media type if allowed (a missing one counts as JSON), else 415."""
    media = request.headers.get("content-type", JSON_TYPES[0]).split(";", 1)[0].strip().lower()
    if media not in allowed and not (media.endswith("+json") and JSON_TYPES[0] in allowed):
        raise HTTPException(415, f"unsupported content type {safe_json(media)!r}; use {' or '.join(allowed)}")
    return media if media in allowed else JSON_TYPES[0]


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a form body (no files); every value decoded as UTF-8."""
    form = await request.form(max_files=0, max_fields=16)
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            raise HTTPException(400, "file uploads are not accepted")
        fields[key] = value
    return fields


def body_schema(model: type[BaseModel], media_types: Sequence[str]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its body itself (to enforce the limits first)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {media: {"schema": schema} for media in media_types}}}


# --------------------------------------------------------------------------- strict JSON


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constants)


def parse_json(raw: bytes, records_limit: int | None = None) -> Any:
    """``raw`` as strict JSON; 400 if it is not. With ``records_limit``, a top-level ``records`` array of
    more elements gets 413 while it is being parsed (the elements after the limit are never parsed)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = _document(text.removeprefix("\ufeff"), records_limit)
        _reject_surrogates(value)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise HTTPException(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise HTTPException(400, f"invalid JSON: {excerpt(str(exc), 80)}") from None
    return value


def _document(text: str, records_limit: int | None) -> Any:
    start = _skip(text, 0)
    if records_limit is None or not text.startswith("{", start):
        value, end = _DECODER.raw_decode(text, start)
    else:
        value, end = _object_with_records(text, start, records_limit)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip(text, end))
    return value


def _object_with_records(text: str, index: int, limit: int) -> tuple[dict[str, Any], int]:
    """A JSON object starting at ``text[index] == "{"`` whose ``records`` array is counted while parsed."""
    out: dict[str, Any] = {}
    index = _skip(text, index + 1)
    if text.startswith("}", index):
        return out, index + 1
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
        key, index = _DECODER.raw_decode(text, index)
        index = _expect(text, _skip(text, index), ":")
        if key == "records" and text.startswith("[", index):
            out[key], index = _counted_array(text, index, limit)
        else:
            out[key], index = _DECODER.raw_decode(text, index)
        index = _skip(text, index)
        if text.startswith("}", index):
            return out, index + 1
        index = _expect(text, index, ",")


def _counted_array(text: str, index: int, limit: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    index = _skip(text, index + 1)
    if text.startswith("]", index):
        return items, index + 1
    while True:
        if len(items) >= limit:
            raise TooManyRecords(limit)
        item, index = _DECODER.raw_decode(text, index)
        items.append(item)
        index = _skip(text, index)
        if text.startswith("]", index):
            return items, index + 1
        index = _expect(text, index, ",")


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


def _expect(text: str, index: int, char: str) -> int:
    if not text.startswith(char, index):
        raise json.JSONDecodeError(f"Expecting {char!r} delimiter", text, index)
    return _skip(text, index + 1)


def _reject_surrogates(value: Any) -> None:
    """ValueError if an object key holds a lone surrogate (a ``\\ud800`` escape). Values are left to the record
    rules (:mod:`models.records.schema`), as in the stream: refused in an id, replaced by U+FFFD in the text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not key.isascii():
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError("a key holds a lone surrogate (\\ud800-\\udfff escape)") from None
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
