"""Model registry on a real S3 API (moto server): push, list, promote, demote, metadata, verified loading."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from config.settings import Settings, load_settings
from models.inference.source import ModelLoadError, ModelSource
from models.registry.store import ModelRegistry
from tests.servers import MotoServer
from trainer.cli import main as train_cli
from trainer.datasets.sample import generate_sample
from trainer.training.train import train_model


def tiny_model(out: Path, seed: int, drop_category: str | None = None) -> Path:
    """A small bag model trained in a second; ``drop_category`` gives it another label set."""
    records = generate_sample(300, seed=seed)
    if drop_category:
        for record in records:
            record["categories"] = [c for c in record["categories"] if c != drop_category] or ["hep-th"]
    return train_model(records, arch="bag", output_dir=out, epochs=2, seed=seed, progress=False, device="cpu",
                       num_buckets=4096, embed_dim=16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "a": tiny_model(root / "a", seed=1),
        "b": tiny_model(root / "b", seed=2),
        "other_labels": tiny_model(root / "c", seed=3, drop_category="cs.LG"),
    }


@pytest.fixture
def registry_env(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh bucket on the moto server, wired into CORESTREAM_* so the CLI and ModelSource use it."""
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("CORESTREAM_REGISTRY__ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("CORESTREAM_REGISTRY__BUCKET", bucket)
    monkeypatch.setenv("CORESTREAM_REGISTRY__PREFIX", "team/")
    monkeypatch.setenv("CORESTREAM_REGISTRY__CREATOR", "tester")
    monkeypatch.setenv("CORESTREAM_MODEL__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CORESTREAM_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CORESTREAM_MODEL__RELOAD_INTERVAL_S", "0")
    return load_settings()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI points the root logger at the (captured) stderr of the moment; put the handlers back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = train_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def source_for(settings: Settings, uri: str) -> ModelSource:
    return ModelSource(settings.model_copy(update={"model": settings.model.model_copy(update={"model": uri})}))


def test_push_list_promote_demote_and_resolve(registry_env: Settings, checkpoints: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "push", str(checkpoints["a"]), "--name", "demo")[1].startswith("pushed demo v1")
    assert cli(capsys, "push", str(checkpoints["b"]), "--name", "demo")[1].startswith("pushed demo v2")

    assert cli(capsys, "promote", "demo", "--version", "v1", "--env", "prod")[1].strip() == "demo@prod -> v1"
    source = source_for(registry_env, "registry://demo@prod")
    predictor = source.load()
    assert (predictor.info.name, predictor.info.version) == ("demo", "v1")
    result = predictor.predict_batch([_record()])[0]
    assert result.model.version == "v1"

    status, out, _ = cli(capsys, "promote", "demo", "--version", "v2", "--env", "prod")
    assert (status, out.strip()) == (0, "demo@prod -> v2 (was v1)")
    assert source_for(registry_env, "registry://demo@prod").load().info.version == "v2"

    status, table, _ = cli(capsys, "list", "demo")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "CREATED", "CREATOR"]
    assert [line.split()[0] for line in lines[1:]] == ["v1", "v2"]
    assert "prod" in lines[2] and "prod" not in lines[1] and "tester" in lines[1]

    status, out, _ = cli(capsys, "demote", "demo", "--env", "prod")
    assert (status, out.strip()) == (0, "demo@prod -> v1 (was v2)")
    assert source_for(registry_env, "registry://demo@prod").load().info.version == "v1"

    alias = ModelRegistry(registry_env.registry).alias("demo", "prod")
    assert [(e.action, e.version, e.replaced, e.by) for e in alias.history] == [
        ("promote", "v1", None, "tester"), ("promote", "v2", "v1", "tester"), ("demote", "v1", "v2", "tester")]
    assert alias.previous == []

    listed = json.loads(cli(capsys, "list", "demo", "--json")[1])
    assert [(v["version"], v["envs"]) for v in listed] == [("v1", ["prod"]), ("v2", [])]
    assert listed[0]["category_labels"] and listed[0]["coreness_labels"] == ["core", "non_core", "rejected"]


def test_manifest_records_every_file_and_versions_are_immutable(registry_env: Settings,
                                                                 checkpoints: dict[str, Path]) -> None:
    registry = ModelRegistry(registry_env.registry)
    with ThreadPoolExecutor(4) as pool:
        manifests = list(pool.map(lambda _: registry.push(checkpoints["a"], "race"), range(4)))
    assert sorted(m.version for m in manifests) == ["v1", "v2", "v3", "v4"]
    manifest = registry.manifest("race", "v1")
    local = sorted(p.name for p in checkpoints["a"].iterdir())
    assert sorted(manifest.files) == local
    assert all(len(entry.sha256) == 64 and entry.size > 0 for entry in manifest.files.values())
    assert manifest.creator == "tester" and manifest.arch == "bag" and manifest.category_labels
    # The manifest, written last with If-None-Match, can never be replaced by a second push of the same id.
    assert registry._put_json(registry.key("race", "v1", "manifest.json"), manifest, create=True) is False


