"""The Elasticsearch dataset builder against noida-db's Elasticsearch API, seeded with INSPIRE-style records.

noida-db does not enforce authentication, so the credential tests go through :class:`AuthProxy`, a tiny
stdlib HTTP proxy that answers 401 with a ``security_exception`` body (what Elasticsearch security returns)
unless the request carries the right basic-auth header, and forwards the request to noida-db otherwise.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch, helpers

from config.cli import build_parser, run_cli
from config.settings import load_settings
from models.records.schema import parse_record
from tests.servers import free_port
from trainer.datasets.build import build_from_es, connect, month_range

INDEX = "records-hep-test"
N_RECORDS = 400
USER, PASSWORD, API_KEY = "elastic", "s3cret-pa55", "a2V5LWlkOmtleS1zZWNyZXQ="


def inspire_record(i: int) -> dict:
    """Record ``i``: created in 2014..2019; every 10th has no text, a few are rejected or deleted or unlabelled."""
    year, month, day = 2014 + i % 6, 1 + (i * 7) % 12, 1 + i % 28
    record: dict = {
        "control_number": 1000 + i,
        "_created": f"{year}-{month:02d}-{day:02d}T10:{i % 60:02d}:00.000000+00:00",
        "titles": [{"title": f"Paper {i}:  a study\nof   things", "source": "arXiv"}],
        "abstracts": [{"value": f"Abstract of paper {i}.", "source": "arXiv"}],
        "arxiv_eprints": [{"value": f"{year % 100:02d}{month:02d}.{i:05d}", "categories": categories(i)}],
        "acquisition_source": {"source": "arXiv", "method": "hepcrawl"},
        "core": i % 3 == 0,
        "_collections": ["Literature"],
    }
    if i % 10 == 0:  # no text at all
        record["titles"], record["abstracts"] = [], [{"value": "   "}]
    elif i % 10 == 3:  # title only: kept
        del record["abstracts"]
    elif i % 10 == 4:  # hidden from Literature: rejected
        record["_collections"] = ["HAL Hidden"]
    elif i % 10 == 6:  # deleted: rejected
        record["deleted"] = True
    elif i % 50 == 7:  # neither core flag nor rejected: no label
        del record["core"]
    return record


def categories(i: int) -> list[str]:
    return ["hep-th", "gr-qc"][: 1 + i % 2]


def expected_label(i: int) -> str | None:
    if i % 10 in (4, 6):
        return "rejected"
    if i % 50 == 7:
        return None
    return "core" if i % 3 == 0 else "non_core"


@pytest.fixture(scope="module")
def seeded_es(es_url: str) -> str:
    client = Elasticsearch(es_url)
    client.options(ignore_status=404).indices.delete(index=INDEX)
    client.indices.create(index=INDEX, mappings={"properties": {"_created": {"type": "date"}}})
    actions = ({"_index": INDEX, "_id": str(1000 + i), "_source": inspire_record(i)} for i in range(N_RECORDS))
    assert helpers.bulk(client, actions, refresh=True)[0] == N_RECORDS
    client.close()
    return es_url


def in_range(i: int, gte: str, lt: str) -> bool:
    return gte <= inspire_record(i)["_created"][:10] < lt


def expected_ids(gte: str, lt: str) -> list[str]:
    """Ids of the records created in [gte, lt) that have text and a label."""
    return [str(1000 + i) for i in range(N_RECORDS) if in_range(i, gte, lt) and i % 10 and expected_label(i)]


def cli(argv: list[str]) -> int:
    return run_cli(build_parser("corestream-train", "test", ["trainer.datasets.cli"]), argv)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(120)
def test_date_filter_paging_labels_and_skips(seeded_es: str, tmp_path: Path) -> None:
    gte, lt = month_range(2015, 2018, month_from=3, month_to=6)
    assert (gte, lt) == ("2015-03-01", "2018-07-01")
    selected = [i for i in range(N_RECORDS) if in_range(i, gte, lt)]
    with_text = [i for i in selected if i % 10 != 0]
    labelled = [i for i in with_text if expected_label(i) is not None]
    out = tmp_path / "es.jsonl"

    client = connect(load_settings(), seeded_es)
    report = build_from_es(client, INDEX, out, gte=gte, lt=lt, page_size=25, progress=False)

    rows = read_rows(out)
    assert len(selected) > 6 * 25  # many pages
    assert report.read == len(selected)
    no_label = len(with_text) - len(labelled)
    assert report.skipped == {"no_text": len(selected) - len(with_text), "no_coreness_label": no_label}
    assert report.written == len(rows) == len(labelled)
    by_id = {row["id"]: row for row in rows}
    assert sorted(by_id) == sorted(str(1000 + i) for i in labelled)  # each once: no page repeated or lost
    for i in labelled:
        row = by_id[str(1000 + i)]
        assert row["coreness"] == expected_label(i)
        assert row["categories"] == categories(i)
        assert row["source"] == "arXiv"
        assert row["title"] == f"Paper {i}: a study of things"
        assert row["abstract"] == ("" if i % 10 == 3 else f"Abstract of paper {i}.")
        assert gte <= row["date"] < lt
        assert parse_record(row).coreness == row["coreness"]  # what the trainer reads
    assert set(Counter(row["coreness"] for row in rows)) == {"core", "non_core", "rejected"}


@pytest.mark.timeout(60)
def test_cli_writes_gzip_dataset(seeded_es: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.jsonl.gz"
    argv = ["dataset", "--from-es", "--es-url", seeded_es, "--index", INDEX, "--year-from", "2019", "--year-to", "2019",
            "--page-size", "50", "--out", str(out), "--no-progress"]
    assert cli(argv) == 0
    expected = expected_ids("2019-01-01", "2020-01-01")
    assert f"wrote {len(expected)} of" in capsys.readouterr().out
    with gzip.open(out, "rt") as lines:
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(expected)


# --------------------------------------------------------------------------- credentials


class AuthProxy:
    """Forwards to Elasticsearch; answers 401 ``security_exception`` like Elasticsearch security unless the
    request has basic auth USER:PASSWORD or API_KEY; with ``refuse_pit``, answers 400 to point-in-time requests."""

    def __init__(self, upstream: str, refuse_pit: bool = False) -> None:
        accepted = {"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), f"ApiKey {API_KEY}"}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.paths.append(self.path)
                if self.headers.get("Authorization") not in accepted:
                    reason = f"unable to authenticate user [{USER}] for REST request [{self.path}]"
                    self._error(401, "security_exception", reason, {"WWW-Authenticate": 'Basic realm="security"'})
                elif refuse_pit and "_pit" in self.path:
                    self._error(400, "illegal_argument_exception", "point in time is not supported")
                else:
                    self._forward(body)

            def _forward(self, body: bytes) -> None:
                content_type = self.headers.get("Content-Type", "application/json")
                request = urllib.request.Request(upstream + self.path, data=body or None, method=self.command,
                                                 headers={"Content-Type": content_type})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        self._reply(response.status, response.read(), dict(response.headers))
                except urllib.error.HTTPError as exc:
                    self._reply(exc.code, exc.read(), dict(exc.headers))

            def _error(self, status: int, kind: str, reason: str, headers: dict[str, str] | None = None) -> None:
                error = {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}
                body = json.dumps({"error": error, "status": status}).encode()
                self._reply(status, body, {"Content-Type": "application/json", **(headers or {})})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AuthProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_proxy(seeded_es: str) -> Iterator[AuthProxy]:
    with AuthProxy(seeded_es) as proxy:
        yield proxy


def _es_argv(url: str, out: Path) -> list[str]:
    return ["dataset", "--from-es", "--es-url", url, "--index", INDEX, "--year-from", "2014", "--year-to", "2014",
            "--out", str(out), "--no-progress"]


@pytest.mark.timeout(60)
def test_bad_password_is_one_clear_line(auth_proxy: AuthProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_USERNAME", USER)
    monkeypatch.setenv("ES_PASSWORD", "wrong-password")
    assert cli(_es_argv(auth_proxy.url, tmp_path / "x.jsonl")) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "rejected the credentials (401 security_exception)" in captured.err
    assert "wrong-password" not in captured.err + captured.out
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.timeout(60)
def test_credentials_from_env_and_settings(auth_proxy: AuthProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_USERNAME", USER)
    monkeypatch.setenv("ES_PASSWORD", PASSWORD)
    assert cli(_es_argv(auth_proxy.url, tmp_path / "env.jsonl")) == 0
    assert PASSWORD not in capsys.readouterr().out
    expected = len(expected_ids("2014-01-01", "2015-01-01"))
    assert len(read_rows(tmp_path / "env.jsonl")) == expected

    # CORESTREAM_ELASTICSEARCH__* settings win over ES_USERNAME / ES_PASSWORD
    monkeypatch.setenv("ES_PASSWORD", "wrong-password")
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__USERNAME", USER)
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__PASSWORD", PASSWORD)
    assert cli(_es_argv(auth_proxy.url, tmp_path / "settings.jsonl")) == 0
    assert len(read_rows(tmp_path / "settings.jsonl")) == expected

    for name in ("ES_USERNAME", "CORESTREAM_ELASTICSEARCH__USERNAME", "CORESTREAM_ELASTICSEARCH__PASSWORD"):
        monkeypatch.delenv(name)
    assert cli(_es_argv(auth_proxy.url, tmp_path / "no-user.jsonl")) == 2
    assert "ES_PASSWORD is set but ES_USERNAME is not" in capsys.readouterr().err
    monkeypatch.setenv("ES_API_KEY", API_KEY)
    assert cli(_es_argv(auth_proxy.url, tmp_path / "api-key.jsonl")) == 0
    assert len(read_rows(tmp_path / "api-key.jsonl")) == expected


@pytest.mark.timeout(60)
def test_unreachable_server_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTREAM_ELASTICSEARCH__MAX_RETRIES", "0")
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    assert cli(_es_argv(url, tmp_path / "x.jsonl")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Elasticsearch at http://127.0.0.1" in err
    assert "Connection refused" in err and PASSWORD not in err


@pytest.mark.timeout(60)
def test_missing_index_and_bad_arguments(seeded_es: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _es_argv(seeded_es, tmp_path / "x.jsonl")
    argv[argv.index(INDEX)] = "no-such-index"
    assert cli(argv) == 2
    assert "not found (index_not_found_exception)" in capsys.readouterr().err
    assert cli(["dataset", "--from-es", "--es-url", seeded_es, "--year-from", "2015", "--out", "x.jsonl"]) == 2
    assert "--from-es needs --year-from and --year-to" in capsys.readouterr().err
    assert cli(_es_argv(seeded_es, tmp_path / "x.jsonl") + ["--month-to", "13"]) == 2
    assert "month must be between 1 and 12" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_scroll_where_point_in_time_is_unavailable(seeded_es: str, tmp_path: Path) -> None:
    settings = load_settings(elasticsearch={"username": USER, "password": PASSWORD})
    with AuthProxy(seeded_es, refuse_pit=True) as proxy:
        report = build_from_es(connect(settings, proxy.url), INDEX, tmp_path / "scroll.jsonl",
                               gte="2016-01-01", lt="2018-01-01", page_size=10, progress=False)
    assert any("/_pit" in path for path in proxy.paths) and any("scroll" in path for path in proxy.paths)
    rows = read_rows(tmp_path / "scroll.jsonl")
    assert report.written == len(rows) > 10
    assert sorted(row["id"] for row in rows) == sorted(expected_ids("2016-01-01", "2018-01-01"))
