"""Structured logs: JSON lines with record/batch ids, secrets masked, level from settings."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from config.cli import build_parser, run_cli
from config.logging import mask, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_line_is_json_with_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("corestream.test")
    log.info("classified batch", extra={"batch_id": "b-17", "records": 64})
    log.warning("record dead-lettered", extra={"record_id": "1234", "reason": "invalid_json"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("sink failed", extra={"batch_id": "b-18"})
    first, second, third = json_lines(capsys.readouterr().err)
    assert first["msg"] == "classified batch" and first["batch_id"] == "b-17" and first["records"] == 64
    assert first["level"] == "INFO" and first["logger"] == "corestream.test" and first["ts"].endswith("+00:00")
    assert second["record_id"] == "1234" and second["reason"] == "invalid_json"
    assert third["level"] == "ERROR" and "ValueError: boom" in third["exc"]


def test_secrets_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("corestream.test")
    log.info("connecting to https://elastic:s3cr3t-pw@es.example:9200/", extra={"password": "hunter2",
                                                                                   "api_key": "AKIA-xyz"})
    try:
        raise ConnectionError("cannot reach http://user:topsecret@minio:9000")
    except ConnectionError:
        log.exception("registry down")
    output = capsys.readouterr().err
    for secret in ("s3cr3t-pw", "hunter2", "AKIA-xyz", "topsecret"):
        assert secret not in output
    first, second = json_lines(output)
    assert first["msg"] == "connecting to https://***@es.example:9200/"
    assert first["password"] == "***" and first["api_key"] == "***"
    assert "http://***@minio:9000" in second["exc"]


def test_secrets_inside_extra_values_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logging.getLogger("corestream.test").info("sink ready", extra={
        "url": "https://elastic:pw1@es:9200", "sink": {"name": "es", "token": "tk2", "hosts": ["http://u:pw3@h"]},
    })
    output = capsys.readouterr().err
    assert not any(secret in output for secret in ("pw1", "tk2", "pw3"))
    (line,) = json_lines(output)
    assert line["url"] == "https://***@es:9200"
    assert line["sink"] == {"name": "es", "token": "***", "hosts": ["http://***@h"]}


def test_mask_leaves_urls_without_credentials_alone() -> None:
    assert mask("http://kafka:9092 and s3://bucket/key") == "http://kafka:9092 and s3://bucket/key"
    assert mask("postgresql://u:p@db/x") == "postgresql://***@db/x"


def test_text_format_is_masked_too(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", "text")
    logging.getLogger("corestream.test").debug("url https://a:b@host")
    line = capsys.readouterr().err.strip()
    assert line.endswith("DEBUG corestream.test: url https://***@host")


def test_level_comes_from_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """``log_level`` from the YAML file or ``CORESTREAM_LOG_LEVEL`` decides what a command logs."""
    seen: list[int] = []

    def register(subparsers) -> None:
        command = subparsers.add_parser("probe")
        command.set_defaults(func=lambda args, settings: seen.append(logging.getLogger().level))

    module = type(sys)("probe_commands")
    module.register = register
    monkeypatch.setitem(sys.modules, "probe_commands", module)
    monkeypatch.delenv("CORESTREAM_LOG_LEVEL", raising=False)
    parser = build_parser("probe", "probe", ["probe_commands"])
    config = tmp_path / "settings.yaml"
    config.write_text("log_level: debug\n")
    assert run_cli(parser, ["--config", str(config), "probe"]) == 0
    monkeypatch.setenv("CORESTREAM_LOG_LEVEL", "warning")
    assert run_cli(parser, ["probe"]) == 0
    assert seen == [logging.DEBUG, logging.WARNING]
    monkeypatch.setenv("CORESTREAM_LOG_LEVEL", "LOUD")
    assert run_cli(parser, ["probe"]) == 2
    assert "CORESTREAM_LOG_LEVEL" in capsys.readouterr().err


def test_a_command_logs_json_to_stderr() -> None:
    """A real process: the ``corestream`` CLI's logging set-up writes parseable JSON lines."""
    code = (
        "import logging; from config.logging import setup_logging; setup_logging('INFO', 'json'); "
        "logging.getLogger('x').debug('hidden'); logging.getLogger('x').info('shown', extra={'batch_id': 7})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    (line,) = json_lines(result.stderr)
    assert line["msg"] == "shown" and line["batch_id"] == 7


def test_uvicorn_lines_carry_no_colour_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn adds ``color_message`` (its message with ANSI codes) to its records: JSON lines stay plain."""
    for fmt in ("json", "text"):
        setup_logging("INFO", fmt)
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42, extra={
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
        logging.getLogger("uvicorn.error").info("\x1b[32mUvicorn running\x1b[0m on %s", "http://127.0.0.1:8080")
        output = capsys.readouterr().err
        assert "\x1b" not in output and "\\u001b" not in output and "color_message" not in output, output
        assert "Started server process [42]" in output and "Uvicorn running on http://127.0.0.1:8080" in output
