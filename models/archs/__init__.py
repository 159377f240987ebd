"""Model architectures behind one interface (``base``), their parts (features, losses, calibration) and checkpoints."""
