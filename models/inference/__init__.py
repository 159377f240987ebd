"""Inference: the batch predictor, where a serving model comes from (a directory or the registry), the device."""
