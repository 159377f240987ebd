"""Datasets: build them (arXiv snapshot, INSPIRE), inspect, split and undersample them, and load them for training."""
