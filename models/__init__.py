"""Model architectures, checkpoints, and the batch predictor."""
