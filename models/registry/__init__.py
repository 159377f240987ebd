"""The S3 model registry: versions and aliases, the names it allows, S3 access, and a checkpoint's provenance."""
