"""HTTP predict API under load: records/s and request latency p50/p99 at several client concurrencies.

Starts ``corestream serve`` on a loopback port with a small bag model (trained here on the generated sample
unless --model is given) and sends one-record ``POST /api/v1/predict`` requests from N concurrent clients,
then batches of 32 records. The micro-batcher coalesces concurrent requests, so records/s grows with N.

    python bench/api_throughput.py [--model DIR] [--requests 400] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, wait_for_http  # noqa: E402
from trainer.datasets.sample import generate_sample  # noqa: E402


async def load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float]]:
    """Send every body with ``concurrency`` clients; return the wall time and each request's latency."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(url, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a bag model trained on the sample)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-wait-ms", type=int, default=5, help="api.max_wait_ms of the server (its default: 5)")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from trainer.training.train import train_model

        model = str(train_model(None, arch="bag", output_dir=Path(tempfile.mkdtemp()) / "model", sample_count=2000,
                                epochs=2, progress=False, device="cpu"))
    port = free_port()
    env = {**os.environ, "CORESTREAM_MODEL__DEVICE": "cpu", "CORESTREAM_MODEL__RELOAD_INTERVAL_S": "0",
           "CORESTREAM_API__MAX_WAIT_MS": str(args.max_wait_ms), "CORESTREAM_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "streaming.cli", "serve", "--model", model, "--host",
                               "127.0.0.1", "--port", str(port)], env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/api/v1/health", timeout=120)
        records = [{"id": str(i), "title": r["title"], "abstract": r["abstract"]}
                   for i, r in enumerate(generate_sample(args.requests, seed=3))]
        print(f"model {model}, {os.cpu_count()} CPUs, api.max_wait_ms={args.max_wait_ms}")
        print(f"{'request':>10} {'clients':>7} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for size in (1, 32):
            bodies = [{"records": records[i:i + size]} for i in range(0, len(records), size)]
            for concurrency in args.concurrency:
                asyncio.run(load(base + "/api/v1/predict", bodies[:10], concurrency))  # warm-up
                wall, latencies = asyncio.run(load(base + "/api/v1/predict", bodies, concurrency))
                q = statistics.quantiles(latencies, n=100)
                print(f"{size:>7} rec {concurrency:>7} {len(records) / wall:>10.0f} {q[49] * 1000:>8.1f} "
                      f"{q[98] * 1000:>8.1f}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
