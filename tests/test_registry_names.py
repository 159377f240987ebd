"""The registry naming rule against a real S3 API (moto server): the traversal attempts of issue 11 are refused
with a clear error and nothing outside the cache is touched; the cache is checked on every load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest

from config.settings import Settings
from models.inference.source import ModelLoadError, ModelSource
from models.registry.names import InvalidNameError, check_name, check_version, path_under
from models.registry.store import ModelRegistry, RegistryError
from tests.test_registry import _restore_logging, cli, registry_env, tiny_model  # noqa: F401 - fixtures
from trainer.backfill import Backfill


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("names") / "model", seed=4)


@pytest.fixture
def world(registry_env: Settings, checkpoint: Path, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """``demo v1`` pushed and promoted to prod; the cache two levels under ``tmp_path``; a victim directory."""
    registry = ModelRegistry(registry_env.registry)
    registry.push(checkpoint, "demo")
    registry.promote("demo", "v1", "prod")
    victim = tmp_path / "victim" / "victim2"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    cache = tmp_path / "a" / "cache"
    settings = registry_env.model_copy(update={"model": registry_env.model.model_copy(
        update={"cache_dir": str(cache)})})
    s3 = boto3.client("s3", endpoint_url=registry_env.registry.endpoint_url, region_name="us-east-1")
    return {"registry": registry, "settings": settings, "victim": victim, "cache": cache, "s3": s3,
            "tmp": tmp_path}


def load(world: dict[str, Any], uri: str = "registry://demo@prod") -> Any:
    settings: Settings = world["settings"]
    return ModelSource(settings.model_copy(update={"model": settings.model.model_copy(update={"model": uri})})).load()


def put(world: dict[str, Any], key: str, document: Any) -> None:
    world["s3"].put_object(Bucket=world["registry"].bucket, Key=f"team/models/{key}", Body=json.dumps(document))


def manifest_document(world: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**world["registry"].manifest("demo", "v1").model_dump(mode="json"), **changes}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` except the cache, with size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if "cache" not in p.relative_to(root).parts}


def assert_outside_untouched(world: dict[str, Any], before: dict[str, tuple[int, int]]) -> None:
    assert snapshot(world["tmp"]) == before
    assert (world["victim"] / "keep.txt").read_text() == "precious"


def test_manifest_naming_another_directory_is_refused(world: dict[str, Any], checkpoint: Path) -> None:
    """The issue's attack: manifest name ``../../victim``, version ``victim2``, also stored under that literal key."""
    attack = manifest_document(world, name="../../victim", version="victim2")
    put(world, "demo/v1/manifest.json", attack)
    put(world, "../../victim/victim2/manifest.json", attack)
    for relative in attack["files"]:
        world["s3"].upload_file(str(checkpoint / relative), world["registry"].bucket,
                                f"team/models/../../victim/victim2/{relative}")
    before = snapshot(world["tmp"])
    with pytest.raises(ModelLoadError, match=r"demo v1 manifest is invalid: name: .*invalid model name '\.\./\.\./vic"):
        load(world)
    with pytest.raises(InvalidNameError, match="invalid model name"):
        world["registry"].download("../../victim", "victim2", world["cache"])
    assert_outside_untouched(world, before)


def test_manifest_of_another_model_is_refused(world: dict[str, Any]) -> None:
    put(world, "demo/v1/manifest.json", manifest_document(world, name="other"))
    with pytest.raises(ModelLoadError, match="demo v1 manifest is invalid: it names 'other' 'v1'"):
        load(world)


@pytest.mark.parametrize("version", ["..", "../../victim/victim2", "v1/..", "v1\n", "v０1"])
def test_alias_pointing_at_a_dotted_version_is_refused(world: dict[str, Any], version: str) -> None:
    alias = json.loads(world["s3"].get_object(Bucket=world["registry"].bucket,
                                              Key="team/models/demo/aliases/prod.json")["Body"].read())
    put(world, "demo/aliases/prod.json", {**alias, "version": version})
    before = snapshot(world["tmp"])
    with pytest.raises(ModelLoadError, match="demo alias prod is invalid: version: .*invalid version"):
        load(world)
    assert_outside_untouched(world, before)


def test_registry_uri_with_traversal_is_refused(world: dict[str, Any]) -> None:
    put(world, "../evil/aliases/prod.json", {"name": "../evil", "env": "prod", "version": "v1"})
    before = snapshot(world["tmp"])
    for uri, what in [("registry://../evil@prod", "model name '../evil'"), ("registry://demo@../prod", "environment"),
                      ("registry://de/mo@prod", "model name"), ("registry://demo@prod/..", "environment")]:
        with pytest.raises(ModelLoadError, match=f"invalid {what}"):
            load(world, uri)
    assert_outside_untouched(world, before)


