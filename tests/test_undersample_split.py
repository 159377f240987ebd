"""Multi-label undersampling and deterministic splits, as functions and as commands."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from config.cli import build_parser, run_cli
from trainer.datasets.split import stratified_split, time_split
from trainer.datasets.undersample import category_counts, undersample

FREQUENT = {"hep-th": 400, "hep-ph": 300, "astro-ph.CO": 150}
RARE = {"nucl-ex": 7, "physics.acc-ph": 3, "math.QA": 1}


def dataset(seed: int = 1) -> list[dict]:
    """Records with one frequent primary category; some also carry a rare or a second frequent category."""
    rng = random.Random(seed)
    rows = []
    for category, count in FREQUENT.items():
        for _ in range(count):
            cats = [category] + ([rng.choice(list(FREQUENT))] if rng.random() < 0.3 else [])
            rows.append({"categories": list(dict.fromkeys(cats))})
    for category, count in RARE.items():
        for _ in range(count):
            rows.append({"categories": [rng.choice(list(FREQUENT)), category]})
    rng.shuffle(rows)
    for index, row in enumerate(rows):
        row.update(id=f"r{index:04d}", title=f"Paper {index}", abstract="Text.", coreness="core",
                   date=f"20{10 + index % 8}-{1 + index % 12:02d}-{1 + index % 28:02d}")
    return rows


def cli(argv: list[str]) -> int:
    return run_cli(build_parser("corestream-train", "test", ["trainer.datasets.cli"]), argv)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- undersample


def test_undersample_keeps_rare_and_caps_frequent() -> None:
    rows = dataset()
    threshold = 100
    kept = undersample(rows, threshold, seed=0)
    before, after = category_counts(rows), category_counts(kept)

    rare_rows = [row for row in rows if set(row["categories"]) & set(RARE)]
    assert all(row in kept for row in rare_rows)  # every record with a rare category
    assert {cat: after[cat] for cat in RARE} == RARE
    for category in FREQUENT:
        assert before[category] > threshold
        assert threshold <= after[category] < before[category]
    # Beyond the rare records, a record is only kept to fill a category still under the cap.
    assert len(kept) < len(rows) * 0.6
    assert [row["id"] for row in kept] == sorted(row["id"] for row in kept)  # input order kept


def test_undersample_is_seeded() -> None:
    rows = dataset()
    assert undersample(rows, 100, seed=3) == undersample(rows, 100, seed=3)
    assert undersample(rows, 100, seed=3) != undersample(rows, 100, seed=4)
    assert undersample(rows, 10_000) == rows  # nothing above the cap: everything kept
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        undersample(rows, 0)


def test_undersample_command_reports_distribution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = dataset()
    source = write(tmp_path / "in.jsonl", rows)
    assert cli(["undersample", str(source), str(tmp_path / "out.jsonl"), "--threshold", "100", "--seed", "5"]) == 0
    report = [line.split() for line in capsys.readouterr().out.splitlines()]
    kept = [row for row in rows if row["id"] in set(ids(tmp_path / "out.jsonl"))]
    after = category_counts(kept)
    assert ["category", "before", "after"] in report
    for category, count in category_counts(rows).items():
        assert [category, str(count), str(after[category])] in report
    assert ["kept", str(len(kept)), "of", str(len(rows)), "records"] == report[-1][:5]


# --------------------------------------------------------------------------- split


def test_stratified_split_is_deterministic_and_keeps_rare_classes_in_train() -> None:
    rows = dataset()
    for row in rows:  # make the rare categories primary for this test
        if set(row["categories"]) & set(RARE):
            row["categories"].reverse()
    parts = stratified_split(rows, valid=0.1, test=0.2, seed=7)
    assert parts == stratified_split(rows, valid=0.1, test=0.2, seed=7)
    assert parts != stratified_split(rows, valid=0.1, test=0.2, seed=8)
    assert sorted(r["id"] for part in parts.values() for r in part) == sorted(r["id"] for r in rows)  # a partition

    primary = {name: Counter(r["categories"][0] for r in part) for name, part in parts.items()}
    for category in FREQUENT:  # each frequent class split in the asked proportions (rounded half up)
        total = sum(1 for r in rows if r["categories"][0] == category)
        assert primary["test"][category] == int(total * 0.2 + 0.5)
        assert primary["valid"][category] == int(total * 0.1 + 0.5)
    assert primary["train"]["math.QA"] == 1 and primary["train"]["physics.acc-ph"] >= 2  # rare: mostly train
    for category in RARE:
        assert primary["train"][category] >= 1


def test_time_split_trains_on_older() -> None:
    rows = dataset()
    parts = time_split(rows, valid=0.1, test=0.1)
    tenth = int(len(rows) * 0.1 + 0.5)
    assert [len(parts[name]) for name in ("train", "valid", "test")] == [len(rows) - 2 * tenth, tenth, tenth]
    assert max(r["date"] for r in parts["train"]) <= min(r["date"] for r in parts["valid"])
    assert max(r["date"] for r in parts["valid"]) <= min(r["date"] for r in parts["test"])
    assert time_split(list(reversed(rows))) == parts  # order of the input does not matter


def test_split_command_same_seed_same_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = dataset()
    source = write(tmp_path / "in.jsonl", rows)
    for out in ("a", "b", "c"):
        seed = "1" if out != "c" else "2"
        assert cli(["split", str(source), "--out-dir", str(tmp_path / out), "--seed", seed]) == 0
    for name in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert ids(tmp_path / "a" / "test.jsonl") != ids(tmp_path / "c" / "test.jsonl")
    train = len(ids(tmp_path / "a" / "train.jsonl"))
    assert train > 0.75 * len(rows)
    assert any(line.split()[:2] == ["train", str(train)] for line in capsys.readouterr().out.splitlines())


def test_split_command_by_time_reports_undated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = dataset()
    rows[0]["date"] = None
    source = write(tmp_path / "in.jsonl", rows)
    assert cli(["split", str(source), "--out-dir", str(tmp_path / "t"), "--by-time"]) == 0
    assert f"left out 1 records without 'date' (e.g. id {rows[0]['id']})" in capsys.readouterr().out
    assert sum(len(ids(tmp_path / "t" / f"{name}.jsonl")) for name in ("train", "valid", "test")) == len(rows) - 1
    assert cli(["split", str(source), "--out-dir", str(tmp_path / "x"), "--valid", "0.6", "--test", "0.5"]) == 2
    assert "sum to less than 1" in capsys.readouterr().err
