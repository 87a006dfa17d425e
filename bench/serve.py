"""Serving latency: `iisan serve` under closed-loop load, and in-process recommend at 1M items.

1. A synthetic 100,000-item catalogue (every item in some user's history; random
   sequences, since only the query path matters here), an ID-SASRec run trained for one
   epoch on it (the query path, user encoder then index search, is the same for every
   method), its exact index built by the first load.
2. `iisan serve` in a subprocess on 127.0.0.1; 16 concurrent clients (asyncio + httpx, one
   process) post `/recommend` (k = 10, test users' histories) back to back for 30 s.
   Reports throughput, p50 / p99 latency seen by the clients, and errors.
3. In-process `Recommender.recommend` with the catalogue grown to 1,000,000 items by
   appending random embeddings of the trained rows' scale (so no 1M-item training is
   needed): flat and HNSW indexes, median and p99 per query, HNSW recall@10 vs exact.

    python bench/serve.py [--work bench/out/serve] [--clients 16] [--seconds 30] [--big-items 1000000]

Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_catalogue(folder: Path, items: int, seed: int = 0) -> None:
    """items.tsv / users.tsv: three shuffled passes over the catalogue cut into 13-item users."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = np.char.add("p", np.arange(items).astype(str))
    (folder / "items.tsv").write_text("".join(f"{k}\tSynthetic product {k}\n" for k in keys))
    stream = np.concatenate([rng.permutation(items) for _ in range(3)])
    users = stream[: len(stream) // 13 * 13].reshape(-1, 13)
    (folder / "users.tsv").write_text("".join(f"u{u}\t{' '.join(keys[row])}\n" for u, row in enumerate(users)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def load(url: str, histories: list[list[str]], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            i = n
            while time.perf_counter() < deadline:
                body = {"history": histories[i % len(histories)], "k": 10}
                start = time.perf_counter()
                try:
                    response = await http.post("/recommend", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok
                i += clients

    start = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - start
    ms = [1000 * x for x in latencies]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(ms), "errors": errors,
            "throughput_rps": round(len(ms) / elapsed, 1), "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2)}


def serve_under_load(run: Path, histories: list[list[str]], clients: int, seconds: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "iisan", "serve", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"iisan serve exited: {server.stderr.read().decode()}")
            time.sleep(0.2)
        asyncio.run(load(url, histories[:200], clients, 2))  # warm-up
        return asyncio.run(load(url, histories, clients, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)


def in_process_big(run: Path, histories: list[list[str]], big_items: int, queries: int) -> list[dict]:
    import torch

    from iisan.index import HnswSettings, ItemIndex
    from iisan.recommend import Recommender

    torch.set_num_threads(1)  # one query at a time, as one server worker handles it
    rec = Recommender.load(run)
    trained = rec._embeddings
    rng = np.random.default_rng(1)
    extra = (rng.standard_normal((big_items - rec.num_items, trained.shape[1])) * trained[1:].std(0)
             + trained[1:].mean(0)).astype(np.float32)
    # Grow the catalogue the way add_items does, without running an item tower 900k times.
    rec._embeddings = np.concatenate([trained, extra])
    rec.embeddings = torch.from_numpy(rec._embeddings)
    rec.keys += [f"x{i}" for i in range(len(extra))]
    rec.titles += [None] * len(extra)
    results = []
    exact_top: list[set[str]] = []
    for kind in ("flat", "hnsw"):
        start = time.perf_counter()
        rec.index = ItemIndex(rec._embeddings, kind, HnswSettings(m=32, ef_construction=100, ef_search=128))
        build = time.perf_counter() - start
        for history in histories[:20]:
            rec.recommend(history, k=10)  # warm-up
        times, tops = [], []
        for history in histories[:queries]:
            start = time.perf_counter()
            answer = rec.recommend(history, k=10)
            times.append(1000 * (time.perf_counter() - start))
            tops.append({key for key, _ in answer})
        row = {"index": kind, "items": rec.num_items, "build_s": round(build, 1), "queries": len(times),
               "median_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3)}
        if kind == "flat":
            exact_top = tops
        else:
            row["recall@10_vs_flat"] = round(np.mean([len(a & b) / 10 for a, b in zip(tops, exact_top)]), 4)
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/serve"))
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--big-items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    from iisan.config import PrepareConfig, TrainConfig
    from iisan.data import prepare
    from iisan.data.dataset import PreparedDataset
    from iisan.train.loop import train

    source, dataset, run = args.work / "src", args.work / "catalogue", args.work / "run"
    if not (run / "model.safetensors").is_file():
        write_catalogue(source, args.items)
        prepare(source, dataset, PrepareConfig(format="iisan-tsv"))
        train(dataset, run, TrainConfig(method="id", epochs=1, batch_size=256, eval_batch_size=256), force=True)
    keys = ["", *PreparedDataset.load(dataset).items["key"].to_list()]

    from iisan.data.split import split_sequences

    flat, offsets = PreparedDataset.load(dataset).sequence_arrays()
    inputs = split_sequences(flat, offsets, 10, len(keys) - 1).test.inputs
    histories = [[keys[i] for i in row if i] for row in inputs[np.random.default_rng(0).permutation(len(inputs))]]

    report = {"catalogue_items": len(keys) - 1,
              "http": serve_under_load(run, histories, args.clients, args.seconds)}
    print(json.dumps(report, indent=2), flush=True)
    report["in_process"] = in_process_big(run, histories, args.big_items, args.queries)
    print(json.dumps(report["in_process"], indent=2))
    (args.work / "serve.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
