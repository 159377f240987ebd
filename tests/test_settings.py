"""Settings (config/settings.py): defaults < YAML file < environment < overrides, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from config.cli import build_parser, run_cli
from config.settings import CONFIG_ENV, DEFAULT_CONFIG_DIR, ENV_PREFIX, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CORESTREAM_* variables from the developer's shell or other tests."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.input_topics == ["literature.records"]
    assert settings.kafka.dlq_topic("literature.records") == "literature.records.dlq"
    assert settings.elasticsearch.url is None
    assert settings.log_level == "INFO"


def test_shipped_default_yaml_matches_the_defaults() -> None:
    assert load_settings(DEFAULT_CONFIG_DIR / "default.yaml") == Settings()


def test_env_overrides_with_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTREAM_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("CORESTREAM_KAFKA__INPUT_TOPICS", '["a", "b"]')
    monkeypatch.setenv("CORESTREAM_KAFKA__EXTRA", '{"security.protocol": "SASL_SSL"}')
    monkeypatch.setenv("CORESTREAM_BATCH__MAX_BATCH_RECORDS", "128")
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__URL", "http://es:9200")
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__PASSWORD", "hunter2")
    monkeypatch.setenv("CORESTREAM_SINKS__OUTPUT_TOPIC_ENABLED", "false")
    monkeypatch.setenv("CORESTREAM_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.kafka.input_topics == ["a", "b"]
    assert settings.kafka.extra == {"security.protocol": "SASL_SSL"}
    assert settings.kafka.group_id == "corestream"  # the rest of the section keeps its defaults
    assert settings.batch.max_batch_records == 128
    assert settings.elasticsearch.url == "http://es:9200"
    assert settings.elasticsearch.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
    assert settings.sinks.output_topic_enabled is False
    assert settings.log_level == "DEBUG"


def test_yaml_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "c.yaml", {
        "kafka": {"group_id": "from-yaml", "partitions": 6, "bootstrap_servers": "yaml:9092"},
        "model": {"model": "registry://coreness@staging"},
        "skip_sources": ["publisher-x"],
    })
    settings = load_settings(config)
    assert (settings.kafka.group_id, settings.kafka.partitions, settings.kafka.bootstrap_servers) == (
        "from-yaml", 6, "yaml:9092")
    assert settings.model.model == "registry://coreness@staging"
    assert settings.skip_sources == ["publisher-x"]

    monkeypatch.setenv("CORESTREAM_KAFKA__BOOTSTRAP_SERVERS", "env:9092")  # env beats the file, key by key
    settings = load_settings(config)
    assert (settings.kafka.group_id, settings.kafka.bootstrap_servers) == ("from-yaml", "env:9092")

    settings = load_settings(config, kafka={"partitions": 9}, log_level="error")  # overrides beat both
    assert (settings.kafka.partitions, settings.kafka.group_id, settings.kafka.bootstrap_servers) == (
        9, "from-yaml", "env:9092")
    assert settings.log_level == "ERROR"

    monkeypatch.setenv(CONFIG_ENV, str(config))  # the file can come from CORESTREAM_CONFIG
    assert load_settings().kafka.group_id == "from-yaml"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CORESTREAM_BATCH__MAX_BATCH_RECORDS", "0",
         "batch.max_batch_records (env CORESTREAM_BATCH__MAX_BATCH_RECORDS): Input should be greater than or equal "
         "to 1 (got '0')"),
        ("CORESTREAM_KAFKA__PARTITIONS", "three",
         "kafka.partitions (env CORESTREAM_KAFKA__PARTITIONS): Input should be a valid integer"),
        ("CORESTREAM_MODEL__DEVICE", "tpu", "model.device (env CORESTREAM_MODEL__DEVICE): Input should be 'auto', "),
        ("CORESTREAM_METRICS__PORT", "70000", "metrics.port (env CORESTREAM_METRICS__PORT): Input should be less than"),
        ("CORESTREAM_LOG_LEVEL", "loud", "log_level (env CORESTREAM_LOG_LEVEL): Input should be 'DEBUG', 'INFO'"),
        ("CORESTREAM_SINKS__OUTPUT_TOPIC_ENABLED", "perhaps",
         "sinks.output_topic_enabled (env CORESTREAM_SINKS__OUTPUT_TOPIC_ENABLED): Input should be a valid boolean"),
    ],
)
def test_bad_env_value_names_setting_and_variable(variable: str, value: str, expected: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("invalid settings (environment):\n")
    assert expected in str(caught.value)


def test_bad_json_in_env_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTREAM_KAFKA__INPUT_TOPICS", "not-json")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "CORESTREAM_KAFKA__INPUT_TOPICS" in str(caught.value)
    assert "must be JSON" in str(caught.value)


def test_every_bad_value_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"kafka": {"partitions": 0, "input_topics": []}, "unknown_key": 1})
    monkeypatch.setenv("CORESTREAM_API__PORT", "-1")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"invalid settings (config file {config} and environment):"
    assert len(lines) == 5
    assert any(line.startswith("  - kafka.partitions (env CORESTREAM_KAFKA__PARTITIONS)") for line in lines)
    assert any(line.startswith("  - kafka.input_topics (env CORESTREAM_KAFKA__INPUT_TOPICS): List should have at least")
               for line in lines)
    assert any(line.startswith("  - api.port (env CORESTREAM_API__PORT)") for line in lines)
    assert any(line.startswith("  - unknown_key (env CORESTREAM_UNKNOWN_KEY): Extra inputs are not permitted")
               for line in lines)


def test_misspelled_yaml_key_in_a_section_is_an_error(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"kafka": {"bootstrap_server": "typo:9092"}})
    with pytest.raises(SettingsError, match=r"kafka\.bootstrap_server \(env CORESTREAM_KAFKA__BOOTSTRAP_SERVER\): "
                                            r"Extra inputs are not permitted"):
        load_settings(config)


def test_yaml_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=f"^config file not found: {tmp_path / 'missing.yaml'}$"):
        load_settings(tmp_path / "missing.yaml")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "also-missing.yaml"))
    with pytest.raises(SettingsError, match="config file not found: .*also-missing.yaml"):
        load_settings()
    monkeypatch.delenv(CONFIG_ENV)
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [unclosed\n")
    with pytest.raises(SettingsError, match=f"config file {broken} is not valid YAML"):
        load_settings(broken)
    with pytest.raises(SettingsError, match="must hold a mapping of settings, got list"):
        load_settings(write_yaml(tmp_path / "list.yaml", ["a", "b"]))
    assert load_settings(write_yaml(tmp_path / "empty.yaml", None)) == Settings()
    with pytest.raises(SettingsError, match=r"kafka \(env CORESTREAM_KAFKA\): Input should be a valid dictionary"):
        load_settings(write_yaml(tmp_path / "section.yaml", {"kafka": "127.0.0.1:9092"}))


def test_cli_reports_settings_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser("corestream-train", "test", ["trainer.datasets.cli"])
    assert run_cli(parser, ["--config", str(tmp_path / "nope.yaml"), "stats", "x.jsonl"]) == 2
    assert capsys.readouterr().err == f"corestream-train: error: config file not found: {tmp_path / 'nope.yaml'}\n"
    monkeypatch.setenv("CORESTREAM_KAFKA__INPUT_TOPICS", "not-json")
    assert run_cli(parser, ["stats", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("corestream-train: error: ") and "Traceback" not in err


def test_overrides_beat_the_environment(monkeypatch) -> None:
    """A CLI flag (passed as an override) wins over the same setting in the environment."""
    monkeypatch.setenv("CORESTREAM_LOG_LEVEL", "warning")
    monkeypatch.setenv("CORESTREAM_KAFKA__GROUP_ID", "from-env")
    settings = load_settings(log_level="DEBUG")
    assert settings.log_level == "DEBUG"
    assert settings.kafka.group_id == "from-env"  # untouched settings keep their environment value
