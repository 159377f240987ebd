"""The docker-compose stack, Prometheus, Grafana and Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from config.settings import ENV_PREFIX, Settings
from streaming.observability.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
GRAFANA = ROOT / "config" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "corestream.json").read_text())
LONG_RUNNING = {"kafka", "elasticsearch", "minio", "prometheus", "grafana", "processor", "api"}
ONE_SHOTS = {"minio-init", "topics", "model-bootstrap"}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any) -> str:
    """Compose's ``${NAME:-default}`` with an empty shell environment."""
    return _VARIABLE.sub(lambda m: m.group("default") or "", str(value))


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def corestream_services() -> list[str]:
    return [name for name, svc in SERVICES.items() if str(svc.get("image", "")).startswith("corestream:")]


def setting_exists(variable: str) -> bool:
    """Does ``CORESTREAM_A__B`` name a field of :class:`Settings` (walking nested sections)?"""
    model: type[BaseModel] = Settings
    parts = variable.removeprefix(ENV_PREFIX).lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return index == len(parts) - 1
    return False


def test_stack_has_every_service() -> None:
    assert LONG_RUNNING | ONE_SHOTS | {"trainer"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["elasticsearch"]["image"].split(":")[1].startswith("8.15.")
    assert "broker,controller" in SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert SERVICES["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert SERVICES["processor"]["command"] == ["run"]
    assert SERVICES["topics"]["command"] == ["topics", "create"]
    assert SERVICES["api"]["command"] == ["serve"]


def test_depends_on_targets_exist_and_converge() -> None:
    for name, svc in SERVICES.items():
        for target, condition in (svc.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            kind = condition["condition"]
            assert kind in {"service_healthy", "service_completed_successfully", "service_started"}
            if kind == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy: no healthcheck"
            if kind == "service_completed_successfully":
                assert target in ONE_SHOTS and SERVICES[target].get("restart") == "no"
    # No dependency cycles: a topological order exists.
    pending = {name: set(svc.get("depends_on") or {}) for name, svc in SERVICES.items()}
    while pending:
        ready = [name for name, deps in pending.items() if not deps & set(pending)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in ready:
            del pending[name]


def test_long_running_services_have_healthchecks() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["retries"] >= 3, name


def test_processor_scales_and_waits_for_its_dependencies() -> None:
    processor = SERVICES["processor"]
    assert "container_name" not in processor and "ports" not in processor  # `--scale processor=3` works
    assert set(processor["depends_on"]) >= {"kafka", "elasticsearch", "topics", "model-bootstrap"}
    assert "9108" in [str(port) for port in processor["expose"]]
    assert any(volume.endswith(":/var/cache/corestream") for volume in processor["volumes"])


def test_trainer_is_a_tools_profile_job() -> None:
    trainer = SERVICES["trainer"]
    assert trainer["profiles"] == ["tools"]
    assert trainer["entrypoint"] == ["corestream-train"]


def test_minio_bucket_is_created_and_used_by_processor_and_trainer() -> None:
    init = SERVICES["minio-init"]
    assert init["image"].startswith("minio/mc")
    assert "mc mb --ignore-existing" in init["command"][0]
    bucket = environment("minio-init")["BUCKET"]
    for name in ("processor", "trainer", "model-bootstrap", "api"):
        env = environment(name)
        assert env["CORESTREAM_REGISTRY__ENDPOINT_URL"] == "http://minio:9000"
        assert env["CORESTREAM_REGISTRY__BUCKET"] == bucket
        assert env["CORESTREAM_REGISTRY__ACCESS_KEY_ID"] == environment("minio")["MINIO_ROOT_USER"]
        assert env["CORESTREAM_REGISTRY__SECRET_ACCESS_KEY"] == environment("minio")["MINIO_ROOT_PASSWORD"]


@pytest.mark.parametrize("service", corestream_services())
def test_corestream_environment_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(service)
    variables = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    unknown = [key for key in variables if not setting_exists(key)]
    assert not unknown, f"{service}: not corestream settings: {unknown}"
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.elasticsearch.url == "http://elasticsearch:9200"
    assert settings.model.model.startswith("registry://")
    assert settings.registry.secret_access_key is not None


def test_prometheus_scrapes_every_processor_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in environment("processor").items():
        monkeypatch.setenv(key, value)
    port = Settings().metrics.port
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    discovery = jobs["corestream-processor"]["dns_sd_configs"][0]
    assert discovery["names"] == ["processor"] and discovery["type"] == "A" and discovery["port"] == port
    assert jobs["corestream-processor"]["metrics_path"] == "/metrics"
    api_port = environment("api")["CORESTREAM_API__PORT"]
    assert jobs["corestream-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in SERVICES["prometheus"]["volumes"]


def test_grafana_provisioning_matches_the_stack() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "corestream.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in SERVICES["grafana"]["volumes"] if volume.startswith("./"))
    assert mounts["./config/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./config/grafana/dashboards"] == providers["providers"][0]["options"]["path"]
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def registry_series() -> set[str]:
    """Every series name the metrics registry can expose (labelled metrics may have no samples yet)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "info": ("_info",), "summary": ("", "_count", "_sum")}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes[family.type]}


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    known = registry_series()
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bcorestream_\w+", expr)}
    assert used, "dashboard queries no corestream metric"
    assert used <= known, f"unknown metrics in the dashboard: {sorted(used - known)}"


def test_dashboard_covers_the_operations_questions() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "rate(corestream_records_consumed_total", "rate(corestream_records_classified_total",
        "rate(corestream_records_dead_lettered_total", "by (topic, partition) (corestream_consumer_lag)",
        "corestream_batch_records", "corestream_inference_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(corestream_end_to_end_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(corestream_end_to_end_seconds_bucket",
        "by (label) (rate(corestream_predictions_coreness_total", "topk(15, sum by (category)",
        "by (name, version, arch, device) (corestream_model_info)", "corestream_es_bulk_seconds_bucket",
        "corestream_sink_errors_total",
    ):
        assert needle in exprs, needle
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_dockerfile_has_cpu_and_cuda_targets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {alias: image for image, alias in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)}
    assert {"cpu", "cuda", "runtime"} <= set(stages)
    assert "download.pytorch.org/whl/cpu" in dockerfile and "download.pytorch.org/whl/cu" in dockerfile
    assert 'ENTRYPOINT ["corestream"]' in dockerfile
    assert 'VOLUME ["/var/cache/corestream"]' in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and "root" not in users
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        for source in line.split()[:-1]:
            assert source == "README.md" or (ROOT / source).exists(), source  # README.md: the lead's


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_cli() is None, reason="no docker compose CLI installed (the checks above still ran)")
def test_docker_compose_config_accepts_the_file() -> None:
    cli = compose_cli()
    assert cli is not None
    result = subprocess.run([*cli, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(180)
def test_model_bootstrap_command_trains_pushes_and_promotes(moto_server, tmp_path: Path) -> None:
    """The one-shot's shell command, run as compose would (``$$`` -> ``$``) against S3 (moto), twice."""
    import boto3

    bucket = "bootstrap-models"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url).create_bucket(Bucket=bucket)
    command = SERVICES["model-bootstrap"]["command"][0].replace("$$", "$")
    command = command.replace("--sample-count 3000", "--sample-count 300").replace("/tmp/bootstrap-model",
                                                                                 str(tmp_path / "model"))
    env = {**os.environ, "CORESTREAM_REGISTRY__ENDPOINT_URL": moto_server.endpoint_url,
           "CORESTREAM_REGISTRY__BUCKET": bucket, "CORESTREAM_MODEL__DEVICE": "cpu"}
    for _ in range(2):  # the second run finds the model and does nothing
        result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=150)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    listing = subprocess.run(["corestream-train", "list", "corestream", "--json"], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
    (version,) = json.loads(listing.stdout)
    assert version["envs"] == ["prod"]