@pytest.mark.parametrize("files", [{}, None, {"../../victim/victim2/keep.txt": {"sha256": "0" * 64, "size": 8}},
                                   {"/etc/passwd": {"sha256": "0" * 64, "size": 1}}, {"a\\..\\b": {"sha256": "0",
                                                                                                   "size": 1}}])
def test_manifest_without_files_or_with_unsafe_paths_is_refused(world: dict[str, Any], files: Any) -> None:
    load(world)  # a good copy in the cache: it must not be used without a manifest that lists its files
    document = manifest_document(world, files=files)
    if files is None:
        document.pop("files")
    put(world, "demo/v1/manifest.json", document)
    before = snapshot(world["tmp"])
    with pytest.raises(ModelLoadError, match="demo v1 manifest is invalid: files"):
        load(world)
    assert_outside_untouched(world, before)


def test_cache_is_verified_on_every_load(world: dict[str, Any], checkpoint: Path) -> None:
    load(world)
    cached = world["cache"] / "demo" / "v1"
    first = cached.stat().st_ino
    assert load(world).info.version == "v1" and cached.stat().st_ino == first  # a clean copy is reused
    (cached / "planted.py").write_text("print('not in the manifest')")
    outside = world["tmp"] / "outside.safetensors"
    shutil.copy(checkpoint / "model.safetensors", outside)
    (cached / "model.safetensors").unlink()
    os.symlink(outside, cached / "model.safetensors")  # same bytes, but a link out of the cache
    assert load(world).info.version == "v1"
    assert not (cached / "planted.py").exists() and not (cached / "model.safetensors").is_symlink()
    assert (cached / "model.safetensors").read_bytes() == outside.read_bytes()
    assert cached.stat().st_ino != first  # downloaded again


def test_cache_directory_linked_out_of_the_root_is_refused(world: dict[str, Any]) -> None:
    outside = world["tmp"] / "elsewhere"
    outside.mkdir()
    world["cache"].mkdir(parents=True)
    os.symlink(outside, world["cache"] / "demo")
    before = snapshot(world["tmp"])
    with pytest.raises(ModelLoadError, match="would leave"):
        load(world)
    assert_outside_untouched(world, before)


@pytest.mark.parametrize(("argv", "message"), [
    (["promote", "../evil", "--version", "v1", "--env", "prod"], "invalid model name '../evil'"),
    (["promote", "demo", "--version", "../v1", "--env", "prod"], "invalid version '../v1'"),
    (["promote", "demo", "--version", "v1", "--env", "../prod"], "invalid environment '../prod'"),
    (["demote", "demo", "--env", "p/rod"], "invalid environment 'p/rod'"),
    (["metadata", "demo", "..", "--require-gpu"], "invalid version '..'"),
    (["list", ".."], "invalid model name '..'"),
    (["push", "/tmp", "--name", "a/b"], "invalid model name 'a/b'"),
])
def test_cli_refuses_bad_names_in_one_line(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                           argv: list[str], message: str) -> None:
    status, _, err = cli(capsys, *argv)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("name", "version"), [("../../escape", "v1"), ("demo", ".."), ("demo", "a/../../b")])
def test_backfill_refuses_a_checkpoint_named_outside_its_output(checkpoint: Path, tmp_path: Path,
                                                                registry_env: Settings,  # noqa: F811
                                                                name: str, version: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "name": name, "version": version}))
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "1", "title": "Higgs", "abstract": "LHC"}) + "\n")
    output = tmp_path / "out" / "deeper"
    with pytest.raises(RegistryError, match="invalid model"):
        Backfill(registry_env, model=str(model), input_path=str(records), output=str(output),
                 progress_bar=False).run()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out" / "predictions").exists()


def test_the_naming_rule() -> None:
    for good in ("demo", "corestream-bag", "a.b_c-1", "20260101T120000", "x" * 128):
        assert check_name(good) == good
    for bad in ("", ".", "..", "...", ".hidden", "a/b", "a\\b", "../x", "a b", "x" * 129, "é", "a\n", "-x", None):
        with pytest.raises(InvalidNameError):
            check_name(bad)
    assert check_version("v12") == "v12"
    for bad in ("v", "1", "v1.2", "v-1", "V1", "v1\n", "v١"):
        with pytest.raises(InvalidNameError):
            check_version(bad)


def test_path_under_stays_inside_its_root(tmp_path: Path) -> None:
    assert path_under(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    for parts in (("..",), ("a", "..", ".."), (".",), ("/etc",)):
        with pytest.raises(InvalidNameError, match="would leave"):
            path_under(tmp_path, *parts)
