"""Structured logging: one JSON object a line (or plain text), fields from ``extra=``, secrets masked
(:mod:`config.secrets`), no terminal colour codes."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from config.secrets import hide_value, is_secret_name, mask

__all__ = ["JsonFormatter", "TextFormatter", "hide_value", "mask", "setup_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Fields that never go into a line: uvicorn's ``color_message`` repeats ``msg`` with ANSI colour codes.
_DROPPED = {"color_message"}
_SECRET_KEYS = re.compile(r"password|secret|api_key|apikey|token|authorization|credential|private", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _scrub(key: str, value: object) -> object:
    """An extra field's value with secret keys (by name, and every Kafka secret option) and URL credentials
    masked, nested values included."""
    if _SECRET_KEYS.search(key) or is_secret_name(key):
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
            "msg": mask(_ANSI.sub("", record.getMessage())),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key in _DROPPED or key.startswith("_"):
                continue
            payload[key] = _scrub(key, value)
        if record.exc_info:
            payload["exc"] = mask(self.formatException(record.exc_info))
        return mask(json.dumps(payload, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask(_ANSI.sub("", super().format(record)))


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("elastic_transport", "urllib3", "botocore", "boto3", "s3transfer", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
