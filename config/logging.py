"""Structured logging: one JSON object a line (or plain text), fields from ``extra=``, secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRET_KEYS = re.compile(r"password|secret|api_key|apikey|token|authorization|credential|private", re.IGNORECASE)
# Any user-info: everything from ``scheme://`` to the last "@" before the next whitespace, so passwords holding
# "@", "/" or ":" and token-only user-info are covered. ``registry://NAME@ENV`` holds no secret and is kept.
_URL_CREDENTIALS = re.compile(r"(?<![\w+.-])(?!registry://)(?P<scheme>[a-z][a-z0-9+._-]*://)\S*@", re.IGNORECASE)


def mask(text: str) -> str:
    """Hide credentials embedded in URLs (``https://user:p@ss/w@host`` -> ``https://***@host``).

    Errs on the side of hiding: a URL whose path holds an "@" loses the part before it too.
    """
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def _scrub(key: str, value: object) -> object:
    """An extra field's value with secret-looking keys and URL credentials masked, nested values included."""
    if _SECRET_KEYS.search(key):
        return "***"
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub("", v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}``; keys that look secret are masked."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            payload[key] = _scrub(key, value)
        if record.exc_info:
            payload["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("elastic_transport", "urllib3", "botocore", "boto3", "s3transfer", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
