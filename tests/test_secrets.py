"""Secrets stay secret: settings reprs and dumps, settings errors, Kafka client options, log masking, bind defaults."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from config.cli import CommandError, run_cli
from config.clients import admin_config, consumer_config, producer_config
from config.logging import JsonFormatter, mask
from config.secrets import KAFKA_SECRET_OPTIONS
from config.settings import Settings, SettingsError, load_settings
from tests.test_compose import environment

SECRETS = {"sasl.password": "kafka-pw-1", "ssl.key.password": "key-pw-2", "sasl.oauthbearer.client.secret": "cs-3"}
# Every option librdkafka redacts in its own config dump, each with a value of its own.
OPTION_SECRETS = {option: f"opt-secret-{index}-{option.replace('.', '-')}"
                  for index, option in enumerate(sorted(KAFKA_SECRET_OPTIONS - set(SECRETS)))}
PUBLIC = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "ssl.certificate.pem": "public-cert",
          "sasl.oauthbearer.token.endpoint.url": "https://idp-user:idp-pw-7@idp/token"}
EXTRA = {**PUBLIC, **SECRETS, **OPTION_SECRETS}
URL_SECRETS = {"CORESTREAM_ELASTICSEARCH__URL": ("https://elastic:es-url-pw-8@es.example:9200", "es-url-pw-8"),
               "CORESTREAM_REGISTRY__ENDPOINT_URL": ("http://minio-ak:s3-url-sk-9@minio:9000", "s3-url-sk-9")}
PLAIN_SECRETS = ("kafka-pw-1", "key-pw-2", "cs-3", "api-key-4", "es-pw-5", "s3-secret-6", "idp-pw-7", "es-url-pw-8",
                 "s3-url-sk-9", "minio-ak", "idp-user", *OPTION_SECRETS.values())


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CORESTREAM_KAFKA__EXTRA", json.dumps(EXTRA))
    monkeypatch.setenv("CORESTREAM_API__API_KEY", "api-key-4")
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__PASSWORD", "es-pw-5")
    monkeypatch.setenv("CORESTREAM_REGISTRY__SECRET_ACCESS_KEY", "s3-secret-6")
    for variable, (url, _) in URL_SECRETS.items():
        monkeypatch.setenv(variable, url)
    return load_settings()


def test_secrets_are_hidden_in_repr_dumps_and_logs(secret_settings: Settings,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    shown = [repr(secret_settings), str(secret_settings), str(secret_settings.model_dump()),
             secret_settings.model_dump_json(), repr(secret_settings.kafka), str(secret_settings.kafka.extra)]
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("corestream.test.secrets")
    logger.addHandler(handler)
    try:
        logger.warning("settings", extra={"settings": secret_settings.model_dump(), "kafka": secret_settings.kafka})
    finally:
        logger.removeHandler(handler)
    shown.append(capsys.readouterr().err)
    for text in shown:
        assert not any(secret in text for secret in PLAIN_SECRETS), text[:300]
    assert secret_settings.kafka.extra["security.protocol"] == "SASL_PLAINTEXT"  # not secret: plain
    assert secret_settings.kafka.extra["ssl.certificate.pem"] == "public-cert"
    assert "https://***@es.example:9200" in repr(secret_settings)
    assert secret_settings.model_dump()["registry"]["endpoint_url"] == "http://***@minio:9000"
    assert secret_settings.api.api_key.get_secret_value() == "api-key-4"
    # The values themselves are untouched: clients get the real URLs.
    assert secret_settings.elasticsearch.url == URL_SECRETS["CORESTREAM_ELASTICSEARCH__URL"][0]
    assert secret_settings.registry.endpoint_url == URL_SECRETS["CORESTREAM_REGISTRY__ENDPOINT_URL"][0]


@pytest.mark.parametrize("option", sorted(KAFKA_SECRET_OPTIONS))
def test_each_sensitive_kafka_option_is_hidden_everywhere(option: str, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    secret = f"only-{option}-value"
    monkeypatch.setenv("CORESTREAM_KAFKA__EXTRA", json.dumps({option: secret, "client.id": "visible-id"}))
    settings = load_settings()
    logging.getLogger("corestream.test.secrets").addHandler(handler := logging.StreamHandler())
    handler.setFormatter(JsonFormatter())
    try:
        logging.getLogger("corestream.test.secrets").warning(
            "options", extra={"kafka_options": dict(settings.kafka.extra), "settings": settings.model_dump()})
    finally:
        logging.getLogger("corestream.test.secrets").removeHandler(handler)
    shown = [repr(settings), str(settings.model_dump()), settings.model_dump_json(), capsys.readouterr().err]
    for text in shown:
        assert secret not in text and "visible-id" in text, text[:300]
    assert settings.kafka.client_options()[option] == secret
    monkeypatch.setenv("CORESTREAM_KAFKA__EXTRA", json.dumps({option: [secret]}))  # invalid: not a string
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert secret not in str(caught.value) and "(got ***)" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("variable", sorted(URL_SECRETS))
def test_url_user_info_is_hidden_in_settings_errors(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url, secret = URL_SECRETS[variable]
    monkeypatch.setenv(variable, url)
    monkeypatch.setenv("CORESTREAM_MODEL__DEVICE", f"gpu-at-{url}")  # a bad value holding the URL
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert secret not in str(caught.value) and "***@" in str(caught.value), str(caught.value)


def test_pem_private_keys_are_masked_in_log_text() -> None:
    pem = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----"
    assert mask(f"bad key {pem} given") == "bad key -----BEGIN ENCRYPTED PRIVATE KEY-----*** given"
    assert "MIIFHDBO" not in mask("truncated -----BEGIN RSA PRIVATE KEY-----\nMIIFHDBOBgkq")


def test_kafka_clients_get_the_real_secret_values(secret_settings: Settings) -> None:
    for config in (consumer_config(secret_settings), producer_config(secret_settings), admin_config(secret_settings)):
        assert {key: config[key] for key in EXTRA} == EXTRA
    Producer(producer_config(secret_settings)).flush(0)  # librdkafka accepts the options (no SecretStr objects)


def test_overrides_keep_secrets(secret_settings: Settings) -> None:
    again = load_settings(kafka={"partitions": 9})
    assert again.kafka.client_options() == EXTRA and again.kafka.partitions == 9
    assert "kafka-pw-1" not in repr(again)


@pytest.mark.parametrize(("variable", "value", "hidden"), [
    ("CORESTREAM_KAFKA__EXTRA", '{"sasl.password": 987654321}', "987654321"),
    ("CORESTREAM_KAFKA__EXTRA", '{"sasl.password": ["hunter-list-pw"]}', "hunter-list-pw"),
    (None, {"elasticsearch": {"password": {"not": "a string pw"}}}, "a string pw"),
    (None, {"api": {"api_key": ["yaml-api-key"]}}, "yaml-api-key"),
])
def test_settings_errors_never_echo_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str | None,
                                             value: Any, hidden: str) -> None:
    config = None
    if variable:
        monkeypatch.setenv(variable, value)
    else:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(value))
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert hidden not in str(caught.value) and "(got ***)" in str(caught.value), str(caught.value)


def test_settings_errors_show_only_an_excerpt_of_long_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTREAM_MODEL__DEVICE", "gpu-" + "x" * 5_000)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "model.device (env CORESTREAM_MODEL__DEVICE)" in message and "(5006 characters)" in message
    assert len(message) < 600


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:p@ss/w:rd@es.example:9200/idx", "https://***@es.example:9200/idx"),
    ("connect http://ghp_tokenOnly123@github.com/x failed", "connect http://***@github.com/x failed"),
    ("postgres://:only-password@db:5432", "postgres://***@db:5432"),
    ("SASL_SSL://svc:pw%40x@broker:9093", "SASL_SSL://***@broker:9093"),
    ("a https://u:one@h1 and https://v:two@h2", "a https://***@h1 and https://***@h2"),
    ("model registry://coreness@prod", "model registry://coreness@prod"),
    ("plain https://es.example:9200/idx", "plain https://es.example:9200/idx"),
])
def test_url_masking_handles_any_user_info(text: str, expected: str) -> None:
    assert mask(text) == expected


def test_api_and_metrics_bind_loopback_unless_configured() -> None:
    defaults = Settings()
    assert (defaults.api.host, defaults.metrics.host) == ("127.0.0.1", "127.0.0.1")
    assert defaults.api.api_key is None and defaults.api.docs_enabled is True
    assert environment("api")["CORESTREAM_API__HOST"] == "0.0.0.0"  # compose publishes the API port
    assert environment("processor")["CORESTREAM_METRICS__HOST"] == "0.0.0.0"  # Prometheus scrapes it


def test_command_errors_mask_url_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(args: argparse.Namespace, settings: Settings) -> int:
        raise CommandError("cannot load registry://m@prod from http://minio-ak:cli-pw-10@minio:9000")

    parser = argparse.ArgumentParser(prog="corestream")
    parser.set_defaults(func=fail)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert run_cli(parser, []) == 2  # (it sets up logging: restored below)
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert "cli-pw-10" not in err and "minio-ak" not in err
    assert "registry://m@prod from http://***@minio:9000" in err
