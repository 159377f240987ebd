"""The arXiv metadata snapshot reader, and ``dataset --from-arxiv-snapshot`` / ``stats`` on small files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from config.cli import build_parser, run_cli
from models.records.schema import parse_record
from trainer.datasets.build import SkipCounter, clean_text, read_snapshot, snapshot_date

# The public snapshot's shape (https://www.kaggle.com/datasets/Cornell-University/arxiv): categories a string.
SNAPSHOT = [
    {"id": "0704.0001", "title": "Calculation of prompt diphoton production\n  cross sections at Tevatron",
     "abstract": "  A fully differential calculation in perturbative QCD \\\\ is presented.\n  Second line.\n",
     "categories": "hep-ph", "versions": [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"},
                                          {"version": "v2", "created": "Tue, 24 Jul 2007 20:10:27 GMT"}],
     "update_date": "2008-11-13", "authors": "C. Bal\\'azs, E. L. Berger"},
    {"id": "0704.0002", "title": "Sparsity-certifying Graph Decompositions", "abstract": "We describe a new algorithm.",
     "categories": "math.CO cs.CG", "versions": [{"version": "v1", "created": "Sat, 31 Mar 2007 02:26:18 GMT"}],
     "update_date": "2008-12-13"},
    {"id": "solv-int/9901001", "title": "Old integrable systems", "abstract": "Solitons.",
     "categories": "solv-int chao-dyn", "versions": [{"version": "v1", "created": "Fri, 1 Jan 1999 10:00:00 GMT"}],
     "update_date": "2009-01-01"},
    {"id": "1501.00003", "title": "Dark matter halos", "abstract": "Simulations of halos.",
     "categories": "astro-ph.GA", "versions": [], "update_date": "2015-01-05"},
    {"id": "1501.00004", "title": "", "abstract": "  ", "categories": "hep-th",
     "versions": [{"version": "v1", "created": "Mon, 5 Jan 2015 10:00:00 GMT"}]},
    {"id": "1501.00005", "title": "A gravity paper", "abstract": "Black holes.", "categories": "gr-qc hep-th",
     "versions": [{"version": "v1", "created": "Tue, 6 Jan 2015 10:00:00 GMT"}], "update_date": "2015-01-07"},
]
# The shared-data shape: categories a list, a date and a primary category.
SHARED = {"id": "hep-th/9310158", "title": "The Yangian symmetry of the Hubbard Model", "abstract": "We discovered.",
          "categories": ["cond-mat", "hep-th"], "date": "1993-10-23", "primary_category": "hep-th"}


def write_snapshot(path: Path, extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(entry) for entry in SNAPSHOT] + [json.dumps(SHARED), *extra_lines]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    return path


def cli(argv: list[str]) -> int:
    return run_cli(build_parser("corestream-train", "test", ["trainer.datasets.cli"]), argv)


def test_clean_text() -> None:
    assert clean_text("  a\\\\b \n\n c\t d  ") == "a b c d"
    assert clean_text("$x \\in y$") == "$x \\in y$"  # single backslashes (LaTeX commands) stay


def test_snapshot_date() -> None:
    assert snapshot_date(SNAPSHOT[0]) == "2007-04-02"  # first version, not the update date
    assert snapshot_date(SNAPSHOT[3]) == "2015-01-05"  # no versions: update_date
    assert snapshot_date(SHARED) == "1993-10-23"
    assert snapshot_date({"versions": [{"created": "not a date"}]}) is None


def test_reader_cleans_labels_and_counts_skips(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "snap.jsonl.gz", ["{not json", json.dumps(["an", "array"])])
    skipped = SkipCounter()
    rows = {row["id"]: row for row in read_snapshot(path, skipped)}

    assert skipped == {"no_text": 1, "invalid_json": 1, "invalid_record": 1}
    assert sorted(rows) == sorted(["0704.0001", "0704.0002", "solv-int/9901001", "1501.00003", "1501.00005",
                                   "hep-th/9310158"])
    first = rows["0704.0001"]
    assert first["title"] == "Calculation of prompt diphoton production cross sections at Tevatron"
    assert first["abstract"] == "A fully differential calculation in perturbative QCD is presented. Second line."
    assert (first["categories"], first["coreness"], first["date"], first["source"]) == (
        ["hep-ph"], "core", "2007-04-02", "arXiv")
    assert rows["0704.0002"]["coreness"] == "rejected"  # maths/cs only
    assert rows["solv-int/9901001"]["categories"] == ["nlin.SI", "nlin.CD"]  # old names renamed
    assert rows["solv-int/9901001"]["coreness"] == "non_core"
    assert rows["1501.00003"]["coreness"] == "non_core"
    assert rows["hep-th/9310158"]["categories"] == ["hep-th", "cond-mat"]  # primary category first
    assert rows["hep-th/9310158"]["coreness"] == "core"
    for row in rows.values():
        assert parse_record(row).model_dump() == {k: row[k] for k in parse_record(row).model_dump()}


def test_cli_filters_by_date_and_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = write_snapshot(tmp_path / "snap.jsonl")
    out = tmp_path / "out.jsonl"
    argv = ["dataset", "--from-arxiv-snapshot", str(snapshot), "--out", str(out), "--no-progress",
            "--date-from", "2007-04", "--date-to", "2015", "--categories", "hep-,gr-qc"]
    assert cli(argv) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["0704.0001", "1501.00005"]
    report = capsys.readouterr().out
    assert "wrote 2 of 7 records" in report and "no_text: 1" in report
    assert "filtered out categories: 1, date: 3" in report  # astro-ph.GA; 2007-03-31, 1999 and 1993


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["dataset", "--from-arxiv-snapshot", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"input file not found: {tmp_path / 'nope.jsonl'}")
    assert cli(["dataset", "--from-arxiv-snapshot", str(tmp_path), "--out", "o", "--date-from", "2020-13"]) == 2
    assert "not a date: '2020-13'" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"id": "1", "title": "t"}\n' * 50)[:-20])  # cut short
    out = tmp_path / "out.jsonl"
    assert cli(["dataset", "--from-arxiv-snapshot", str(corrupt), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read {corrupt}" in err
    assert not out.exists() and not list(tmp_path.glob(".tmp.*"))  # no half-written dataset left behind

    snapshot = write_snapshot(tmp_path / "snap.jsonl")
    (tmp_path / "a-file").write_text("")
    assert cli(["undersample", str(snapshot), str(tmp_path / "a-file" / "out.jsonl")]) == 2
    assert "a-file" in capsys.readouterr().err


def test_stats_tables_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    rows = [
        {"id": "1", "title": "Same  Title!", "abstract": "a" * 10, "categories": ["hep-th"], "coreness": "core"},
        {"id": "1", "title": "same title", "abstract": "b" * 30, "categories": ["hep-th", "gr-qc"], "coreness": "core"},
        {"id": "2", "title": "Other", "abstract": "c" * 95, "categories": ["math.CO"], "coreness": "rejected"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    assert cli(["stats", str(data), "--out-dir", str(tmp_path / "stats")]) == 0
    report = capsys.readouterr().out
    assert "skipped 1 invalid lines" in report
    stats = json.loads((tmp_path / "stats" / "data.stats.json").read_text())
    assert stats == {
        "records": 3,
        "categories": {"hep-th": 2, "gr-qc": 1, "math.CO": 1},
        "coreness": {"core": 2, "rejected": 1},
        "text_length_chars": {"min": 21, "median": 40, "p95": 94, "max": 100},  # 11+10, 10+30, 5+95
        "duplicate_ids": 1,
        "duplicate_titles": 1,
    }
    assert (tmp_path / "stats" / "data.stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table_rows = [line.split() for line in report.splitlines()]
    assert ["non_core", "0", "0.0"] in table_rows and ["rejected", "1", "33.3"] in table_rows
    assert ["duplicate", "ids", "1"] in table_rows and ["hep-th", "2", "66.7"] in table_rows


@pytest.mark.timeout(120)
def test_real_arxiv_data(shared_data: Path | None, tmp_path: Path) -> None:
    """On the shared arXiv data (when present): every line reads, all labels and the 2018 dates come out."""
    if shared_data is None:
        pytest.skip("no ../shared/data (the reader is covered by the tests above)")
    skipped = SkipCounter()
    path = shared_data / "arxiv-valid-2018.jsonl.gz"
    rows = list(read_snapshot(path, skipped, date_from="2018-01-01"))
    with gzip.open(path, "rb") as lines:  # the file's own count: the shared data can be cleaned or grow
        assert not skipped and len(rows) == sum(1 for line in lines if line.strip())
    assert {row["coreness"] for row in rows} == {"core", "non_core", "rejected"}
    assert all(row["date"].startswith("2018") for row in rows)
