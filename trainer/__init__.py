"""Offline jobs: datasets, training, evaluation, the model registry and backfill."""
