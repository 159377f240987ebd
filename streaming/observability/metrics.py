"""Prometheus metrics of the stream processor (one registry, shared by every component).

Names are the contract with the Grafana dashboard in ``config/grafana``; change both together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072)

RECORDS_CONSUMED = Counter(
    "corestream_records_consumed_total", "Messages read from the input topics", ["topic"], registry=REGISTRY
)
RECORDS_CLASSIFIED = Counter(
    "corestream_records_classified_total", "Records classified and durably written", registry=REGISTRY
)
RECORDS_SKIPPED = Counter(
    "corestream_records_skipped_total",
    "Records passed through without this model (skip_sources or the model's dont_run_on list)",
    ["source"],
    registry=REGISTRY,
)
RECORDS_DEAD_LETTERED = Counter(
    "corestream_records_dead_lettered_total", "Messages sent to the dead-letter topic", ["reason"], registry=REGISTRY
)
PREDICTIONS_CORENESS = Counter(
    "corestream_predictions_coreness_total", "Predicted coreness labels", ["label"], registry=REGISTRY
)
PREDICTIONS_CATEGORY = Counter(
    "corestream_predictions_category_total", "Predicted arXiv categories (above threshold)", ["category"],
    registry=REGISTRY,
)
BATCH_RECORDS = Histogram(
    "corestream_batch_records", "Records per micro-batch", buckets=_SIZE_BUCKETS, registry=REGISTRY
)
BATCH_TOKENS = Histogram(
    "corestream_batch_tokens", "Tokens per micro-batch", buckets=_TOKEN_BUCKETS, registry=REGISTRY
)
INFERENCE_SECONDS = Histogram(
    "corestream_inference_seconds", "Model time per micro-batch", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
ES_BULK_SECONDS = Histogram(
    "corestream_es_bulk_seconds", "Elasticsearch bulk request time", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
SINK_ERRORS = Counter(
    "corestream_sink_errors_total", "Sink write errors (retried or not)", ["sink", "kind"], registry=REGISTRY
)
END_TO_END_SECONDS = Histogram(
    "corestream_end_to_end_seconds",
    "Message timestamp to sinks acknowledged",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "corestream_consumer_lag", "High watermark minus committed offset", ["topic", "partition"], registry=REGISTRY
)
IN_FLIGHT_BATCHES = Gauge(
    "corestream_in_flight_batches", "Micro-batches between consume and commit", registry=REGISTRY
)
PAUSED = Gauge("corestream_paused", "1 while consumption is paused for backpressure or a sink outage",
               registry=REGISTRY)
COMMITS = Counter("corestream_commits_total", "Offset commits", registry=REGISTRY)
COMMIT_FAILURES = Counter("corestream_commit_failures_total", "Offset commits that failed (retried)",
                          registry=REGISTRY)
STALLED_SINCE = Gauge(
    "corestream_stalled_since_seconds",
    "Unix time since which consumed work has waited with no offset commit (0: nothing waits)",
    registry=REGISTRY,
)
MODEL_INFO = Info("corestream_model", "The model in service", registry=REGISTRY)
MODEL_RELOADS = Counter(
    "corestream_model_reloads_total", "Hot-reload attempts by outcome", ["outcome"], registry=REGISTRY
)
MODEL_RELOAD_FAILED = Gauge(
    "corestream_model_reload_failed", "1 if the last hot-reload attempt failed", registry=REGISTRY
)


class ModelMetrics:
    """A model source's reports (``models.inference.source.ModelSourceHooks``) as metrics: model info, reloads."""

    def in_service(self, name: str, version: str, arch: str, device: str) -> None:
        MODEL_INFO.info({"name": name, "version": version, "arch": arch, "device": device})

    def reloaded(self, ok: bool) -> None:
        MODEL_RELOADS.labels(outcome="success" if ok else "failure").inc()
        MODEL_RELOAD_FAILED.set(0 if ok else 1)


MODEL_METRICS = ModelMetrics()


_children: dict[tuple[int, str], Counter] = {}


def count_by_label(metric: Counter, counts: Mapping[str, int]) -> None:
    """Add ``counts`` ({label value: n}) to a counter with one label, e.g. once per batch; the children are kept
    (``labels()`` takes a lock and builds a key: ~4 us per call, per category and batch)."""
    for value, count in counts.items():
        child = _children.get((id(metric), value))
        if child is None:
            child = _children[(id(metric), value)] = metric.labels(value)
        child.inc(count)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe`` for each of ``amounts`` (e.g. a sink write's end-to-end latencies): the same buckets and
    sum, with one increment per bucket used instead of a Python-level ``observe`` per value (~2 us each). A
    histogram without the client's usual fields (another client version) is observed value by value."""
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    if amounts:
        total.inc(sum(amounts))
        for index, count in Tally(bisect_left(bounds, amount) for amount in amounts).items():
            buckets[index].inc(count)  # the first bucket whose bound is >= amount, as observe() picks it