def test_tampered_file_is_refused(registry_env: Settings, checkpoints: dict[str, Path]) -> None:
    registry = ModelRegistry(registry_env.registry)
    registry.push(checkpoints["a"], "demo")
    registry.promote("demo", "v1", "staging")
    s3 = boto3.client("s3", endpoint_url=registry_env.registry.endpoint_url, region_name="us-east-1")
    key = registry.key("demo", "v1", "model.safetensors")
    weights = bytearray(s3.get_object(Bucket=registry.bucket, Key=key)["Body"].read())
    weights[-1] ^= 0xFF
    s3.put_object(Bucket=registry.bucket, Key=key, Body=bytes(weights))

    with pytest.raises(ModelLoadError, match="sha256 mismatch for model.safetensors"):
        source_for(registry_env, "registry://demo@staging").load()
    assert not (Path(registry_env.model.cache_dir) / "demo" / "v1").exists()


def test_damaged_cache_is_downloaded_again(registry_env: Settings, checkpoints: dict[str, Path]) -> None:
    registry = ModelRegistry(registry_env.registry)
    registry.push(checkpoints["a"], "demo")
    registry.promote("demo", "v1", "prod")
    source_for(registry_env, "registry://demo@prod").load()
    cached = Path(registry_env.model.cache_dir) / "demo" / "v1" / "model.safetensors"
    cached.write_bytes(b"garbage")
    assert source_for(registry_env, "registry://demo@prod").load().info.version == "v1"
    assert cached.read_bytes() == (checkpoints["a"] / "model.safetensors").read_bytes()


def test_other_label_set_needs_force(registry_env: Settings, checkpoints: dict[str, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "push", str(checkpoints["a"]), "--name", "demo")
    cli(capsys, "push", str(checkpoints["other_labels"]), "--name", "demo")
    cli(capsys, "promote", "demo", "--version", "v1", "--env", "prod")

    status, _, err = cli(capsys, "promote", "demo", "--version", "v2", "--env", "prod")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "other labels than v1" in err and "cs.LG" in err and "--force" in err
    assert ModelRegistry(registry_env.registry).alias("demo", "prod").version == "v1"

    assert cli(capsys, "promote", "demo", "--version", "v2", "--env", "prod", "--force")[0] == 0
    assert ModelRegistry(registry_env.registry).alias("demo", "prod").version == "v2"


@pytest.mark.parametrize(("argv", "message"), [
    (["promote", "nope", "--version", "v1", "--env", "prod"], "unknown model 'nope'"),
    (["promote", "demo", "--version", "v9", "--env", "prod"], "unknown version 'v9' of model 'demo'"),
    (["promote", "demo", "--version", "v1", "--env", "qa"], "unknown environment 'qa'"),
    (["demote", "demo", "--env", "staging"], "has no version in environment 'staging'"),
    (["demote", "demo", "--env", "prod"], "no previous version"),
    (["metadata", "demo", "v7", "--require-gpu"], "unknown version 'v7'"),
    (["list", "nope"], "unknown model 'nope'"),
    (["push", "/does/not/exist", "--name", "demo"], "model directory not found"),
])
def test_cli_errors_are_one_line(registry_env: Settings, checkpoints: dict[str, Path],
                                 capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    cli(capsys, "push", str(checkpoints["a"]), "--name", "demo")
    cli(capsys, "promote", "demo", "--version", "v1", "--env", "prod")
    status, _, err = cli(capsys, *argv)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_missing_credentials_is_a_clear_error(registry_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    status, _, err = cli(capsys, "list", "demo")
    assert status == 2 and "no S3 credentials found" in err and "CORESTREAM_REGISTRY__ACCESS_KEY_ID" in err


def test_metadata_require_gpu_and_dont_run_on(registry_env: Settings, checkpoints: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "push", str(checkpoints["a"]), "--name", "demo")
    cli(capsys, "promote", "demo", "--version", "v1", "--env", "prod")

    status, out, _ = cli(capsys, "metadata", "demo", "v1", "--add-dont-run-on", "arXiv", "--add-dont-run-on", "CDS",
                         "--profile", "batch={\"max_records\": 32}")
    assert status == 0 and json.loads(out) == {"dont_run_on": ["arXiv", "CDS"], "require_gpu": False,
                                               "profiles": {"batch": {"max_records": 32}}}
    source = source_for(registry_env, "registry://demo@prod")
    source.load()
    assert source.dont_run_on() == {"arXiv", "CDS"}

    cli(capsys, "metadata", "demo", "v1", "--clear-dont-run-on")
    assert source.check_for_update() is False  # same version: only its metadata is refreshed
    assert source.dont_run_on() == frozenset()

    assert json.loads(cli(capsys, "metadata", "demo", "v1", "--require-gpu")[1])["require_gpu"] is True
    with pytest.raises(ModelLoadError, match="requires a GPU"):
        source_for(registry_env, "registry://demo@prod").load()
    cli(capsys, "metadata", "demo", "v1", "--no-require-gpu")
    assert source_for(registry_env, "registry://demo@prod").load().info.version == "v1"


def test_local_checkpoint_and_missing_one(registry_env: Settings, checkpoints: dict[str, Path]) -> None:
    predictor = source_for(registry_env, str(checkpoints["a"])).load()
    assert predictor.predict_batch([_record()])[0].id == "r1"
    with pytest.raises(ModelLoadError, match="checkpoint directory not found"):
        source_for(registry_env, str(checkpoints["a"] / "missing")).load()
    with pytest.raises(ModelLoadError, match="registry://NAME@ENV"):
        source_for(registry_env, "registry://demo").load()


def _record():
    from models.records.schema import Record

    return Record(id="r1", title="Black hole horizon", abstract="We study gravitational waves from a black hole.")
