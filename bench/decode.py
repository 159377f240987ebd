"""Decode benchmark (a script, not a test): the processor's per-message work before inference.

Times :func:`streaming.pipeline.envelope.decode` (parse the JSON, validate and normalise the record, skip rule, token
estimate) and :class:`streaming.pipeline.batcher.MicroBatcher` over real message values, as the consumer loop runs
them, and optionally profiles it (``--profile``: the top functions by own time).

    python bench/decode.py --data ../shared/data/arxiv-valid-2018.jsonl.gz
    python bench/decode.py --data ../shared/data/arxiv-valid-2018.jsonl.gz --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import load_settings  # noqa: E402
from models.inference.source import ModelSource  # noqa: E402
from models.records.files import numbered_lines  # noqa: E402
from streaming.pipeline.batcher import MicroBatcher  # noqa: E402
from streaming.pipeline.envelope import Envelope, decode  # noqa: E402


def message_values(data: str | None, count: int) -> list[bytes]:
    """Kafka message values as the producer writes them: one JSON record each."""
    if data is None:
        from trainer.datasets.sample import generate_sample

        return [json.dumps(r).encode() for r in generate_sample(count, seed=1)]
    values = []
    for _, line in numbered_lines(data):
        values.append(line.rstrip(b"\n"))  # type: ignore[union-attr]  # unbounded lines are bytes
        if len(values) == count:
            break
    return values


def run(values: list[bytes], settings, source: ModelSource, skip: frozenset[str]) -> int:
    """The consumer loop's per-message work; returns the number of batches closed."""
    batcher: MicroBatcher[Envelope] = MicroBatcher(settings.batch.max_batch_records, settings.batch.max_batch_tokens,
                                                   settings.batch.max_wait_ms)
    batches = 0
    for offset, value in enumerate(values):
        env = Envelope(topic="t", partition=0, offset=offset, epoch=1, key=None, value=value, timestamp_s=None)
        decode(env, settings.records, skip, source)
        if batcher.add(env, env.tokens):
            batches += 1
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts/demo-model", help="checkpoint (trained if it is the demo's)")
    parser.add_argument("--data", help="JSONL records (.gz ok; default: generated sample records)")
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures, last")
    args = parser.parse_args()
    if args.model == "artifacts/demo-model":
        from streaming.apps.demo import ensure_model

        ensure_model(Path(args.model), False, None, 1500)
    settings = load_settings(model={"model": args.model, "reload_interval_s": 0, "device": "cpu"})
    source = ModelSource(settings)
    source.load()
    values = message_values(args.data, args.records)
    skip = frozenset(settings.skip_sources)
    run(values[:100], settings, source, skip)  # warm-up
    best = best_cpu = 0.0
    for _ in range(args.repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        run(values, settings, source, skip)
        best = max(best, len(values) / (time.perf_counter() - started))
        best_cpu = max(best_cpu, len(values) / (time.thread_time() - started_cpu))
    mean_bytes = sum(map(len, values)) / len(values)
    print(f"decode + batch: {best:8.0f} messages/s wall, {best_cpu:8.0f} per CPU second (best of {args.repeats}; "
          f"{len(values)} messages, mean {mean_bytes:.0f} bytes; {args.data or 'generated sample'})")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, values, settings, source, skip)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
    if args.json:
        print(json.dumps({"decode_rps": round(best), "decode_rps_cpu": round(best_cpu), "messages": len(values),
                          "mean_bytes": round(mean_bytes)}))


if __name__ == "__main__":
    main()
