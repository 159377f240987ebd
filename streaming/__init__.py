"""The stream processor: Kafka source -> decode/validate -> micro-batches -> classify -> sinks -> commit."""
