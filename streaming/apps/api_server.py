"""The predict API's HTTP server: uvicorn with timeouts and a connection cap, and an access log without secrets.

uvicorn closes a connection only ``timeout_keep_alive`` after a response: a connection that never sends a request,
or sends it slowly, is held for ever. :func:`guarded_protocol` adds, on top of uvicorn's h11 protocol:

* idle timeout (``api.idle_timeout_s``): a connection with no request in progress closes after this long, also
  before its first request (uvicorn's keep-alive timer, armed at connect too);
* read timeout (``api.read_timeout_s``): a request's head and body must arrive within this time of its first
  byte; else the server answers 408 (if it has not answered yet), logs one WARNING and closes the connection.

The connection cap (``api.max_connections``) is uvicorn's ``limit_concurrency``: a request arriving while that many
other connections are open gets 503. :class:`AccessLogFilter` drops query strings from access log lines (the API
takes no query parameters; a client may put its key there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.settings import ApiSettings

log = logging.getLogger(__name__)
READ_TIMED_OUT = "read_timed_out"  # request state key: the server cut this request off (not the client)

_TIMEOUT_BODY = b'{"detail": "the request did not arrive within api.read_timeout_s"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def guarded_protocol(api: ApiSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the idle and read timeouts of ``api``."""

    class GuardedH11Protocol(H11Protocol):
        read_timeout_s = api.read_timeout_s

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # Idle before the first request, as after each response.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            if self._read_deadline is None and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the whole request is in
                self._cancel_read_deadline()

        def on_response_complete(self) -> None:
            self._cancel_read_deadline()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_read_deadline()
            super().connection_lost(exc)

        def _cancel_read_deadline(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _read_timed_out(self) -> None:
            self._read_deadline = None
            if self.transport.is_closing():
                return
            answered = self.cycle is not None and self.cycle.response_started
            if self.cycle is not None and not self.cycle.response_complete:
                # The app now sees a disconnect: this line is the one that reports it (api_body.client_gone).
                self.cycle.scope.setdefault("state", {})[READ_TIMED_OUT] = True
            log.warning("closing a connection whose request did not arrive in time",
                        extra={"client": _client(self.client), "read_timeout_s": self.read_timeout_s,
                               "state": self.conn.their_state.__name__})
            if not answered:
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return GuardedH11Protocol


def _client(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


class AccessLogFilter(logging.Filter):
    """uvicorn's access line (``client - "METHOD path HTTP/v" status``) without the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


def uvicorn_options(api: ApiSettings) -> dict[str, Any]:
    """The ``uvicorn.run``/``uvicorn.Config`` options for ``api``."""
    return {
        "http": guarded_protocol(api),
        "timeout_keep_alive": api.idle_timeout_s,
        # uvicorn counts the connection carrying the request: +1 so that max_connections others are allowed.
        "limit_concurrency": api.max_connections + 1,
        "log_config": None,
    }
