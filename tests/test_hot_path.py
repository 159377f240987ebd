"""The processor's hot-path helpers: the garbage-collection policy, the result serialised once, metrics per batch,
the token estimate."""

from __future__ import annotations

import gc
import json

from prometheus_client import CollectorRegistry, Counter

from models.inference.predictor import Predictor
from models.records.schema import ClassificationResult, parse_record
from streaming.observability.metrics import count_by_label
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
