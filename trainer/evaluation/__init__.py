"""Evaluation: metrics, thresholds, calibration, the model card, and ``corestream-train evaluate``."""
