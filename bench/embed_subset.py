"""Fill the hybrid's embedding cache with a nested subset of a training file, in the order of
``bench/accuracy.py --sizes`` (papers by crc32 of their id), a slice at a time, so that whatever is embedded when
it is stopped is the first N papers of that order: ``bench/accuracy.py --data FILE --cached-only`` then trains on
exactly that subset (the embedding stage alone sorts by length, so an interrupted run keeps the shortest texts).

    nice -n 19 python bench/embed_subset.py ../shared/data/arxiv-train-large.jsonl.gz \
        --first ../shared/data/inspire-coreness.jsonl.gz

Prints papers embedded, CPU seconds and papers per CPU-second after each slice (one torch thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.archs.hybrid import DEFAULT_MAX_SEQ_LENGTH, FrozenEncoder  # noqa: E402
from models.records.files import open_text  # noqa: E402
from models.records.schema import RecordError  # noqa: E402
from trainer.datasets.training_data import parse_training_line  # noqa: E402
from trainer.training.hybrid import base_encoder, cached_embeddings, default_base_model  # noqa: E402


def texts_of(path: Path, by_crc: bool) -> list[str]:
    """Record texts of ``path`` (unusable lines left out), ordered by crc32 of the id when ``by_crc``."""
    rows = []
    with open_text(path) as lines:
        for line in lines:
            if not line.strip():
                continue
            data = json.loads(line)
            try:
                rows.append((zlib.crc32(str(data.get("id")).encode()) if by_crc else 0,
                             parse_training_line(data).text))
            except RecordError:
                continue
    if by_crc:
        rows.sort(key=lambda row: row[0])
    return [text for _, text in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--first", type=Path, action="append", default=[], help="files embedded whole first")
    parser.add_argument("--limit", type=int, help="stop after this many papers of DATA")
    parser.add_argument("--slice", type=int, default=1024)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = FrozenEncoder(*base_encoder(default_base_model()), DEFAULT_MAX_SEQ_LENGTH).to(args.device)
    started = time.process_time()
    done = 0
    for path in args.first:
        texts = texts_of(path, by_crc=False)
        _, counts = cached_embeddings(encoder, texts, device=args.device)
        print(f"{path.name}: {len(texts)} texts, {counts['misses']} embedded", flush=True)
    texts = texts_of(args.data, by_crc=True)[:args.limit]
    for start in range(0, len(texts), args.slice):
        _, counts = cached_embeddings(encoder, texts[start:start + args.slice], device=args.device)
        done += counts["misses"]
        cpu = time.process_time() - started
        print(f"{time.strftime('%H:%M:%S')} first {start + args.slice} papers cached; embedded {done} in this run, "
              f"{cpu:.0f} CPU-s (all files), {done / max(cpu, 1e-9):.1f} papers/CPU-s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
