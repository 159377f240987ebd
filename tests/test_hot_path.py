"""The processor's hot-path helpers: the garbage-collection policy, the result serialised once, metrics per batch,
the token estimate."""

from __future__ import annotations

import gc
import json

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from models.inference.predictor import Predictor
from models.records.schema import ClassificationResult, Record, parse_record
from streaming.observability.metrics import count_by_label, observe_many
from streaming.pipeline import heap
from tests.helpers_stream import tiny_model_dir


def test_heap_is_frozen_while_a_processor_holds_it_and_restored_by_the_last_release() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    heap.hold()
    heap.hold()  # a second processor in the same process
    try:
        assert gc.get_threshold() == heap.THRESHOLDS
        assert gc.get_freeze_count() > 0
        heap.refreeze()  # a model swap: collected and frozen again
        assert gc.get_freeze_count() > 0
        heap.release()
        assert gc.get_threshold() == heap.THRESHOLDS  # the other one still runs
    finally:
        heap.release()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def _result(record_id: str = "1801.00001") -> ClassificationResult:
    return ClassificationResult.model_validate({
        "id": record_id, "coreness": {"label": "core", "scores": {"core": 0.7, "non_core": 0.2, "rejected": 0.1}},
        "categories": [{"label": "hep-th", "score": 0.9}], "model": {"name": "m", "version": "1", "arch": "linear"}})


def test_result_json_is_serialised_once_and_anew_when_a_field_changes() -> None:
    result = _result()
    first = result.json_bytes
    assert first == result.model_dump_json().encode() and result.json_bytes is first
    assert result == ClassificationResult.model_validate_json(first)  # the cache is no field
    result.record_version = 7
    assert json.loads(result.json_bytes)["record_version"] == 7


def test_lone_surrogate_id_cannot_be_serialised() -> None:
    try:
        _result("bad\udfff").json_bytes  # noqa: B018 - the property raises
    except ValueError:
        return
    raise AssertionError("a lone surrogate was serialised")


def test_count_by_label_adds_a_batch_of_counts() -> None:
    registry = CollectorRegistry()
    counter = Counter("test_labels_total", "test", ["label"], registry=registry)
    count_by_label(counter, {"core": 3, "non_core": 1})
    count_by_label(counter, {"core": 2})
    assert registry.get_sample_value("test_labels_total", {"label": "core"}) == 5
    assert registry.get_sample_value("test_labels_total", {"label": "non_core"}) == 1


def test_token_estimate_counts_the_words_of_a_parsed_record() -> None:
    predictor = Predictor.from_checkpoint(tiny_model_dir(), device="cpu")
    record = parse_record({"id": "x", "title": "  A  title\n", "abstract": "An\tabstract  with\n\nseven words  here ."})
    assert predictor.count_tokens(record) == 2 * len(record.text.split()) - 1 == 17


def test_observe_many_gives_the_samples_of_one_observe_per_value() -> None:
    amounts = [0.0, 0.005, 0.0051, 0.3, 0.3, 1.0, 2.0, 299.0, 301.0, 1e9]
    registries = CollectorRegistry(), CollectorRegistry()
    one_by_one, at_once = (Histogram("test_seconds", "test", buckets=(0.005, 0.5, 1, 300), registry=registry)
                           for registry in registries)
    for amount in amounts:
        one_by_one.observe(amount)
    observe_many(at_once, amounts)
    observe_many(at_once, [])
    samples = [{(s.name, tuple(sorted(s.labels.items()))): s.value for metric in registry.collect()
                for s in metric.samples if not s.name.endswith("_created")} for registry in registries]
    assert samples[0] == samples[1]
    assert registries[1].get_sample_value("test_seconds_bucket", {"le": "0.005"}) == 2


def test_result_json_from_the_predictor_is_pydantics_json() -> None:
    """The predictor writes each result's JSON from the values it validates them from (orjson); it must be the
    bytes pydantic writes, and a field set later still serialises anew."""
    predictor = Predictor.from_checkpoint(tiny_model_dir(), device="cpu")
    records = [Record(id=f"r{i}", title=f"title {i} ü", abstract="an abstract " * i) for i in range(40)]
    results = predictor.predict_batch(records)
    odd_scores = np.resize(np.array([1e-7, 1.0, 0.5, 3.4e-5, 0.1, 1 / 3]), len(predictor.category_labels))
    results += [predictor.result("e\u00e9\"q", np.array([1.0, 0.0, 0.0]), odd_scores)]
    for result in results:
        assert "json_bytes" in result.__dict__  # written with the result
        assert result.json_bytes == result.model_dump_json().encode()
    results[0].record_version = 3
    assert json.loads(results[0].json_bytes)["record_version"] == 3


def test_text_already_single_spaced_is_kept_and_any_other_whitespace_normalised() -> None:
    """Title and abstract skip splitting when already normalised; every Unicode whitespace still normalises."""
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    texts = ["a b c", " a", "a ", "a  b", "é ü"] + [f"a{s}b" for s in spaces] + [f"a{s}" for s in spaces]
    for text in texts:
        record = parse_record({"id": "x", "title": text, "abstract": "a"})
        assert record.title == " ".join(text.split())
