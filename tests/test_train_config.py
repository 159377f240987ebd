"""TrainConfig: the one list of training options, and the `corestream-train train` flags built from it."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from trainer.training.config import TrainConfig, TrainingError


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(argv))


def test_no_flags_give_the_defaults() -> None:
    assert parse() == TrainConfig()


def test_flags_set_their_fields() -> None:
    config = parse("--arch", "bag", "--epochs", "3", "--learning-rate", "0.5", "--extra-train", "a.jsonl",
                   "--extra-train", "b.jsonl", "--allow-no-category", "--no-progress", "--from-scratch",
                   "--split", "random", "--output-dir", "out", "--seed", "7", "--no-refit",
                   "--recency-half-life", "2.5")
    assert config == TrainConfig(arch="bag", epochs=3, learning_rate=0.5, extra_train=("a.jsonl", "b.jsonl"),
                                 at_least_one_category=False, progress=False, from_scratch=True, split="random",
                                 output_dir="out", seed=7, refit=False, recency_half_life=2.5)


def test_every_field_but_the_test_only_one_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    dests = {action.dest for action in parser._actions} - {"help"}
    assert dests == {f.name for f in fields(TrainConfig)} - {"max_steps"}


def test_split_options_separates_architecture_parameters() -> None:
    config, rest = TrainConfig.split_options({"arch": "bag", "epochs": 1, "embed_dim": 32})
    assert config == TrainConfig(arch="bag", epochs=1) and rest == {"embed_dim": 32}


def test_resolved_fills_the_architecture_defaults_and_checks() -> None:
    config = TrainConfig(arch="bag", device="cpu").resolved()
    assert (config.epochs, config.batch_size, config.learning_rate) == (5, 64, 5e-2)
    assert config.output_dir == Path("artifacts/model")
    assert TrainConfig(arch="linear", epochs=0, device="cpu").resolved().epochs == 0
    assert TrainConfig(arch="linear", device="cpu").resolved().recency_half_life == 4.0
    assert TrainConfig(arch="bag", device="cpu").resolved().recency_half_life == 0.0
    with pytest.raises(TrainingError, match="recency half-life >= 0"):
        TrainConfig(recency_half_life=-1, device="cpu").resolved()
    with pytest.raises(TrainingError, match="unknown arch"):
        TrainConfig(arch="nope").resolved()
    with pytest.raises(TrainingError, match="batch size >= 1"):
        TrainConfig(batch_size=-1, device="cpu").resolved()
    with pytest.raises(TrainingError, match="split must be"):
        TrainConfig(split="sideways", device="cpu").resolved()
