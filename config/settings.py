"""Corestream settings: defaults < YAML file < environment variables (prefix ``CORESTREAM_``).

Nested sections use ``__`` in variable names, e.g. ``CORESTREAM_KAFKA__BOOTSTRAP_SERVERS``.
A YAML file is read from ``--config`` or ``CORESTREAM_CONFIG``; its keys mirror the sections below.
Every value is validated; a bad one raises :class:`SettingsError` naming the setting and its variable (its
value shown only as a short excerpt, and never for a secret). Secrets are ``SecretStr`` (the secret fields and
every Kafka option librdkafka treats as sensitive, :data:`config.secrets.KAFKA_SECRET_OPTIONS`), and the
user-info of any URL setting is masked: all hidden in ``repr()``, ``model_dump()``, errors and logs.
``model_dump(context={REVEAL: True})`` keeps URL user-info (for re-validation; never log it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from config.secrets import KAFKA_SECRET_OPTIONS, is_secret_name, mask

ENV_PREFIX = "CORESTREAM_"
CONFIG_ENV = "CORESTREAM_CONFIG"
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent
REVEAL = "reveal_secrets"  # serialization context key: keep URL user-info in model_dump()
_SHOWN_CHARS = 40  # a bad value is shown in an error up to this many characters


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names each bad setting."""


def _masked(value: Any) -> Any:
    """``value`` with the user-info of every URL in it masked (strings, nested in mappings and lists)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(item) for item in value)
    return value


class Section(BaseModel):
    """A settings section: unknown keys are errors (a misspelled YAML key must not be ignored silently).

    URL user-info in any of its values is masked in ``repr()`` and ``model_dump()``; the values themselves are
    unchanged (clients get the real URL)."""

    model_config = ConfigDict(extra="forbid")

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, _masked(value)

    @model_serializer(mode="wrap")
    def _mask_urls(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        return data if (info.context or {}).get(REVEAL) else _masked(data)


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    input_topics: list[str] = Field(default_factory=lambda: ["literature.records"], min_length=1)
    output_topic: str = "literature.classified"
    dlq_suffix: str = ".dlq"
    group_id: str = "corestream"
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    session_timeout_ms: int = Field(6000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    partition_assignment_strategy: str = "range"
    # Passed verbatim to librdkafka (security.protocol, sasl.*, ...); the options librdkafka treats as
    # sensitive (config.secrets.KAFKA_SECRET_OPTIONS: sasl.username/password, ssl.key.pem, ...) and any value
    # holding URL user-info are SecretStr.
    extra: dict[str, str | SecretStr] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _hide_secret_options(cls, extra: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        return {key: SecretStr(value) if isinstance(value, str) and (key in KAFKA_SECRET_OPTIONS or
                                                                     mask(value) != value) else value
                for key, value in extra.items()}

    def client_options(self) -> dict[str, str]:
        """``extra`` for the Kafka client config, secrets revealed (never log the result)."""
        return {key: value.get_secret_value() if isinstance(value, SecretStr) else value
                for key, value in self.extra.items()}

    def dlq_topic(self, input_topic: str) -> str:
        return f"{input_topic}{self.dlq_suffix}"


class ElasticsearchSettings(Section):
    url: str | None = None  # None: the Elasticsearch sink is off
    index: str = "literature-classifications"
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    retry_backoff_s: float = Field(0.5, gt=0)
    max_backoff_s: float = Field(30.0, gt=0)

    @field_validator("index")
    @classmethod
    def _index_name(cls, value: str) -> str:
        return check_index_name(value)


_INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')


def check_index_name(name: str) -> str:
    """Elasticsearch's rules for an index name; ``ValueError`` saying which one ``name`` breaks."""
    if not name:
        raise ValueError("an Elasticsearch index name must not be empty")
    if name != name.lower():
        raise ValueError(f"an Elasticsearch index name must be lowercase: {name!r}")
    if bad := sorted(set(name) & _INDEX_FORBIDDEN):
        raise ValueError(f"an Elasticsearch index name must not contain {' '.join(map(repr, bad))}: {name!r}")
    if name[0] in "-_+" or name in (".", ".."):
        raise ValueError(f"an Elasticsearch index name must not start with '-', '_' or '+', nor be '.' or '..': "
                         f"{name!r}")
    if len(name.encode("utf-8")) > 255:
        raise ValueError(f"an Elasticsearch index name must be at most 255 bytes: {name[:40]!r}...")
    return name


class BatchSettings(Section):
    max_batch_records: int = Field(64, ge=1, le=100_000)
    max_batch_tokens: int = Field(32_768, ge=1)
    max_wait_ms: int = Field(200, ge=0)
    queue_depth: int = Field(2, ge=1, le=64)
    # Processor behaviour around faults (see docs/processor.md).
    retry_backoff_s: float = Field(1.0, gt=0)  # first wait before retrying a batch whose sink is unavailable
    max_retry_backoff_s: float = Field(30.0, gt=0)
    revoke_wait_s: float = Field(5.0, ge=0)  # on revoke, wait this long for in-flight batches before abandoning
    shutdown_timeout_s: float = Field(30.0, ge=0)  # a stop (SIGTERM, a stall) is complete within this
    stalled_after_s: float = Field(300.0, gt=0)  # /healthz fails when work waits this long with no commit
    # `corestream run` exits with status 3 (restart it) once stalled this long; None: never (docker-compose: 600).
    exit_after_stalled_s: float | None = Field(None, gt=0)


