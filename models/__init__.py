"""Models by concern: records (schema, intake), archs (architectures, checkpoints), registry (S3), inference."""