class ModelSettings(Section):
    # A checkpoint directory or ``registry://NAME@ENV``.
    model: str = "artifacts/demo-model"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Encoder runtime of transformer/hybrid models: torch, int8 (dynamic int8 Linear layers, CPU only) or auto
    # (int8 on CPU, torch elsewhere). See docs/models.md for its speed and accuracy.
    runtime: Literal["auto", "torch", "int8"] = "torch"
    max_seq_length: int = Field(256, ge=8, le=8192)
    inference_batch_size: int = Field(64, ge=1)
    reload_interval_s: float = Field(60.0, ge=0)  # 0 disables hot reload
    cache_dir: str = ".cache/corestream/models"
    # Give a record its best category when none passes its threshold; None: the checkpoint decides (default on).
    at_least_one_category: bool | None = None


class RegistrySettings(Section):
    bucket: str = "corestream-models"
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    env: str = "prod"
    envs: list[str] = Field(default_factory=lambda: ["sandbox", "staging", "prod"], min_length=1)  # promotable
    creator: str | None = None


class RecordSettings(Section):
    max_text_chars: int = Field(100_000, ge=100)  # title + abstract above this is rejected as oversize
    max_message_bytes: int = Field(2_000_000, ge=1_000)


class SinkSettings(Section):
    output_topic_enabled: bool = True
    jsonl_path: str | None = None  # write results to this JSONL file too
    delivery_timeout_s: float = Field(30.0, gt=0)
    # Sink batching (docs/processor.md): one sink write gathers inference batches up to these limits.
    batch_records: int = Field(2000, ge=1)
    batch_bytes: int = Field(5_000_000, ge=1000)  # estimated request size
    batch_wait_ms: int = Field(20, ge=0)  # gather at most this long while input keeps coming
    max_in_flight: int = Field(2, ge=1, le=16)  # sink writes in progress at once (commits stay in order)


class MetricsSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"  # loopback unless configured (docker-compose sets 0.0.0.0)
    port: int = Field(9108, ge=0, le=65535)  # 0 picks a free port
    probe_timeout_s: float = Field(2.0, gt=0)  # /readyz (and each sink check) answers within this


class ApiSettings(Section):
    host: str = "127.0.0.1"  # loopback unless configured (docker-compose sets 0.0.0.0)
    port: int = Field(8080, ge=0, le=65535)
    max_batch_records: int = Field(256, ge=1)
    max_body_bytes: int = Field(8_000_000, ge=1_000)  # larger request bodies get 413 before they are read
    # An oversized body up to this size is read and discarded, so that the client reads its 413 (larger ones get it
    # at once and the connection is closed).
    discard_body_bytes: int = Field(32_000_000, ge=0)
    read_timeout_s: float = Field(30.0, gt=0)  # a request's head and body must arrive within this of its first byte
    idle_timeout_s: float = Field(5.0, gt=0)  # a connection with no request in progress is closed after this
    max_connections: int = Field(100, ge=1)  # a request while this many other connections are open gets 503
    # Micro-batching of the API (the stream's batch.max_wait_ms is for throughput): a single request waits at
    # most this long for others to join its batch; requests that queue behind a running batch always join.
    max_wait_ms: int = Field(5, ge=0)
    api_key: SecretStr | None = Field(None, min_length=4)  # when set, the predict endpoints require X-API-Key
    docs_enabled: bool = True  # /docs, /redoc and /openapi.json
    metrics_enabled: bool = True  # /metrics on the API port


class Settings(BaseSettings):
    """All corestream settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    elasticsearch: ElasticsearchSettings = Field(default_factory=ElasticsearchSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    records: RecordSettings = Field(default_factory=RecordSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    # Records whose source is listed pass through unclassified (cf. a model's "don't run on" list).
    skip_sources: list[str] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which comes in through init kwargs (see load_settings).
        return env_settings, init_settings


class _ResolvedSettings(Settings):
    """Settings whose sources were already read: validates the given values only, so overrides win."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, **other_sources: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc if not isinstance(part, int))


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid settings ({source}):"]
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        name = ".".join(str(p) for p in loc) or "<root>"
        lines.append(f"  - {name} (env {_env_name(loc)}): {item['msg']} (got {_shown_input(loc, item.get('input'))})")
    return "\n".join(lines)


def _shown_input(loc: tuple[Any, ...], value: Any) -> str:
    """A bad value for an error message: ``***`` for a secret, else its repr (URL user-info masked) cut to a
    short excerpt."""
    if any(is_secret_name(str(part)) for part in loc):
        return "***"
    text = mask(repr(value))
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file (or ``CORESTREAM_CONFIG``), env vars and overrides.

    ``overrides`` (e.g. from CLI flags) win over everything else.
    """
    config_file = config_file or os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = read_yaml(config_file) if config_file else {}
    source = f"config file {config_file} and environment" if config_file else "environment"
    try:
        settings = Settings(**data)
        if overrides:
            settings = _ResolvedSettings(**_deep_merge(settings.model_dump(context={REVEAL: True}), overrides))
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, source)) from None
    except EnvParseError as exc:  # a list or mapping variable that is not JSON
        raise SettingsError(_env_parse_message(exc)) from None
    return settings


def _env_parse_message(error: EnvParseError) -> str:
    match = re.search(r'field "(\w+)"', str(error))
    prefix = ENV_PREFIX + (match.group(1).upper() if match else "")
    names = sorted(name for name in os.environ if name.upper().startswith(prefix)) or [prefix + "*"]
    return (f"invalid settings (environment): cannot parse {', '.join(names)}: list and mapping values must be JSON, "
            f"e.g. {ENV_PREFIX}KAFKA__INPUT_TOPICS='[\"a\", \"b\"]'")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
